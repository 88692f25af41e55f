"""A FHIR Bulk Data Access (v2) export client: kick-off, poll, download, delete.

The flow, and what this client does at each step:

1. **Kick-off**: ``GET [base]/Group/[id]/$export`` (or ``Patient/$export``, or ``$export``) with
   ``_type`` = the types the criteria read (:data:`EXPORT_TYPES`), ``Accept:
   application/fhir+json`` and ``Prefer: respond-async`` (never ``handling=lenient``: a server that
   cannot honour ``_type`` must refuse, not export everything and let us believe the list was
   honoured). The answer is 202 with ``Content-Location``, the status URL. 4xx/5xx: the
   OperationOutcome's diagnostics go into the error.
2. **Poll** the status URL: 202 means running (``X-Progress`` goes to the progress bar); the next
   poll waits ``Retry-After`` (seconds or an HTTP date), else a growing delay, always between
   :data:`POLL_FLOOR_S` and :data:`POLL_CAP_S`. 429 waits likewise. 200 carries the completion
   manifest (``transactionTime``, ``request``, ``requiresAccessToken``, ``output``, ``error``).
   A 5xx whose OperationOutcome says ``transient`` is retried; any other error ends the export.
3. **Download** every ``output`` and ``error`` file, streamed to disk in chunks (never whole in
   memory), to ``<Type>.<nnn>.ndjson`` (error files: ``OperationOutcome.error.<nnn>.ndjson``) in
   the download folder, with the manifest beside them (``manifest.json``, which the NDJSON reader
   reads). After each file the state file records its size and SHA-256, so an interrupted run
   resumes without downloading it again (:mod:`fhir_trial.population.bulk.state`).
4. **Delete** the job (``DELETE`` the status URL) once every file is on disk.

**Where the token goes.** The bearer token is sent to the FHIR server's own origin (scheme, host,
port) and to hosts the user allowlists (``token_hosts``; CLI ``--token-host``), nowhere else. The
status URL and the files are fetched with it when they are on such a host; a file on another host
is fetched without a token when the manifest says ``requiresAccessToken: false`` (pre-signed cloud
storage URLs), and refused with a message naming the host when the manifest says the token is
required (the user decides, with ``--token-host``, whether that host may see it). Redirects to
another host drop the Authorization header (``requests`` does).

Files gone from the server (404/410 on a download or on the status URL) raise
:class:`ExportExpiredError`: the export has to be started again. ``KeyboardInterrupt`` is not
caught here: the state saved after every step is what ``--resume`` continues from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests

from fhir_trial.config import Settings
from fhir_trial.errors import (
    AuthenticationError,
    ConfigurationError,
    InputError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.fhir_http import first_diagnostics, origin_of, parse_retry_after
from fhir_trial.http_watchdog import CutOff, guard_session, within
from fhir_trial.population.bulk.auth import StaticToken, TokenProvider
from fhir_trial.population.bulk.state import DoneFile, ExportState
from fhir_trial.record import CATEGORIES
from fhir_trial.sources._common import is_known_type

__all__ = [
    "EXPORT_TYPES",
    "BulkClient",
    "BulkExport",
    "BulkExportError",
    "ErrorFile",
    "ExportExpiredError",
    "requested_types_of",
]

log = logging.getLogger(__name__)

# What the criteria read, plus the Medications that medication resources point to.
EXPORT_TYPES: tuple[str, ...] = (*CATEGORIES, "Medication")
LEVELS = ("group", "patient", "system")
MANIFEST_FILE = "manifest.json"
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
# The status answer is the manifest (plain JSON) or an OperationOutcome (FHIR JSON).
STATUS_ACCEPT = "application/json, application/fhir+json"
CHUNK = 1 << 16
POLL_FLOOR_S = 1.0  # never poll more often than this, whatever Retry-After says
POLL_CAP_S = 120.0  # never wait longer than this between polls
POLL_FIRST_S = 2.0  # first wait when the server gives no Retry-After; grows by half each time
MAX_WAIT_S = 24 * 3600.0  # give up polling (the job stays; --resume continues) after this
MAX_429 = 20  # consecutive "too many requests" answers before giving up
MAX_MESSAGES = 20  # error messages kept for the report


class BulkExportError(ServerResponseError):
    """The export failed on the server (kick-off refused, job failed, manifest unusable)."""


class ExportExpiredError(BulkExportError):
    """The server no longer has the job or its files (404/410): the export must start again."""


class Progress(Protocol):
    """What the client reports while it works (a tqdm bar in the CLI; nothing in tests)."""

    def status(self, text: str) -> None:
        """The server's ``X-Progress`` (or our own words) while the export runs."""

    def download(self, name: str, index: int, total: int) -> None:
        """File ``index`` of ``total`` starts downloading."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes are on disk."""

    def close(self) -> None:
        """The export is over (done or interrupted)."""


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def status(self, text: str) -> None:
        """Ignored."""

    def download(self, name: str, index: int, total: int) -> None:
        """Ignored."""

    def advance(self, nbytes: int) -> None:
        """Ignored."""

    def close(self) -> None:
        """Ignored."""


