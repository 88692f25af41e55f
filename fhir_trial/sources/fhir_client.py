"""FhirClient: one patient's record from a FHIR R4 server, in as few round trips as it can.

``fetch_patient_record(patient_id)`` reads the Patient and runs the searches of
:mod:`fhir_trial.searches` (the same queries the CDS Hooks service publishes as prefetch
templates), each with ``_count=200``:

====================  =========================================================================
Patient               ``Patient/<id>`` (a read)
Condition             ``Condition?patient=<id>``
Observation           ``Observation?patient=<id>&combo-code=<system|code,...>`` (the code or a
                      component's code), for results and for disease activity scores, each split
                      over several searches when its codes would make the query longer than
                      ``Settings.max_search_query_chars``; plus ``value-concept`` and
                      ``component-value-concept`` searches for NYHA class findings (optional: a
                      server that cannot run them only causes a warning)
Medication*           ``MedicationStatement|Request|Administration|Dispense?patient=<id>``
AllergyIntolerance    ``AllergyIntolerance?patient=<id>``
ResearchSubject       ``ResearchSubject?individual=<id>``
Consent               ``Consent?patient=<id>``
====================  =========================================================================

All of them go in one ``batch`` Bundle (``POST [base]``); a server that refuses batch is
remembered and searched with concurrent GETs instead (``Settings.search_concurrency`` threads).
Medications referenced by ``medicationReference`` and not in the results are then read.

Paging follows ``Bundle.link[relation=next].url`` exactly as given (HAPI ``_getpages``, others
``_offset``), only on the server's own origin, and stops at ``Settings.max_pages`` pages or
``Settings.max_resources`` resources per search, or when a next link repeats. A truncated category
keeps what was read (a qualifying record found in it is real evidence) but is marked *failed*, so
absence in it never turns into ``not-met`` (absence rule 1); the record also gets a warning.

Failures: a category whose search fails (unsupported type, 4xx/5xx after retries, timeout, non-FHIR
answer) is marked failed with a short reason without PHI, so its criteria become ``unknown``.
401/403 raise :class:`~fhir_trial.errors.AuthenticationError`; a Patient that does not exist raises
:class:`PatientNotFoundError`; a Patient read that fails otherwise raises the server error (nothing
can be screened without the patient).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import requests

from fhir_trial.config import Settings
from fhir_trial.errors import (
    AuthenticationError,
    FhirServerError,
    InputError,
    NotFhirResponseError,
    PatientNotFoundError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.fhir_http import RETRY_STATUSES, FhirHttp
from fhir_trial.record import CATEGORIES, PatientRecord
from fhir_trial.searches import plan_searches
from fhir_trial.sources._common import search_bundle_entries
from fhir_trial.terminology import Terminology, load_terminology

Resource = dict[str, Any]

PAGE_SIZE = 200  # _count asked for on every search
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Search:
    """One query of a category: ``resource_type?params``; ``optional`` ones only warn on failure."""

    category: str
    resource_type: str
    params: tuple[tuple[str, str], ...]
    optional: bool = False
    label: str = ""

    def relative_url(self) -> str:
        """``Type?a=b&c=d`` as a batch entry's request.url."""
        if not self.params:
            return self.resource_type
        return f"{self.resource_type}?{urlencode(self.params, safe='|,:/')}"


@dataclass
class SearchResult:
    """What one search brought back (built in a worker thread, merged in the caller's)."""

    search: Search
    entries: list[tuple[Resource, str | None]] = field(default_factory=list)
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: FhirServerError | None = None  # kept to re-raise auth errors in the caller's thread
    incomplete: str | None = None  # set when paging stopped early: the entries are only part


def _status_of(text: Any) -> int:
    """``"404 Not Found"`` -> 404 (0 when unreadable)."""
    match = re.match(r"\s*(\d{3})", str(text or ""))
    return int(match.group(1)) if match else 0


def _reason(error: FhirServerError) -> str:
    """A short, PHI-free reason for a failed search."""
    if isinstance(error, ServerUnreachableError):
        return "no answer from the server (connection failed or timed out)"
    if isinstance(error, NotFhirResponseError):
        return "the server's answer was not FHIR JSON"
    if error.status in (400, 404, 405, 501):
        return f"the server does not support this search (HTTP {error.status})"
    if error.status:
        return f"the server answered HTTP {error.status}"
    return "the request could not be completed"


