"""Fetching what prefetch lacked from the CDS client's FHIR server, inside the time budget.

One job per prefetch key that prefetch left open (the key's own query from
:mod:`fhir_trial.searches`, or the next page of a prefetched Bundle), all run in parallel, then one
read per Medication that the medication resources reference and the record lacks (prefetch
templates cannot ask for them portably, and without them the drugs cannot be identified); ``next`` links are followed only
on the FHIR server's own origin and under its base path, never twice (a server that loops its links
is cut off), and never past ``Settings.max_pages`` / ``max_resources``. Every HTTP wait is bounded
by what is left of the :class:`~.deadline.Deadline`; the caller stops waiting when the deadline
passes whatever the threads are doing. Failures become per-category reasons (no PHI, no token).

HTTP itself goes through :class:`fhir_trial.fhir_http.FhirHttp` (auth header, error mapping,
429/5xx retries with Retry-After), configured per request so that its timeouts and retry waits fit
in the remaining budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from fhir_trial.cds_hooks.deadline import Deadline, DeadlineExceeded
from fhir_trial.cds_hooks.prefetch import bundle_resources, next_link
from fhir_trial.config import Settings
from fhir_trial.errors import (
    AuthenticationError,
    FhirServerError,
    NotFhirResponseError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.fhir_http import FhirHttp, origin_of

__all__ = ["CategoryResult", "FetchJob", "FhirFetcher", "same_base"]

log = logging.getLogger(__name__)

_RETRY_RESERVE_S = 0.05
# Referenced Medications read per hook call at most: a long medication history can reference
# many, and the time budget is for the chart-open answer (those left unread leave their drugs
# unidentified, which the criteria review rather than read as absence).
MAX_MEDICATION_READS = 100
_EVALUATION_RESERVE_S = 0.15


@dataclass(frozen=True)
class FetchJob:
    """One thing to fetch: a relative query (or the next-page URL of a prefetched Bundle)."""

    category: str
    url: str
    continuing: bool = False  # True for a next page: only a Bundle is an acceptable answer


@dataclass
class CategoryResult:
    """The outcome of one fetch job: resources, or why it failed."""

    category: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    key: str = ""


def same_base(url: str, base_url: str) -> bool:
    """True when ``url`` is on the origin of ``base_url`` and under its path."""
    if origin_of(url) != origin_of(base_url):
        return False
    base_path = urlsplit(base_url).path.rstrip("/")
    path = urlsplit(url).path
    return path == base_path or path.startswith(base_path + "/")


class FhirFetcher:
    """Fetches categories for one patient from one FHIR server within a deadline."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        settings: Settings,
        deadline: Deadline,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.settings = settings
        self.deadline = deadline
        self.executor = executor

    def fetch(self, jobs: Mapping[str, FetchJob]) -> dict[str, CategoryResult]:
        """Run every job (prefetch key -> job) in parallel; wait no longer than the deadline.

        Jobs still running when the deadline passes are reported with the error ``"timed out"``;
        their threads stop at their next deadline check.
        """
        futures = {
            key: self.executor.submit(self._fetch_category, key, job) for key, job in jobs.items()
        }
        results: dict[str, CategoryResult] = {}
        for key, future in futures.items():
            try:
                results[key] = future.result(timeout=self.deadline.remaining())
            except FutureTimeout:
                results[key] = CategoryResult(jobs[key].category, error="timed out", key=key)
        return results

    def read_medications(self, references: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
        """Read referenced Medications in parallel; wait no longer than the deadline.

        Returns the Medications read and how many references could not be read (another server,
        an error, not a Medication, too many, or no answer in time). Only references on the FHIR
        server's own base are followed, like ``next`` links.
        """
        on_base = [ref for ref in references if same_base(self._absolute(ref), self.base_url)]
        wanted = on_base[:MAX_MEDICATION_READS]
        futures = [self.executor.submit(self._read_medication, ref) for ref in wanted]
        # Stop waiting a little before the deadline: the screening of everything else still has
        # to run, and its answer is worth more than one more drug name.
        stop_at = time.monotonic() + max(0.0, self.deadline.remaining() - _EVALUATION_RESERVE_S)
        read: list[dict[str, Any]] = []
        for future in futures:
            try:
                medication = future.result(timeout=max(0.0, stop_at - time.monotonic()))
            except FutureTimeout:
                break  # out of time: the rest count as not read
            if medication is not None:
                read.append(medication)
        return read, len(references) - len(read)

    def _absolute(self, url: str) -> str:
        return url if urlsplit(url).scheme else f"{self.base_url}/{url.lstrip('/')}"

    def _read_medication(self, reference: str) -> dict[str, Any] | None:
        session = requests.Session()
        try:
            body = self._get(self._absolute(reference), session)
        except (DeadlineExceeded, FhirServerError) as exc:
            log.info("cds fetch of a referenced Medication failed (%s)", type(exc).__name__)
            return None
        finally:
            session.close()
        return body if body.get("resourceType") == "Medication" else None

    # ------------------------------------------------------------------ one category
    def _fetch_category(self, key: str, job: FetchJob) -> CategoryResult:
        result = CategoryResult(job.category, key=key)
        session = requests.Session()
        try:
            self._fetch_pages(result, job.url, job.continuing, session)
        except DeadlineExceeded:
            result.error = "timed out"
        except AuthenticationError as exc:
            result.error = f"access refused by the FHIR server (HTTP {exc.status})"
        except ServerUnreachableError as exc:
            timed_out = isinstance(exc.__cause__, requests.exceptions.Timeout)
            result.error = "timed out" if timed_out else "the FHIR server could not be reached"
        except NotFhirResponseError:
            result.error = "the FHIR server did not answer with FHIR JSON"
        except ServerResponseError as exc:
            result.error = (
                f"the FHIR server answered HTTP {exc.status}" if exc.status else exc.message
            )
        except FhirServerError as exc:
            result.error = exc.message
        finally:
            session.close()
        if result.error:
            result.resources = []
            log.info("cds fetch %s failed: %s", key, result.error)
        return result

    def _fetch_pages(
        self, result: CategoryResult, first: str, continuing: bool, session: requests.Session
    ) -> None:
        url: str | None = first
        seen: set[str] = set()
        pages = 0
        while url:
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
            rtype = body.get("resourceType")
            if rtype == "Bundle":
                resources, problem = bundle_resources(body)
                if problem:
                    result.error = f"the FHIR server sent a Bundle that cannot be read ({problem})"
                    return
                result.resources.extend(resources)
                url = next_link(body)
            elif result.category == "Patient" and rtype == "Patient" and not continuing:
                result.resources.append(body)
                url = None
            elif rtype == "OperationOutcome":
                result.error = "the FHIR server answered with an OperationOutcome"
                return
            else:
                result.error = "the FHIR server answered with an unexpected resource type"
                return
            if len(result.resources) > self.settings.max_resources:
                result.error = (
                    f"more than {self.settings.max_resources} resources; results are incomplete"
                )
                return

    def _get(self, url: str, session: requests.Session) -> dict[str, Any]:
        wait = self.deadline.timeout(reserve=_RETRY_RESERVE_S)
        settings = self.settings.replace(
            connect_timeout_s=min(self.settings.connect_timeout_s, wait),
            read_timeout_s=min(self.settings.read_timeout_s, wait),
            max_retries=1 if wait > 0.3 else 0,
        )
        http = FhirHttp(
            self.base_url,
            token=self.token,
            settings=settings,
            session=session,
            sleep=self.deadline.sleep,
            backoff_s=0.05,
            max_retry_after_s=max(0.0, wait / 3),
        )
        body = http.get_json(url)
        self.deadline.check()
        return body