# A FHIR reference in free text ("Patient/123", "Observation/abc-1"), masked in shared reports.
_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")


@dataclass
class ErrorFile:
    """One error file of the export: how many OperationOutcomes it holds, and their messages."""

    name: str
    type: str
    count: int = 0
    messages: list[str] = field(default_factory=list)  # the first MAX_MESSAGES, distinct

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for reports."""
        return {
            "file": self.name,
            "type": self.type,
            "count": self.count,
            "messages": self.messages,
        }


@dataclass
class BulkExport:
    """A finished export on disk: what the screening and the report need to know about it.

    ``folder`` holds the NDJSON files and ``manifest.json``; ``requested_types`` are the types the
    kick-off listed in ``_type`` (read back from the manifest's ``request``; an export is complete
    for these even when a type has no file: CRITERIA.md "Completeness"); ``errors`` are the
    export's error files (OperationOutcome NDJSON, also in the folder for the reader).
    """

    folder: Path
    requested_types: tuple[str, ...]
    transaction_time: str | None
    errors: list[ErrorFile]
    output_files: list[str]
    status_url: str
    deleted: bool
    downloaded: int = 0  # files fetched by this run
    reused: int = 0  # files a previous, interrupted run had fetched already

    @property
    def error_count(self) -> int:
        """OperationOutcomes in the error files."""
        return sum(e.count for e in self.errors)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for reports."""
        return {
            "folder": str(self.folder),
            "requestedTypes": list(self.requested_types),
            "transactionTime": self.transaction_time,
            "outputFiles": len(self.output_files),
            "errorCount": self.error_count,
            "errors": [e.to_json() for e in self.errors],
            "deleted": self.deleted,
        }

    def report_inputs(self) -> dict[str, Any]:
        """What the shareable report shows of the export: when, what was asked, the error files.

        Error messages are the server's words, which may name resources: every ``Type/id`` in
        them is shown as ``Type/...`` so the shared report names no patient.
        """
        errors = {
            f"export errors ({e.type or 'unknown type'}, {e.name})": {
                "errors": e.count,
                "messages": " | ".join(_REFERENCE.sub(r"\1/...", m) for m in e.messages),
            }
            for e in self.errors
        }
        return {
            "export transaction time": self.transaction_time,
            "export types requested": ", ".join(self.requested_types) or "none listed",
            "export data files": len(self.output_files),
            "export errors reported by the server": self.error_count,
            **errors,
        }

    def summary(self) -> list[str]:
        """Lines for stderr: what was fetched and what the server reported as errors."""
        lines = [
            f"Bulk export of {self.transaction_time or 'unknown time'}: "
            f"{len(self.output_files)} data files"
            + (f" and {len(self.errors)} error files" if self.errors else "")
            + f" in {self.folder} ({self.downloaded} downloaded, {self.reused} kept from an "
            "earlier run); "
            f"types requested: {', '.join(self.requested_types) or 'none listed'}"
        ]
        if not self.deleted:
            lines.append("The job could not be deleted on the server (it will expire there).")
        if self.errors:
            lines.append(f"The server reported {self.error_count} export errors:")
            for error in self.errors:
                for message in error.messages:
                    lines.append(f"  {error.name}: {message}")
                if error.count > len(error.messages):
                    lines.append(f"  {error.name}: ... {error.count - len(error.messages)} more")
        return lines


def requested_types_of(request_url: str) -> tuple[str, ...]:
    """The types a kick-off URL lists in ``_type`` (comma-separated, possibly repeated)."""
    values = parse_qs(urlsplit(request_url).query).get("_type", [])
    seen: dict[str, None] = {}
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name:
                seen.setdefault(name, None)
    return tuple(seen)


