"""The one place where this project speaks HTTP to a FHIR server.

:class:`FhirHttp` sends a request to a FHIR base URL and returns a :class:`FhirResponse` (status,
headers, parsed JSON body) or raises one of the :mod:`fhir_trial.errors` server errors:

    connection refused, DNS failure, timeout      -> ServerUnreachableError   (exit code 3)
    401 / 403                                     -> AuthenticationError      (exit code 4)
    any other 4xx / 5xx                           -> ServerResponseError      (exit code 5)
                                                     (.outcome = the OperationOutcome, if any)
    2xx whose body is not FHIR JSON (HTML, ...)   -> NotFhirResponseError     (exit code 5)

Every request carries ``Accept: application/fhir+json``, the bearer token when one is given, and
the connect/read timeouts of :class:`~fhir_trial.config.Settings`. A :class:`~fhir_trial.deadline.Deadline`
(optional) bounds the whole exchange: every timeout is cut to what is left of it, the body is read
as a stream and given up on when the deadline passes, a watchdog shuts the connection's socket
down if the deadline passes while the status line or headers are still arriving
(:mod:`fhir_trial.http_watchdog`; a read timeout applies per socket read, so a server trickling
its answer a byte at a time would otherwise never be given up on), retries never wait past it,
and each request is counted against its request limit. Hitting it raises
:class:`~fhir_trial.errors.ScreeningLimitError`, whose message names the limit. Answers 429, 500, 502, 503 and
504 are retried up to ``Settings.max_retries`` times with exponential backoff; a ``Retry-After``
header (seconds or an HTTP date) replaces the backoff, capped at ``max_retry_after_s``.

Error messages are one line and name the server's origin, the method and the resource type only:
never the token, never a query string or a resource id (those can identify a patient).

The HTTP transport is a :class:`requests.Session`, injectable so that unit tests need no network::

    http = FhirHttp("https://hapi.example/fhir", token="...", settings=settings)
    bundle = http.get_json("Observation", {"patient": "123", "code": "http://loinc.org|26499-4"})
    next_url = ...  # a link from the Bundle
    if http.same_origin(next_url):
        page = http.get_json(next_url)
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from fhir_trial.config import Settings
from fhir_trial.deadline import Deadline, DeadlineExceeded
from fhir_trial.elements import child, objects
from fhir_trial.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFhirResponseError,
    ScreeningLimitError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.http_watchdog import CutOff, guard_session, within
from fhir_trial.json_input import parse_json

__all__ = ["FHIR_JSON", "FhirHttp", "FhirResponse", "origin_of"]

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_DIAGNOSTICS = 200


@dataclass(frozen=True)
class FhirResponse:
    """A successful answer: HTTP status, headers (case-insensitive) and the JSON body.

    ``body`` is the parsed FHIR resource, or ``{}`` when the server sent no body (204, or a
    ``Prefer: return=minimal`` write).
    """

    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]
    url: str = field(default="", repr=False)

    @property
    def resource_type(self) -> str | None:
        """The ``resourceType`` of the body, or None for an empty body."""
        value = self.body.get("resourceType")
        return value if isinstance(value, str) else None


def origin_of(url: str) -> tuple[str, str, int]:
    """Return ``(scheme, host, port)`` of an absolute URL, default ports made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