class FhirClient:
    """Fetches PatientRecords from one FHIR server.

    ``server`` is a FHIR base URL (a :class:`FhirHttp` is built from it with ``token``,
    ``settings`` and ``session``) or a ready :class:`FhirHttp`. ``terminology`` defaults to the
    ValueSets in ``settings.resources_dir``.
    """

    def __init__(
        self,
        server: str | FhirHttp,
        token: str | None = None,
        settings: Settings | None = None,
        session: requests.Session | None = None,
        *,
        terminology: Terminology | None = None,
    ) -> None:
        if isinstance(server, FhirHttp):
            self.http = server
            self.settings = settings or server.settings
        else:
            self.settings = settings or Settings()
            self.http = FhirHttp(server, token=token, settings=self.settings, session=session)
        self._terminology = terminology
        self.batch_supported: bool | None = None  # None: not tried yet

    def close(self) -> None:
        """Close the HTTP transport if the client created it."""
        self.http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- planning
    @property
    def terminology(self) -> Terminology:
        """The ValueSets the Observation code filter comes from (loaded on first use)."""
        if self._terminology is None:
            self._terminology = load_terminology(self.settings.resources_dir)
        return self._terminology

    def searches(self, patient_id: str) -> list[Search]:
        """Every query for one patient (:func:`fhir_trial.searches.plan_searches`), Patient first."""
        plan = []
        for planned in plan_searches(self.terminology, self.settings.max_search_query_chars):
            if planned.category == "Patient":
                plan.append(Search("Patient", planned.relative_url(patient_id), ()))
                continue
            first, *rest = planned.params(patient_id)
            plan.append(
                Search(
                    planned.category,
                    planned.resource_type,
                    (first, ("_count", str(PAGE_SIZE)), *rest),
                    optional=planned.optional,
                    label=planned.label,
                )
            )
        return plan

    # --------------------------------------------------------------------------- fetching
    def fetch_patient_record(self, patient_id: str) -> PatientRecord:
        """Read one patient's data into a :class:`PatientRecord` (see the module docstring)."""
        patient_id = _check_id(patient_id)
        plan = self.searches(patient_id)
        results: list[SearchResult] | None = None
        if self.batch_supported is not False:
            results = self._run_batch(plan)
            self.batch_supported = results is not None
            if results is not None:  # entries the server could not answer then: try once alone
                results = [
                    self._run_one(r.search) if r.error and r.error.status in RETRY_STATUSES else r
                    for r in results
                ]
        if results is None:
            results = self._run_concurrently(plan)
        return self._assemble(patient_id, results)

    def _run_batch(self, plan: list[Search]) -> list[SearchResult] | None:
        """All searches in one batch; None when the server refuses batch."""
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": search.relative_url()}} for search in plan
            ],
        }
        try:
            answer = self.http.request("POST", "", json=bundle).body
        except AuthenticationError:
            raise
        except FhirServerError:
            return None
        entries = answer.get("entry")
        if (
            answer.get("resourceType") != "Bundle"
            or answer.get("type") != "batch-response"
            or not isinstance(entries, list)
            or len(entries) != len(plan)
        ):
            return None
        results = []
        for search, entry in zip(plan, entries, strict=True):
            entry = entry if isinstance(entry, dict) else {}
            response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
            status = _status_of((response or {}).get("status"))
            result = SearchResult(search)
            if status in (401, 403):
                raise AuthenticationError(
                    f"{self.http.origin} denied access to {search.category} (HTTP {status})",
                    status=status,
                )
            if not 200 <= status < 300:
                result.error = ServerResponseError("batch entry failed", status=status)
                result.failure = _reason(result.error)
            else:
                self._collect(result, entry.get("resource"))
            results.append(result)
        return results

    def _run_concurrently(self, plan: list[Search]) -> list[SearchResult]:
        workers = max(1, self.settings.search_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-search") as pool:
            results = list(pool.map(self._run_one, plan))
        for result in results:
            if isinstance(result.error, AuthenticationError):
                raise result.error
        return results

    def _run_one(self, search: Search) -> SearchResult:
        result = SearchResult(search)
        try:
            first = self.http.get_json(search.resource_type, dict(search.params) or None)
        except FhirServerError as exc:
            result.error = exc
            result.failure = _reason(exc)
            return result
        self._collect(result, first)
        return result

    def _collect(self, result: SearchResult, first: Any) -> None:
        """Read a search answer and its next pages into ``result`` (a read answer is one resource)."""
        search = result.search
        if search.category == "Patient":
            if isinstance(first, dict) and first.get("resourceType") == "Patient":
                result.entries.append((first, None))
            else:
                result.error = NotFhirResponseError("not a Patient")
                result.failure = "the server's answer was not a Patient resource"
            return
        settings = self.settings
        seen: set[str] = set()
        page: Any = first
        pages = 0
        name = search.label or search.category
        while True:
            if not isinstance(page, dict) or page.get("resourceType") != "Bundle":
                result.failure = "the server's answer was not a search Bundle"
                result.error = NotFhirResponseError("not a Bundle")
                return
            entries, problem = search_bundle_entries(page)
            if problem:
                result.failure = f"the server sent a search Bundle that cannot be read ({problem})"
                result.error = NotFhirResponseError("a Bundle that cannot be read")
                return
            pages += 1
            for link in _links(page, "self"):
                seen.add(link)
            for entry in entries:
                search_info = entry.get("search")
                if isinstance(search_info, dict) and search_info.get("mode") == "outcome":
                    continue
                full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
                result.entries.append((entry["resource"], full_url))
            next_url = next(iter(_links(page, "next")), None)
            if not next_url:
                return
            if next_url in seen:
                result.incomplete = (
                    f"the server's next link repeats a page; stopped after {pages} pages"
                )
                result.warnings.append(f"{name}: {result.incomplete}")
                return
            if len(result.entries) >= settings.max_resources or pages >= settings.max_pages:
                result.incomplete = (
                    f"truncated after {pages} pages / {len(result.entries)} resources "
                    f"(limits: {settings.max_pages} pages, {settings.max_resources} resources)"
                )
                result.warnings.append(
                    f"{name}: {result.incomplete}; more data exists, so its absence is not conclusive"
                )
                return
            absolute = self.http.resolve(next_url)
            if not self.http.same_origin(absolute):
                result.incomplete = "the next page is on another server and was not followed"
                result.warnings.append(f"{name}: {result.incomplete}; the results are incomplete")
                return
            seen.add(next_url)
            try:
                page = self.http.get_json(absolute)
            except AuthenticationError:
                raise
            except FhirServerError as exc:
                result.error = exc
                result.failure = f"paging failed: {_reason(exc)}"
                return

    def _assemble(self, patient_id: str, results: list[SearchResult]) -> PatientRecord:
        record = PatientRecord()
        patient_result = results[0]
        if patient_result.failure:
            error = patient_result.error
            if error is not None and error.status in (404, 410):
                raise PatientNotFoundError(
                    f"Patient/{patient_id} was not found on {self.http.origin}"
                )
            if isinstance(error, FhirServerError) and not isinstance(error, NotFhirResponseError):
                raise error
            raise NotFhirResponseError(
                f"{self.http.origin}: the Patient read did not return a Patient resource"
            )
        failed: dict[str, str] = {}
        for result in results:
            record.warnings.extend(result.warnings)
            if result.failure:
                if result.search.optional:
                    record.warnings.append(
                        f"{result.search.label or result.search.category}: {result.failure}"
                    )
                else:
                    failed.setdefault(result.search.category, result.failure)
                continue
            for resource, full_url in result.entries:
                record.add(resource, full_url=full_url)
            if result.incomplete and not result.search.optional:
                failed.setdefault(result.search.category, f"incomplete: {result.incomplete}")
        self._resolve_medications(record)
        for category in CATEGORIES:
            if category in failed:
                record.mark_failed(category, failed[category])
            else:
                record.mark_obtained(category)
        return record

    def _resolve_medications(self, record: PatientRecord) -> None:
        """Read the Medications that medication resources reference and the record lacks."""
        wanted = record.unresolved_medication_references()
        readable = [ref for ref in wanted if self.http.same_origin(self.http.resolve(ref))]
        if not readable:
            if wanted:
                record.warnings.append(
                    f"{len(wanted)} referenced Medication resources are on other servers and were "
                    "not read"
                )
            return
        workers = max(1, min(self.settings.search_concurrency, len(readable)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-medication") as pool:
            answers = list(pool.map(self._read_medication, readable))
        lost = len(wanted) - len(readable)
        for answer in answers:
            if isinstance(answer, AuthenticationError):
                raise answer
            if isinstance(answer, dict):
                record.add(answer)
            else:
                lost += 1
        if lost:
            record.warnings.append(f"{lost} referenced Medication resources could not be read")

    def _read_medication(self, ref: str) -> Resource | FhirServerError | None:
        try:
            body = self.http.get_json(ref)
        except FhirServerError as exc:
            return exc
        return body if body.get("resourceType") == "Medication" else None


def _links(bundle: Mapping[str, Any], relation: str) -> Iterable[str]:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            if isinstance(url, str) and url:
                yield url


def _check_id(patient_id: str) -> str:
    """``123`` or ``Patient/123`` -> ``123``; anything that is not a FHIR id is refused."""
    value = (patient_id or "").strip()
    if value.startswith("Patient/"):
        value = value[len("Patient/") :]
    if not _FHIR_ID.match(value):
        raise InputError(
            "a patient id must be a FHIR id (1-64 letters, digits, '-' or '.'), "
            "optionally written Patient/<id>"
        )
    return value