def _flag(value: Any) -> bool:
    # Some servers write "true" as a string (Cerner's documentation shows it).
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]


class BulkClient:
    """Runs Bulk Data exports against one FHIR server (see the module docstring).

    ``auth``: where the bearer token comes from (None: no token). ``token_hosts``: other hosts
    (``host`` or ``host:port``) that may receive it. ``sleep`` and ``clock`` are injectable so tests
    do not wait; ``progress`` receives what the CLI shows.
    """

    def __init__(
        self,
        base_url: str,
        auth: TokenProvider | None = None,
        *,
        settings: Settings | None = None,
        session: requests.Session | None = None,
        token_hosts: Iterable[str] = (),
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"not a usable FHIR base URL (need http(s)://host/...): {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.auth: TokenProvider = auth or StaticToken(None)
        self.settings = settings or Settings()
        self.session = session or requests.Session()
        if isinstance(self.session, requests.Session):
            guard_session(self.session)  # lets _send bound the wait for an answer's headers
        self.token_hosts = {h.strip().lower() for h in token_hosts if h.strip()}
        self.progress: Progress = progress or NoProgress()
        self._sleep = sleep
        self._clock = clock
        self._origin = origin_of(self.base_url)

    # ------------------------------------------------------------------ URLs and the token
    def export_url(self, level: str, group_id: str | None, types: Iterable[str]) -> str:
        """The kick-off URL for ``level`` (group needs ``group_id``) with ``_type``."""
        if level == "group":
            if not group_id:
                raise InputError("a group-level export needs a Group id (--group ID)")
            path = f"Group/{group_id}/$export"
        elif level == "patient":
            path = "Patient/$export"
        elif level == "system":
            path = "$export"
        else:
            raise InputError(f"unknown export level {level!r}; choose from {', '.join(LEVELS)}")
        query = urlencode({"_type": ",".join(types)}, safe=",")
        return f"{self.base_url}/{path}?{query}"

    def may_send_token(self, url: str) -> bool:
        """Whether ``url`` may receive the bearer token: our origin, or an allowlisted host."""
        if origin_of(url) == self._origin:
            return True
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        with_port = f"{host}:{parts.port}" if parts.port else host
        return host in self.token_hosts or with_port in self.token_hosts

    def _headers(self, url: str, accept: str, *, with_token: bool) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "fhir-trial"}
        if with_token:
            token = self.auth.token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        return headers

    # ------------------------------------------------------------------ one request
    def _send(
        self,
        method: str,
        url: str,
        *,
        accept: str = FHIR_JSON,
        extra: Mapping[str, str] | None = None,
        with_token: bool = True,
        stream: bool = False,
        retry_5xx: bool = True,
    ) -> requests.Response:
        """One request: refreshes a refused token once, waits out 429 and (optionally) 5xx."""
        what = f"{method} {_strip_query(url)}"
        renewed = False
        throttled = 0
        failures = 0
        timeout = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
        while True:
            headers = self._headers(url, accept, with_token=with_token)
            headers.update(extra or {})
            # The read timeout applies per socket read: a server trickling its status line and
            # headers would hold the export forever. So the answer (its headers; and its body,
            # small, when it is not a streamed download) must arrive within read_timeout_s in all.
            try:
                response = within(
                    timeout[1],
                    partial(
                        self.session.request,
                        method,
                        url,
                        headers=headers,
                        timeout=timeout,
                        stream=stream,
                    ),
                )
            except CutOff as exc:
                raise ServerUnreachableError(
                    f"{what}: {exc} (read_timeout_s)", url=_strip_query(url)
                ) from exc
            except requests.exceptions.Timeout as exc:
                raise ServerUnreachableError(
                    f"{what}: no answer in time", url=_strip_query(url)
                ) from exc
            except requests.RequestException as exc:
                raise ServerUnreachableError(
                    f"{what}: cannot connect ({type(exc).__name__})", url=_strip_query(url)
                ) from exc
            status = response.status_code
            if status == 401 and with_token and not renewed and self.auth.invalidate():
                response.close()
                renewed = True
                continue
            if status == 429 and throttled < MAX_429:
                throttled += 1
                self._wait(response.headers.get("Retry-After"), POLL_FIRST_S)
                response.close()
                continue
            if (
                retry_5xx
                and status in (500, 502, 503, 504)
                and failures < self.settings.max_retries
            ):
                failures += 1
                self._wait(response.headers.get("Retry-After"), POLL_FIRST_S * failures)
                response.close()
                continue
            if status in (401, 403):
                response.close()
                word = "refused our credentials" if status == 401 else "denied access"
                host = urlsplit(url).netloc
                hint = (
                    f"; the token is not sent to {host}: allow it with --token-host {host}"
                    if not with_token and not self.may_send_token(url)
                    else ""
                )
                raise AuthenticationError(
                    f"{what}: the server {word} (HTTP {status}){hint}",
                    url=_strip_query(url),
                    status=status,
                )
            return response

    def _wait(self, retry_after: str | None, fallback: float) -> float:
        """Sleep as ``Retry-After`` asks (else ``fallback``), within the floor and the cap."""
        asked = parse_retry_after(retry_after)
        delay = fallback if asked is None else asked
        delay = max(POLL_FLOOR_S, min(delay, POLL_CAP_S))
        self._sleep(delay)
        return delay

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _failure(
        self, what: str, response: requests.Response, cls: type[BulkExportError]
    ) -> BulkExportError:
        body = self._json(response)
        outcome = body if body.get("resourceType") == "OperationOutcome" else None
        detail = first_diagnostics(outcome) if outcome else None
        return cls(
            f"{what}: HTTP {response.status_code}" + (f": {detail}" if detail else ""),
            url=_strip_query(response.url or ""),
            status=response.status_code,
            outcome=outcome,
        )

    # ------------------------------------------------------------------ the steps
    def start(
        self, folder: Path, level: str, group_id: str | None, types: Iterable[str] = EXPORT_TYPES
    ) -> ExportState:
        """Kick off an export into ``folder`` (created; must not hold another export)."""
        prepare_folder(folder)
        wanted = list(dict.fromkeys(types))
        url = self.export_url(level, group_id, wanted)
        self.progress.status("starting the export")
        response = self._send("GET", url, extra={"Prefer": "respond-async"})
        with response:
            if response.status_code != 202:
                if response.status_code == 200:
                    raise BulkExportError(
                        "the server answered the $export kick-off synchronously (HTTP 200), "
                        "which Bulk Data does not allow",
                        url=_strip_query(url),
                        status=200,
                    )
                raise self._failure("the server refused the export", response, BulkExportError)
            location = response.headers.get("Content-Location")
        if not location:
            raise BulkExportError(
                "the server accepted the export but gave no status URL (Content-Location)",
                url=_strip_query(url),
                status=202,
            )
        status_url = urljoin(url, location)
        state = ExportState(
            base_url=self.base_url, kickoff_url=url, requested_types=wanted, status_url=status_url
        )
        state.save(folder)
        return state

    def wait(self, folder: Path, state: ExportState) -> dict[str, Any]:
        """Poll until the manifest is ready (saved in the state); returns it."""
        if state.manifest is not None:
            return state.manifest
        url = state.status_url
        with_token = self.may_send_token(url)
        started = self._clock()
        delay = POLL_FIRST_S
        transient = 0
        while True:
            response = self._send(
                "GET", url, accept=STATUS_ACCEPT, with_token=with_token, retry_5xx=False
            )
            with response:
                status = response.status_code
                if status == 202:
                    progress = response.headers.get("X-Progress")
                    self.progress.status(progress or "export in progress")
                    if self._clock() - started > MAX_WAIT_S:
                        raise BulkExportError(
                            f"the export is still running after {MAX_WAIT_S / 3600:g} h; "
                            "it is kept: resume later",
                            url=_strip_query(url),
                            status=202,
                        )
                    self._wait(response.headers.get("Retry-After"), delay)
                    delay = min(delay * 1.5, POLL_CAP_S)
                    continue
                if status == 200:
                    manifest = self._json(response)
                    break
                if status in (404, 410):
                    raise self._failure(
                        "the server no longer knows this export (it expired or was deleted)",
                        response,
                        ExportExpiredError,
                    )
                body = self._json(response)
                if status >= 500 and _is_transient(body) and transient < self.settings.max_retries:
                    transient += 1
                    self._wait(response.headers.get("Retry-After"), delay)
                    continue
                raise self._failure("the export failed on the server", response, BulkExportError)
        if not isinstance(manifest.get("output"), list):
            raise BulkExportError(
                "the export's completion manifest has no 'output' list",
                url=_strip_query(url),
                status=200,
            )
        state.manifest = manifest
        state.phase = "complete"
        state.save(folder)
        return manifest

    def download(self, folder: Path, state: ExportState) -> tuple[int, int]:
        """Fetch every output and error file not already on disk; ``(downloaded, reused)``."""
        manifest = state.manifest or {}
        requires_token = _flag(manifest.get("requiresAccessToken"))
        entries = planned_files(manifest)
        downloaded = reused = 0
        for index, (name, kind, rtype, given) in enumerate(entries, 1):
            url = urljoin(state.status_url, given)  # absolute per the spec; be lenient
            if state.is_done(url, folder):
                reused += 1
                continue
            if requires_token and not self.may_send_token(url):
                host = urlsplit(url).netloc
                raise BulkExportError(
                    f"the export's files are on {host}, which would need our access token; "
                    f"it is sent only to {urlsplit(self.base_url).netloc}. If {host} belongs to "
                    f"the same service, allow it with --token-host {host}",
                    url=_strip_query(url),
                )
            self.progress.download(name, index, len(entries))
            size, digest = self._fetch_file(url, folder / name, with_token=requires_token)
            state.files[url] = DoneFile(
                name=name, url=url, kind=kind, type=rtype, size=size, sha256=digest
            )
            state.save(folder)
            downloaded += 1
        write_manifest(folder, manifest)
        state.phase = "downloaded"
        state.save(folder)
        return downloaded, reused

    def _fetch_file(self, url: str, path: Path, *, with_token: bool) -> tuple[int, str]:
        """Stream one file to ``path`` (via ``path.part``); retries a broken transfer."""
        part = path.with_name(path.name + ".part")
        attempts = 0
        while True:
            response = self._send("GET", url, accept=NDJSON, with_token=with_token, stream=True)
            with response:
                if response.status_code in (404, 410):
                    raise self._failure(
                        f"a file of the export is gone from the server ({path.name})",
                        response,
                        ExportExpiredError,
                    )
                if response.status_code != 200:
                    raise self._failure(
                        f"downloading {path.name} failed", response, BulkExportError
                    )
                digest = hashlib.sha256()
                size = 0
                try:
                    with part.open("wb") as handle:
                        for chunk in response.iter_content(CHUNK):
                            if not chunk:
                                continue
                            handle.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                            self.progress.advance(len(chunk))
                except requests.RequestException as exc:
                    attempts += 1
                    if attempts > self.settings.max_retries:
                        raise ServerUnreachableError(
                            f"downloading {path.name} broke off {attempts} times ({type(exc).__name__})",
                            url=_strip_query(url),
                        ) from exc
                    log.info("download of %s broke off, retrying", path.name)
                    continue
            os.replace(part, path)
            return size, digest.hexdigest()

    def delete(self, folder: Path, state: ExportState) -> bool:
        """``DELETE`` the status URL (the server may drop the files); True when it agreed."""
        url = state.status_url
        try:
            response = self._send(
                "DELETE", url, accept=STATUS_ACCEPT, with_token=self.may_send_token(url)
            )
        except (ServerUnreachableError, AuthenticationError) as exc:
            log.warning("could not delete the export job: %s", exc.message)
            return False
        with response:
            ok = response.status_code in (200, 202, 204, 404, 410)
        if ok:
            state.phase = "deleted"
            state.save(folder)
        return ok

    def cancel(self, folder: Path) -> ExportState:
        """Cancel the export a folder belongs to (``DELETE`` its status URL)."""
        state = ExportState.load(folder)
        if state.phase in ("deleted", "cancelled"):
            return state
        if not self.delete(folder, state):
            raise BulkExportError(
                "the server did not accept the cancellation", url=_strip_query(state.status_url)
            )
        state.phase = "cancelled"
        state.save(folder)
        return state

    def finish(self, folder: Path, state: ExportState) -> BulkExport:
        """Poll (if needed), download what is missing, delete the job; the export on disk."""
        if state.phase in ("cancelled", "expired"):
            raise InputError(
                f"the export in {folder} was {state.phase}; start a new one in another folder"
            )
        try:
            manifest = self.wait(folder, state)
            downloaded, reused = self.download(folder, state)
        except ExportExpiredError:
            state.phase = "expired"
            state.save(folder)
            raise
        deleted = state.phase == "deleted" or self.delete(folder, state)
        self.progress.close()
        return export_on_disk(folder, state, manifest, deleted, downloaded, reused)

    def run(
        self, folder: Path, level: str, group_id: str | None, types: Iterable[str] = EXPORT_TYPES
    ) -> BulkExport:
        """A whole export: kick-off, poll, download, delete."""
        state = self.start(folder, level, group_id, types)
        return self.finish(folder, state)

    def resume(self, folder: Path) -> BulkExport:
        """Continue the export a folder holds (the server URL comes from its state)."""
        return self.finish(folder, ExportState.load(folder))