class FhirHttp:
    """HTTP to one FHIR server: auth, timeouts, retries, and errors mapped to fhir_trial.errors.

    ``base_url`` is the FHIR base (``https://host/fhir``); relative paths given to :meth:`request`
    are resolved against it. ``session`` is the transport (a fresh :class:`requests.Session` by
    default; pass a fake in unit tests). ``sleep`` is how retries wait (tests pass a recorder).
    ``backoff_s`` is the first retry delay (doubled each retry) and ``max_retry_after_s`` caps both
    the backoff and any ``Retry-After`` the server asks for.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        settings: Settings | None = None,
        session: requests.Session | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 30.0,
        deadline: Deadline | None = None,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"not a usable FHIR base URL (need http(s)://host/...): {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.settings = settings or Settings()
        self._token = token or None
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        if isinstance(self.session, requests.Session):
            guard_session(self.session)  # so that the deadline can cut off a trickling answer
        self._sleep = sleep
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._origin = origin_of(self.base_url)
        self.deadline = deadline

    # --- context manager ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the transport if this object created it."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> FhirHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the token
        return f"FhirHttp({self.base_url!r}, token={'***' if self._token else None})"

    # --- URLs -----------------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the server, for messages."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    def same_origin(self, url: str) -> bool:
        """True when an absolute ``url`` is on this server's scheme, host and port.

        Use it before following any URL the server hands back (Bundle next links, Bulk Data
        status and file URLs): a link elsewhere must not receive our token.
        """
        return origin_of(url) == self._origin

    def resolve(self, url_or_path: str) -> str:
        """Absolute URL for a path relative to the base (``""`` is the base itself)."""
        if urlsplit(url_or_path).scheme:
            return url_or_path
        path = url_or_path.lstrip("/")
        return f"{self.base_url}/{path}" if path else self.base_url

    # --- requests -------------------------------------------------------------------------------
    def get_json(self, url_or_path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET and return the body (a FHIR resource); raises like :meth:`request`."""
        return self.request("GET", url_or_path, params=params).body

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        """Send one request (retrying 429/5xx) and return the FHIR answer.

        ``url_or_path`` is relative to the base URL, or absolute on the same origin (an absolute
        URL elsewhere raises :class:`ServerResponseError` and is not contacted). ``json`` is sent
        as ``application/fhir+json``.
        """
        method = method.upper()
        url = self.resolve(url_or_path)
        what = self._describe(method, url)
        if not self.same_origin(url):
            raise ServerResponseError(
                f"{what}: refusing to send a request outside {self.origin}", url=_strip_query(url)
            )
        send_headers = {"Accept": FHIR_JSON, "User-Agent": "fhir-trial"}
        data: bytes | None = None
        if json is not None:
            send_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
            data = _dumps(json)
        if self._token:
            send_headers["Authorization"] = f"Bearer {self._token}"
        send_headers.update(headers or {})
        attempt = 0
        while True:
            timeout = self._timeouts(what, url)
            exchange = partial(
                self._attempt, method, url, params, data, send_headers, timeout, what, attempt
            )
            # The deadline is enforced on the socket too (fhir_trial.http_watchdog): a server
            # that trickles its status line and headers never trips a per-read timeout.
            try:
                response, retry = within(self._watch_seconds(), exchange)
            except CutOff as exc:
                raise self._cut_off(what, url) from exc
            if retry is not None:
                self._sleep(retry)
                attempt += 1
                continue
            return self._answer(response, what, url)

    def _attempt(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        data: bytes | None,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
        what: str,
        attempt: int,
    ) -> tuple[requests.Response, float | None]:
        """One exchange: the answer, and the delay before a retry (None: its body was read)."""
        response = self._send(method, url, params, data, headers, timeout, what)
        retry = self._retry_delay_for(response, attempt, what)
        if retry is None:
            self._read_body(response, what, url, timeout[1])
        return response, retry

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        data: bytes | None,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
        what: str,
    ) -> requests.Response:
        """One HTTP exchange up to the answer's headers; transport failures mapped to errors."""
        started = time.monotonic()
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=timeout,
                **self._stream_kwargs,
            )
        except requests.exceptions.Timeout as exc:
            if self.deadline is not None and self.deadline.expired():
                raise self._limit_error(what, url, self.deadline.message()) from exc
            raise ServerUnreachableError(
                f"{what}: no answer from {self.origin} within the time limit "
                f"(connect {timeout[0]:g}s, read {timeout[1]:g}s)",
                url=_strip_query(url),
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise ServerUnreachableError(
                f"{what}: cannot connect to {self.origin}", url=_strip_query(url)
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise ServerUnreachableError(
                f"{what}: request to {self.origin} failed ({type(exc).__name__})",
                url=_strip_query(url),
            ) from exc
        log.debug("%s -> %s in %.3fs", what, response.status_code, time.monotonic() - started)
        return response

    def _retry_delay_for(
        self, response: requests.Response, attempt: int, what: str
    ) -> float | None:
        """The wait before retrying a 429/5xx answer (closed then), or None: take the answer."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.settings.max_retries:
            return None
        delay = self._retry_delay(attempt, response.headers.get("Retry-After"))
        if self.deadline is not None and delay >= self.deadline.remaining():
            return None
        response.close()
        log.info("%s -> %s, retry %d in %.1fs", what, response.status_code, attempt + 1, delay)
        return delay

    def _watch_seconds(self) -> float | None:
        """How long the socket watchdog lets one exchange run (None: no deadline, no watchdog)."""
        return self.deadline.remaining() if self.deadline is not None else None

    def _cut_off(self, what: str, url: str) -> ScreeningLimitError:
        assert self.deadline is not None  # the watchdog is armed only under a deadline
        return self._limit_error(
            what, url, f"{self.deadline.message()} while waiting for the answer"
        )

    @property
    def _stream_kwargs(self) -> dict[str, Any]:
        # A real requests.Session streams, so that the body can be read under the deadline;
        # injected test transports answer with their body already read.
        return {"stream": True} if isinstance(self.session, requests.Session) else {}

    def _timeouts(self, what: str, url: str) -> tuple[float, float]:
        """(connect, read) timeouts, cut to the deadline; counts the request against its limit."""
        connect, read = self.settings.connect_timeout_s, self.settings.read_timeout_s
        if self.deadline is None:
            return connect, read
        try:
            self.deadline.count_request()
            left = self.deadline.timeout()
        except DeadlineExceeded as exc:
            raise self._limit_error(what, url, str(exc)) from exc
        return min(connect, left), min(read, left)

    def _limit_error(self, what: str, url: str, why: str) -> ScreeningLimitError:
        return ScreeningLimitError(
            f"{what}: gave up on {self.origin}: {why}", url=_strip_query(url)
        )

    def _read_body(
        self, response: requests.Response, what: str, url: str, read_timeout: float
    ) -> None:
        """Read a streamed body into ``response`` chunk by chunk, never past the deadline.

        Each socket read is bounded by the read timeout; the total by the deadline. Without a
        deadline (publishing, large downloads) only the read timeout applies, as before.
        """
        if getattr(response, "_content_consumed", True) or response._content is not False:
            return  # already read (a test transport, or not streamed)
        raw = response.raw
        if self.deadline is not None:
            end = time.monotonic() + self.deadline.remaining()
            why = self.deadline.message()
        else:
            end = float("inf")  # publishing, large downloads: the read timeout only, as before
            why = ""
        chunks: list[bytes] = []
        try:
            while True:
                if time.monotonic() > end:
                    response.close()
                    raise self._limit_error(what, url, f"{why} while the answer was being sent")
                chunk = raw.read1(65536, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError, requests.exceptions.RequestException) as exc:
            response.close()
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
                raise ServerUnreachableError(
                    f"{what}: {self.origin} stopped sending its answer (read {read_timeout:g}s)",
                    url=_strip_query(url),
                ) from exc
            raise NotFhirResponseError(
                f"{what}: {self.origin} broke off its answer (truncated body)",
                url=_strip_query(url),
                status=response.status_code,
            ) from exc
        response._content = b"".join(chunks)
        response._content_consumed = True

    # --- internals ------------------------------------------------------------------------------
    def _describe(self, method: str, url: str) -> str:
        """``GET Observation`` / ``POST [base]``: method and resource type, no ids or queries."""
        path = urlsplit(url).path
        base_path = urlsplit(self.base_url).path.rstrip("/")
        rest = path[len(base_path) :] if path.startswith(base_path) else path
        first = rest.strip("/").split("/", 1)[0]
        return f"{method} {first or '[base]'}"

    def _retry_delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        delay = self.backoff_s * (2**attempt)
        asked = parse_retry_after(retry_after)
        if asked is not None:
            delay = asked
        return max(0.0, min(delay, self.max_retry_after_s))

    def _answer(self, response: requests.Response, what: str, url: str) -> FhirResponse:
        status = response.status_code
        clean_url = _strip_query(url)
        body, problem = _parse_body(response)
        if status in (401, 403):
            word = "refused our credentials" if status == 401 else "denied access"
            raise AuthenticationError(
                f"{what}: {self.origin} {word} (HTTP {status})"
                + ("" if self._token else "; no token was given"),
                url=clean_url,
                status=status,
                outcome=_outcome(body),
            )
        if status >= 400:
            outcome = _outcome(body)
            detail = first_diagnostics(outcome) if outcome else None
            raise ServerResponseError(
                f"{what}: {self.origin} answered HTTP {status} {response.reason or ''}".rstrip()
                + (f": {detail}" if detail else ""),
                url=clean_url,
                status=status,
                outcome=outcome,
            )
        if status < 200 or status >= 300:
            raise ServerResponseError(
                f"{what}: {self.origin} answered HTTP {status}, which is not a FHIR answer",
                url=clean_url,
                status=status,
            )
        if problem:
            raise NotFhirResponseError(
                f"{what}: {self.origin} did not answer with FHIR JSON ({problem})",
                url=clean_url,
                status=status,
            )
        return FhirResponse(status=status, headers=response.headers, body=body, url=url)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def first_diagnostics(outcome: Mapping[str, Any]) -> str | None:
    """The first issue's diagnostics (or details.text / code), on one line, shortened."""
    for issue in objects(outcome.get("issue")):
        text = issue.get("diagnostics") or child(issue.get("details"), "text") or issue.get("code")
        if isinstance(text, str) and text.strip():
            line = " ".join(text.split())
            if len(line) > _MAX_DIAGNOSTICS:
                line = line[: _MAX_DIAGNOSTICS - 3] + "..."
            return line
    return None


def _parse_body(response: requests.Response) -> tuple[dict[str, Any], str | None]:
    """Parse the body: ``(resource, None)`` or ``({}, why it is not FHIR JSON)``."""
    content = response.content
    if not content or not content.strip():
        return {}, None
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        data = parse_json(content)
    except (ValueError, UnicodeDecodeError):
        return {}, f"got {ctype or 'a body'} that is not JSON"
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        return {}, "JSON without a resourceType"
    return data, None


def _outcome(body: Mapping[str, Any]) -> dict[str, Any] | None:
    return dict(body) if body.get("resourceType") == "OperationOutcome" else None


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
