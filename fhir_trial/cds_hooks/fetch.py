"""Fetching what prefetch lacked from the CDS client's FHIR server, inside the time budget.

One job per prefetch key that prefetch left open (the key's own query from
:mod:`fhir_trial.searches`, or the next page of a prefetched Bundle). The queries go in one
``batch`` Bundle (one round trip; their next pages, if any, are then read in parallel); a server
that refuses batch (an answer that is not a batch-response) is remembered for the life of the
process (:data:`_NO_BATCH`, one entry per base URL) and asked with parallel GETs instead. A
``combo-code`` query the server refuses (HTTP 400/422/501) runs again with ``code`` (the job's
``fallback_url``) and its result says so (``fell_back``: values inside panels were not seen). Then
read per Medication that the medication resources reference and the record lacks (prefetch
templates cannot ask for them portably, and without them the drugs cannot be identified); ``next`` links are followed only
on the FHIR server's own origin and under its base path, never twice (a server that loops its links
is cut off), and never past ``Settings.max_pages`` / ``max_resources``. Every HTTP wait is bounded
by what is left of the :class:`~.deadline.Deadline`; the caller stops waiting when the deadline
passes whatever the threads are doing. Failures become per-category reasons (no PHI, no token).

HTTP itself goes through :class:`fhir_trial.fhir_http.FhirHttp` (auth header, error mapping,
429/5xx retries with Retry-After), configured per request so that its timeouts and retry waits fit
in the remaining budget, and reading bodies as streams under the deadline (a server trickling its
answer is cut off when the budget ends, and its thread is free again).

Isolation: nothing is shared between hook calls but the :data:`_NO_BATCH` flags. Every call
gets its own threads (:meth:`FhirFetcher.fetch` makes a pool per call) and every job its own HTTP
session, so a server that hangs or trickles can hold up only the calls that asked it, and only
until their deadline: other hospitals' hooks never wait for a thread or a connection it holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from fhir_trial.cds_hooks.prefetch import bundle_resources, next_link
from fhir_trial.config import Settings
from fhir_trial.deadline import Deadline, DeadlineExceeded
from fhir_trial.errors import (
    AuthenticationError,
    FhirServerError,
    NotFhirResponseError,
    ScreeningLimitError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.fhir_http import FhirHttp, origin_of
from fhir_trial.searches import UNSUPPORTED_SEARCH_STATUSES

__all__ = ["CategoryResult", "FetchJob", "FhirFetcher", "forget_batch_refusals", "same_base"]

log = logging.getLogger(__name__)

_RETRY_RESERVE_S = 0.05
# Referenced Medications read per hook call at most: a long medication history can reference
# many, and the time budget is for the chart-open answer (those left unread leave their drugs
# unidentified, which the criteria review rather than read as absence).
MAX_MEDICATION_READS = 100
_EVALUATION_RESERVE_S = 0.15
# Why a fetch stopped at the hook's time budget: names the setting, as the request limit's does.
TIMED_OUT = "timed out at the hook's time budget, cds_deadline_s"
# Marks a batch entry the server refused for combo-code (its search runs by code).
_REFUSED: dict[str, Any] = {}
# Base URLs whose server refused a batch (bounded: allowlisted servers only, and capped).
_NO_BATCH: dict[str, float] = {}
_NO_BATCH_LOCK = threading.Lock()
_NO_BATCH_TTL_S = 3600.0
_NO_BATCH_MAX = 1024


def forget_batch_refusals() -> None:
    """Forget which servers refused batch (tests: a port may be reused by another server)."""
    with _NO_BATCH_LOCK:
        _NO_BATCH.clear()


def _batch_refused(base_url: str) -> bool:
    with _NO_BATCH_LOCK:
        when = _NO_BATCH.get(base_url)
        return when is not None and time.monotonic() - when < _NO_BATCH_TTL_S


def _remember_no_batch(base_url: str) -> None:
    with _NO_BATCH_LOCK:
        if len(_NO_BATCH) >= _NO_BATCH_MAX:
            _NO_BATCH.clear()
        _NO_BATCH[base_url] = time.monotonic()


@dataclass(frozen=True)
class FetchJob:
    """One thing to fetch: a relative query (or the next-page URL of a prefetched Bundle)."""

    category: str
    url: str
    continuing: bool = False  # True for a next page: only a Bundle is an acceptable answer
    fallback_url: str | None = None  # the same search by code, for a server without combo-code


@dataclass
class CategoryResult:
    """The outcome of one fetch job: resources, or why it failed."""

    category: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    key: str = ""
    fell_back: bool = False  # searched by code: values inside panels were not seen
    status: int | None = None  # the HTTP status of a failed search, when the server answered

    @property
    def refused_as_unsupported(self) -> bool:
        """Whether the server answered that it does not support the search (400, 422, 501)."""
        return self.status in UNSUPPORTED_SEARCH_STATUSES


def same_base(url: str, base_url: str) -> bool:
    """True when ``url`` is on the origin of ``base_url`` and under its path."""
    if origin_of(url) != origin_of(base_url):
        return False
    base_path = urlsplit(base_url).path.rstrip("/")
    path = urlsplit(url).path
    return path == base_path or path.startswith(base_path + "/")


class FhirFetcher:
    """Fetches categories for one patient from one FHIR server within a deadline.

    ``executor``: a pool to run on (tests); by default every :meth:`fetch` and
    :meth:`read_references` call makes its own, so no hook call waits for another's threads.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        settings: Settings,
        deadline: Deadline,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.settings = settings
        self.deadline = deadline
        self.executor = executor

    def _pool(self, jobs: int) -> ThreadPoolExecutor:
        if self.executor is not None:
            return self.executor
        workers = max(1, min(jobs, max(4, self.settings.search_concurrency * 2)))
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cds-fetch")

    def _release(self, pool: ThreadPoolExecutor) -> None:
        if pool is not self.executor:
            # Do not wait: a thread still reading stops at its deadline check.
            pool.shutdown(wait=False, cancel_futures=True)

    def fetch(self, jobs: Mapping[str, FetchJob]) -> dict[str, CategoryResult]:
        """Run every job (prefetch key -> job); wait no longer than the deadline.

        Queries go in one batch when the server takes it, else in parallel. Jobs still running
        when the deadline passes are reported with the error :data:`TIMED_OUT`.
        """
        results: dict[str, CategoryResult] = {}
        # The Patient read runs beside the batch (a slow search must not cost the Patient, which
        # decides some criteria alone), as do next pages of prefetched Bundles.
        batched = [k for k, j in jobs.items() if not j.continuing and j.category != "Patient"]
        if len(batched) < 2 or _batch_refused(self.base_url):
            batched = []
        pool = self._pool(len(jobs))
        try:
            futures = {
                key: pool.submit(self._fetch_category, key, job, None)
                for key, job in jobs.items()
                if key not in batched
            }
            if batched:
                answered = self._batch({key: jobs[key] for key in batched})
                if answered is None:
                    _remember_no_batch(self.base_url)
                    answered = {}, {}
                failed, first_pages = answered
                results.update(failed)
                for key in batched:
                    if key in failed:
                        continue
                    refused = first_pages.get(key) is _REFUSED
                    futures[key] = pool.submit(
                        self._fetch_category,
                        key,
                        jobs[key],
                        None if refused else first_pages.get(key),
                        refused,
                    )
            for key, future in futures.items():
                try:
                    results[key] = future.result(timeout=self.deadline.remaining())
                except FutureTimeout:
                    results[key] = CategoryResult(jobs[key].category, error=TIMED_OUT, key=key)
        finally:
            self._release(pool)
        return {key: results[key] for key in jobs}

    def _batch(
        self, queries: Mapping[str, FetchJob]
    ) -> tuple[dict[str, CategoryResult], dict[str, dict[str, Any]]] | None:
        """All queries in one batch: (failed results, first pages by key), or None when the
        server does not take batch (4xx, or an answer that is not a batch-response). A batch
        that failed otherwise (5xx, no answer) gives nothing, and every query is run alone.
        Entries refused for combo-code, or failed with a 429/5xx, are left to be run alone."""
        keys = list(queries)
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": queries[k].url}} for k in keys],
        }
        session = requests.Session()
        try:
            answer = self._http(session).request("POST", "", json=bundle).body
        except (DeadlineExceeded, ScreeningLimitError) as exc:
            why = _limit_reason(exc)
            return {k: CategoryResult(queries[k].category, error=why, key=k) for k in keys}, {}
        except AuthenticationError as exc:
            why = f"access refused by the FHIR server (HTTP {exc.status})"
            return {k: CategoryResult(queries[k].category, error=why, key=k) for k in keys}, {}
        except ServerResponseError as exc:
            return None if exc.status and 400 <= exc.status < 500 else ({}, {})
        except FhirServerError:
            return {}, {}
        finally:
            session.close()
        entries = answer.get("entry")
        if (
            answer.get("type") != "batch-response"
            or not isinstance(entries, list)
            or len(entries) != len(keys)
        ):
            return None
        failed: dict[str, CategoryResult] = {}
        pages: dict[str, dict[str, Any]] = {}
        for key, entry in zip(keys, entries, strict=True):
            job = queries[key]
            entry = entry if isinstance(entry, dict) else {}
            status = _status_of(entry.get("response"))
            resource = entry.get("resource")
            if 200 <= status < 300 and isinstance(resource, dict):
                pages[key] = resource
            elif status in UNSUPPORTED_SEARCH_STATUSES and job.fallback_url:
                pages[key] = _REFUSED  # combo-code refused: run by code, straight away
            elif status in (401, 403):
                failed[key] = CategoryResult(
                    job.category,
                    error=f"access refused by the FHIR server (HTTP {status})",
                    key=key,
                )
            elif status in (429, 500, 502, 503, 504):
                continue  # try once more alone
            else:
                failed[key] = CategoryResult(
                    job.category,
                    error=f"the FHIR server answered HTTP {status}" if status else "no answer",
                    key=key,
                    status=status or None,
                )
        return failed, pages

    def read_medications(self, references: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
        """Read referenced Medications (see :meth:`read_references`)."""
        return self.read_references(references, "Medication")

    def read_references(
        self, references: Sequence[str], resource_type: str
    ) -> tuple[list[dict[str, Any]], int]:
        """Read referenced resources in parallel; wait no longer than the deadline.

        Returns the resources read and how many references could not be read (another server,
        an error, not of ``resource_type``, too many, or no answer in time). Only references on
        the FHIR server's own base are followed, like ``next`` links.
        """
        on_base = [ref for ref in references if same_base(self._absolute(ref), self.base_url)]
        wanted = on_base[:MAX_MEDICATION_READS]
        if not wanted:
            return [], len(references)
        pool = self._pool(len(wanted))
        read: list[dict[str, Any]] = []
        try:
            futures = [pool.submit(self._read_one, ref, resource_type) for ref in wanted]
            # Stop waiting a little before the deadline: the screening of everything else still
            # has to run, and its answer is worth more than one more resource.
            stop_at = time.monotonic() + max(0.0, self.deadline.remaining() - _EVALUATION_RESERVE_S)
            for future in futures:
                try:
                    found = future.result(timeout=max(0.0, stop_at - time.monotonic()))
                except FutureTimeout:
                    break  # out of time: the rest count as not read
                if found is not None:
                    read.append(found)
        finally:
            self._release(pool)
        return read, len(references) - len(read)

    def _absolute(self, url: str) -> str:
        return url if urlsplit(url).scheme else f"{self.base_url}/{url.lstrip('/')}"

    def _read_one(self, reference: str, resource_type: str) -> dict[str, Any] | None:
        session = requests.Session()
        try:
            body = self._get(self._absolute(reference), session)
        except (DeadlineExceeded, FhirServerError) as exc:
            log.info("cds fetch of a referenced %s failed (%s)", resource_type, type(exc).__name__)
            return None
        finally:
            session.close()
        return body if body.get("resourceType") == resource_type else None

    # ------------------------------------------------------------------ one category
    def _fetch_category(
        self,
        key: str,
        job: FetchJob,
        first_page: dict[str, Any] | None = None,
        combo_code_refused: bool = False,
    ) -> CategoryResult:
        if combo_code_refused and job.fallback_url:
            result = self._fetch_url(key, job, job.fallback_url, None)
            result.fell_back = True
        else:
            result = self._fetch_url(key, job, job.url, first_page)
        unsupported = bool(result.error and result.error.startswith("unsupported:"))
        if unsupported and job.fallback_url and not result.fell_back:
            result = self._fetch_url(key, job, job.fallback_url, None)
            result.fell_back = True
        if result.error and result.error.startswith("unsupported:"):
            result.error = result.error.removeprefix("unsupported:")
        if result.error:
            result.resources = []
            log.info("cds fetch %s failed: %s", key, result.error)
        return result

    def _fetch_url(
        self, key: str, job: FetchJob, url: str, first_page: dict[str, Any] | None
    ) -> CategoryResult:
        result = CategoryResult(job.category, key=key)
        session = requests.Session()
        try:
            self._fetch_pages(result, url, job.continuing, session, first_page)
        except (DeadlineExceeded, ScreeningLimitError) as exc:
            result.error = _limit_reason(exc)
        except AuthenticationError as exc:
            result.error = f"access refused by the FHIR server (HTTP {exc.status})"
        except ServerUnreachableError as exc:
            timed_out = isinstance(exc.__cause__, requests.exceptions.Timeout)
            result.error = TIMED_OUT if timed_out else "the FHIR server could not be reached"
        except NotFhirResponseError:
            result.error = "the FHIR server did not answer with FHIR JSON"
        except ServerResponseError as exc:
            result.error = (
                f"the FHIR server answered HTTP {exc.status}" if exc.status else exc.message
            )
            result.status = exc.status
            if exc.status in UNSUPPORTED_SEARCH_STATUSES and job.fallback_url:
                result.error = "unsupported:" + result.error
        except FhirServerError as exc:
            result.error = exc.message
        finally:
            session.close()
        return result

    def _fetch_pages(
        self,
        result: CategoryResult,
        first: str,
        continuing: bool,
        session: requests.Session,
        first_page: dict[str, Any] | None = None,
    ) -> None:
        url: str | None = first
        seen: set[str] = set()
        pages = 0
        while url:
            if first_page is not None:  # the batch brought the first page
                body, first_page = first_page, None
                pages += 1
                seen.add(self._absolute(url))
                url = self._page(result, body, continuing)
                if url is None or result.error:
                    return
                continue
            absolute = self._absolute(url)
            if not same_base(absolute, self.base_url):
                result.error = "a next link pointed outside the FHIR server; not followed"
                return
            if absolute in seen:
                result.error = "the FHIR server's next links loop; results are incomplete"
                return
            seen.add(absolute)
            pages += 1
            if pages > self.settings.max_pages:
                result.error = f"more than {self.settings.max_pages} pages; results are incomplete"
                return
            body = self._get(absolute, session)
            url = self._page(result, body, continuing)
            if result.error:
                return

    def _page(self, result: CategoryResult, body: dict[str, Any], continuing: bool) -> str | None:
        """Take one answer into ``result``; returns the next page's URL (None: done or failed)."""
        rtype = body.get("resourceType")
        url: str | None = None
        if rtype == "Bundle":
            resources, problem = bundle_resources(body)
            if problem:
                result.error = f"the FHIR server sent a Bundle that cannot be read ({problem})"
                return None
            result.resources.extend(resources)
            url = next_link(body)
        elif result.category == "Patient" and rtype == "Patient" and not continuing:
            result.resources.append(body)
        elif rtype == "OperationOutcome":
            result.error = "the FHIR server answered with an OperationOutcome"
            return None
        else:
            result.error = "the FHIR server answered with an unexpected resource type"
            return None
        if len(result.resources) > self.settings.max_resources:
            result.error = (
                f"more than {self.settings.max_resources} resources; results are incomplete"
            )
            return None
        return url

    def _http(self, session: requests.Session) -> FhirHttp:
        """An HTTP client whose timeouts and retry waits fit in what is left of the deadline."""
        wait = self.deadline.timeout(reserve=_RETRY_RESERVE_S)
        settings = self.settings.replace(
            connect_timeout_s=min(self.settings.connect_timeout_s, wait),
            read_timeout_s=min(self.settings.read_timeout_s, wait),
            max_retries=1 if wait > 0.3 else 0,
        )
        return FhirHttp(
            self.base_url,
            token=self.token,
            settings=settings,
            session=session,
            sleep=self.deadline.sleep,
            backoff_s=0.05,
            max_retry_after_s=max(0.0, wait / 3),
            deadline=self.deadline,
        )

    def _get(self, url: str, session: requests.Session) -> dict[str, Any]:
        body = self._http(session).get_json(url)
        self.deadline.check()
        return body


def _limit_reason(exc: Exception) -> str:
    """Why a fetch stopped at a limit: the request limit or the time budget (:data:`TIMED_OUT`:
    the hook then answers that the EHR's FHIR server did not answer in time), each named."""
    said = str(exc)
    if "fhir_max_requests" in said:
        return said.rpartition(": ")[2]  # the limit of N requests per screening (...) was reached
    return TIMED_OUT


def _status_of(response: Any) -> int:
    """The HTTP status of a batch entry's ``response.status`` ("200 OK" -> 200; 0 if unreadable)."""
    text = response.get("status") if isinstance(response, dict) else None
    head = str(text or "").strip()[:3]
    return int(head) if head.isdigit() else 0