def _is_transient(body: Mapping[str, Any]) -> bool:
    issues = body.get("issue") if body.get("resourceType") == "OperationOutcome" else None
    return isinstance(issues, list) and any(
        isinstance(i, dict) and i.get("code") == "transient" for i in issues
    )


def prepare_folder(folder: Path) -> None:
    """Create the download folder; refuse one holding an export or NDJSON already."""
    if ExportState.exists(folder):
        raise InputError(
            f"{folder} already holds a Bulk Data export: continue it with --resume {folder}, "
            "screen it with --ndjson, or choose another --download-dir"
        )
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(
        p.name.endswith((".ndjson", ".ndjson.gz")) for p in folder.iterdir()
    ):
        raise InputError(f"{folder} already holds NDJSON files; choose an empty --download-dir")
    # The files hold patient data: a new folder is readable by its owner only.
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def planned_files(manifest: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(file name, kind, type, url)`` for every output and error file, names stable per manifest.

    Names use only known FHIR type names (never text from the server): ``Condition.000.ndjson``;
    error files ``OperationOutcome.error.000.ndjson``.
    """
    counters: dict[str, int] = {}
    planned: list[tuple[str, str, str, str]] = []
    for kind in ("output", "error"):
        for item in manifest.get(kind) or []:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            rtype = item.get("type")
            if kind == "error":
                rtype = "OperationOutcome"
            if not is_known_type(rtype):
                rtype = "Unknown"
            stem = f"{rtype}.error" if kind == "error" else str(rtype)
            n = counters.get(stem, 0)
            counters[stem] = n + 1
            planned.append((f"{stem}.{n:03d}.ndjson", kind, str(rtype), item["url"]))
    return planned


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Keep the completion manifest beside the files (the NDJSON reader reads it)."""
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_FILE)


def read_error_file(path: Path, name: str) -> ErrorFile:
    """Count the OperationOutcomes of an error file and keep their first distinct messages."""
    result = ErrorFile(name=name, type="OperationOutcome")
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            text = line.strip()
            if not text:
                continue
            result.count += 1
            try:
                outcome = json.loads(text)
            except ValueError:
                message = "an unreadable line in the error file"
            else:
                found = first_diagnostics(outcome) if isinstance(outcome, dict) else None
                message = found or "an OperationOutcome without a message"
            if len(result.messages) < MAX_MESSAGES and message not in result.messages:
                result.messages.append(message)
    return result


def export_on_disk(
    folder: Path,
    state: ExportState,
    manifest: Mapping[str, Any],
    deleted: bool,
    downloaded: int = 0,
    reused: int = 0,
) -> BulkExport:
    """The :class:`BulkExport` of a folder whose files are all downloaded."""
    # The manifest's ``request`` is the server's word on what the kick-off listed (CRITERIA.md
    # "Completeness"); a manifest without it vouches for no type, whatever we sent.
    request = manifest.get("request")
    requested = requested_types_of(request) if isinstance(request, str) else ()
    errors = [
        read_error_file(folder / done.name, done.name)
        for done in state.files.values()
        if done.kind == "error"
    ]
    outputs = [done.name for done in state.files.values() if done.kind == "output"]
    when = manifest.get("transactionTime")
    return BulkExport(
        folder=folder,
        requested_types=requested,
        transaction_time=when if isinstance(when, str) else None,
        errors=errors,
        output_files=outputs,
        status_url=state.status_url,
        deleted=deleted,
        downloaded=downloaded,
        reused=reused,
    )
