"""FhirClient: one patient's record from a FHIR R4 server, in as few round trips as it can.

``fetch_patient_record(patient_id)`` reads the Patient and runs the searches of
:mod:`fhir_trial.searches` (the same queries the CDS Hooks service publishes as prefetch
templates), each with ``_count`` = ``Settings.search_page_size`` (200) and the patient
type-qualified (``patient=Patient/<id>``: some servers do not match a bare id):

====================  =========================================================================
Patient               ``Patient/<id>`` (a read)
Condition             ``Condition?patient=Patient/<id>``
Observation           ``Observation?patient=Patient/<id>&combo-code=<system|code,...>`` (the code or a
                      component's code), for results and for disease activity scores, each split
                      over several searches when its codes would make the query longer than
                      ``Settings.max_search_query_chars``; plus ``value-concept`` and
                      ``component-value-concept`` searches for NYHA class findings (optional: a
                      server that cannot run them only causes a warning)
Medication*           ``MedicationStatement|Request|Administration|Dispense?patient=Patient/<id>``
AllergyIntolerance    ``AllergyIntolerance?patient=Patient/<id>``
ResearchSubject       ``ResearchSubject?individual=Patient/<id>``
Consent               ``Consent?patient=Patient/<id>``
====================  =========================================================================

The server's CapabilityStatement (``GET [base]/metadata``) is read first. All the searches then go
in one ``batch`` Bundle (``POST [base]``), unless the CapabilityStatement lists system interactions
without ``batch``/``transaction``; a server that refuses batch is remembered and searched with
concurrent GETs instead (``Settings.search_concurrency`` threads). Medications referenced by
``medicationReference`` and ResearchStudies referenced by ``ResearchSubject.study`` that are not in
the results are then read (a study that cannot be read marks ``ResearchStudy`` failed: the
criterion cannot tell whether it is this study).

``combo-code``: when the CapabilityStatement lists Observation search parameters without it, or a
``combo-code`` search answers 400/422/501, the search runs again with ``code`` and the Observation
part ``Observation.components`` is marked failed (values sent only inside panels were not seen),
with a warning. A failed NYHA search (``value-concept``) marks ``Observation.nyha`` failed.

Limits: one :class:`~fhir_trial.deadline.Deadline` per screening (``Settings.fhir_deadline_s``
seconds and ``Settings.fhir_max_requests`` requests) bounds hangs, trickled bodies and endless
paging; a search cut off by it fails its category with a reason naming the limit.

Wrong base URL: when the Patient read answers 404 and ``[base]/metadata`` held no
CapabilityStatement, the error says the URL is not a FHIR server, not that the patient is missing.

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

from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.config import Settings
from fhir_trial.deadline import Deadline
from fhir_trial.elements import child, objects
from fhir_trial.errors import (
    AuthenticationError,
    FhirServerError,
    InputError,
    NotFhirResponseError,
    PatientNotFoundError,
    ScreeningLimitError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.fhir_http import RETRY_STATUSES, FhirHttp
from fhir_trial.record import (
    CATEGORIES,
    NYHA_FINDINGS,
    OBSERVATION_COMPONENTS,
    PatientRecord,
)
from fhir_trial.searches import (
    NO_WORDS_SEARCH_WARNING,
    UNSUPPORTED_SEARCH_STATUSES,
    PlannedSearch,
    plan_searches,
)
from fhir_trial.sources._common import search_bundle_entries
from fhir_trial.terminology import Terminology, load_terminology

Resource = dict[str, Any]

PAGE_SIZE = 200  # the default of Settings.search_page_size
# Answers that mean "this server cannot run combo-code" (HAPI and most servers: 400).

NO_COMPONENTS_WARNING = (
    "this server cannot search inside panels (combo-code); values sent only as panel "
    "components were not seen"
)
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Search:
    """One query of a category: ``resource_type?params``; ``optional`` ones only warn on failure."""

    category: str
    resource_type: str
    params: tuple[tuple[str, str], ...]
    optional: bool = False
    label: str = ""
    planned: PlannedSearch | None = field(default=None, compare=False)

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
    fell_back: bool = False  # a combo-code search the server refused, run with code instead


def _status_of(text: Any) -> int:
    """``"404 Not Found"`` -> 404 (0 when unreadable)."""
    match = re.match(r"\s*(\d{3})", str(text or ""))
    return int(match.group(1)) if match else 0


def _refused_words_search(result: SearchResult) -> bool:
    """A ``:text`` search the server refused as unsupported: a warning, not lost data.

    Not every server indexes code text; an assessment named only in words is a rare shape, and
    failing the NYHA part on such servers would make exc-heart-failure unknown for everyone.
    """
    planned = result.search.planned
    return (
        planned is not None
        and planned.searches_words
        and result.error is not None
        and result.error.status in UNSUPPORTED_SEARCH_STATUSES
    )


def _reason(error: FhirServerError) -> str:
    """A short, PHI-free reason for a failed search."""
    if isinstance(error, ScreeningLimitError):
        return error.message.rpartition(": ")[2] or "the overall limit of the screening was reached"
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

    def searches(self, patient_id: str, *, combo_code: bool = True) -> list[Search]:
        """Every query for one patient (:func:`fhir_trial.searches.plan_searches`), Patient first.

        ``combo_code=False``: Observation searches by ``code`` (a server without combo-code).
        """
        plan = []
        for planned in plan_searches(self.terminology, self.settings.max_search_query_chars):
            if planned.category == "Patient":
                plan.append(Search("Patient", planned.relative_url(patient_id), ()))
                continue
            if not combo_code:
                planned = planned.code_fallback()
            plan.append(self._search_for(planned, patient_id))
        return plan

    def _search_for(self, planned: PlannedSearch, patient_id: str) -> Search:
        return Search(
            planned.category,
            planned.resource_type,
            planned.params(patient_id, self.settings.search_page_size or PAGE_SIZE),
            optional=planned.optional,
            label=planned.label,
            planned=planned,
        )

    # --------------------------------------------------------------------------- fetching
    def fetch_patient_record(self, patient_id: str) -> PatientRecord:
        """Read one patient's data into a :class:`PatientRecord` (see the module docstring)."""
        patient_id = _check_id(patient_id)
        settings = self.settings
        deadline = Deadline(
            settings.fhir_deadline_s,
            limit="fhir_deadline_s",
            max_requests=settings.fhir_max_requests,
            requests_limit="fhir_max_requests",
        )
        previous, self.http.deadline = self.http.deadline, deadline
        try:
            capabilities = self._capabilities()
            combo_code = _supports_combo_code(capabilities)
            if self.batch_supported is None and _refuses_batch(capabilities):
                self.batch_supported = False
            plan = self.searches(patient_id, combo_code=combo_code is not False)
            results = self._run(plan)
            results = self._fall_back_to_code(results, patient_id)
            record = self._assemble(patient_id, results, capabilities)
            if combo_code is False:
                record.mark_failed(
                    OBSERVATION_COMPONENTS,
                    "the server's CapabilityStatement does not list combo-code for Observation",
                )
                record.warnings.append(NO_COMPONENTS_WARNING)
            return record
        finally:
            self.http.deadline = previous

    def _capabilities(self) -> dict[str, Any] | None:
        """The server's CapabilityStatement, or None when ``[base]/metadata`` holds none."""
        try:
            body = self.http.get_json("metadata")
        except (AuthenticationError, ScreeningLimitError):
            raise
        except FhirServerError:
            return None
        return body if body.get("resourceType") == "CapabilityStatement" else None

    def _run(self, plan: list[Search]) -> list[SearchResult]:
        """Run a plan: one batch when the server takes it, else concurrent GETs."""
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
        return results

    def _fall_back_to_code(
        self, results: list[SearchResult], patient_id: str
    ) -> list[SearchResult]:
        """combo-code searches the server refused, run again with ``code``."""
        refused = [
            index
            for index, result in enumerate(results)
            if result.search.planned is not None
            and result.search.planned.uses_combo_code
            and result.error is not None
            and result.error.status in UNSUPPORTED_SEARCH_STATUSES
        ]
        if not refused:
            return results
        retry = [
            self._search_for(_planned(results[i]).code_fallback(), patient_id) for i in refused
        ]
        again = self._run(retry)
        for index, result in zip(refused, again, strict=True):
            result.fell_back = True
            results[index] = result
        return results

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
        except (AuthenticationError, ScreeningLimitError):
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
            elif (
                isinstance(entry.get("resource"), dict)
                and entry["resource"].get("resourceType") == "OperationOutcome"
                and search.category != "Patient"
            ):
                # An OperationOutcome where a search Bundle belongs: the search failed.
                result.error = ServerResponseError("batch entry answered an OperationOutcome")
                result.failure = "the server answered with an OperationOutcome instead of results"
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
        if (
            isinstance(first, dict)
            and first.get("resourceType") == "OperationOutcome"
            and search.category != "Patient"
        ):
            result.error = ServerResponseError("answered an OperationOutcome")
            result.failure = "the server answered with an OperationOutcome instead of results"
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

    def _assemble(
        self,
        patient_id: str,
        results: list[SearchResult],
        capabilities: Mapping[str, Any] | None = None,
    ) -> PatientRecord:
        record = PatientRecord()
        patient_result = results[0]
        if patient_result.failure:
            error = patient_result.error
            if error is not None and error.status in (404, 410):
                if capabilities is None:
                    raise NotFhirResponseError(
                        f"{self.http.origin}: not a FHIR server at this URL (no CapabilityStatement "
                        "at [base]/metadata, and Patient reads answer 404); check the base URL"
                    )
                raise PatientNotFoundError(
                    f"Patient/{patient_id} was not found on {self.http.origin}"
                )
            if isinstance(error, FhirServerError) and not isinstance(error, NotFhirResponseError):
                raise error
            raise NotFhirResponseError(
                f"{self.http.origin}: the Patient read did not return a Patient resource"
            )
        failed: dict[str, str] = {}
        fell_back = False
        for result in results:
            record.warnings.extend(result.warnings)
            fell_back = fell_back or result.fell_back
            fills = result.search.planned.spec.fills if result.search.planned else None
            if result.failure:
                name = result.search.label or result.search.category
                if _refused_words_search(result):
                    record.warnings.append(NO_WORDS_SEARCH_WARNING)
                    continue
                if fills:
                    failed.setdefault(fills, f"{name}: {result.failure}")
                if result.search.optional:
                    record.warnings.append(f"{name}: {result.failure}")
                else:
                    failed.setdefault(result.search.category, result.failure)
                continue
            for resource, full_url in result.entries:
                record.add(resource, full_url=full_url)
            if result.incomplete:
                target = fills if result.search.optional else result.search.category
                if target:
                    failed.setdefault(target, f"incomplete: {result.incomplete}")
        self._resolve_medications(record)
        self._resolve_studies(record, failed)
        for category in CATEGORIES:
            if category in failed:
                record.mark_failed(category, failed[category])
            else:
                record.mark_obtained(category)
        for part in (NYHA_FINDINGS, "ResearchStudy"):
            if part in failed:
                record.mark_failed(part, failed[part])
        if fell_back:
            record.mark_failed(
                OBSERVATION_COMPONENTS, "the server refused combo-code; searched by code instead"
            )
            record.warnings.append(NO_COMPONENTS_WARNING)
        return record

    def _resolve_medications(self, record: PatientRecord) -> None:
        """Read the Medications that medication resources reference and the record lacks."""
        wanted = record.unresolved_medication_references()
        answers, lost = self._read_all(wanted, "Medication")
        for answer in answers:
            record.add(answer)
        if lost:
            record.warnings.append(f"{lost} referenced Medication resources could not be read")

    def _resolve_studies(self, record: PatientRecord, failed: dict[str, str]) -> None:
        """Read the ResearchStudies that ResearchSubjects reference and the record lacks.

        The criterion compares their identifiers with NCT06010472 (a server may have given this
        study its own id); a study that cannot be read marks ``ResearchStudy`` failed.
        """
        wanted = unresolved_study_references(record)
        if not wanted:
            return
        answers, lost = self._read_all(wanted, "ResearchStudy")
        for answer in answers:
            record.add(answer)
        if lost:
            failed["ResearchStudy"] = (
                f"{lost} ResearchStudy resource(s) referenced by the patient's ResearchSubjects "
                "could not be read"
            )

    def _read_all(self, wanted: list[str], rtype: str) -> tuple[list[Resource], int]:
        """Read references to ``rtype`` on this server; returns (resources, how many were not)."""
        readable = [ref for ref in wanted if self.http.same_origin(self.http.resolve(ref))]
        if not readable:
            return [], len(wanted)
        workers = max(1, min(self.settings.search_concurrency, len(readable)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-read") as pool:
            answers = list(pool.map(lambda ref: self._read(ref, rtype), readable))
        found: list[Resource] = []
        for answer in answers:
            if isinstance(answer, AuthenticationError):
                raise answer
            if isinstance(answer, dict):
                found.append(answer)
        return found, len(wanted) - len(found)

    def _read(self, ref: str, rtype: str) -> Resource | FhirServerError | None:
        try:
            body = self.http.get_json(ref)
        except FhirServerError as exc:
            return exc
        return body if body.get("resourceType") == rtype else None


def unresolved_study_references(record: PatientRecord) -> list[str]:
    """``ResearchStudy/<id>`` references of ResearchSubjects that the record cannot resolve and
    that do not name the study by identifier (those need no read)."""
    wanted: list[str] = []
    for subject in record.resources("ResearchSubject"):
        study = subject.get("study")
        if isinstance(child(study, "identifier"), dict):
            continue
        reference = child(study, "reference")
        if not isinstance(reference, str) or "ResearchStudy/" not in reference:
            continue
        if reference.rstrip("/").lower().endswith(f"researchstudy/{STUDY_RESOURCE_ID}"):
            continue  # this study's own id: nothing to compare
        if record.resolve(reference, subject) is None and reference not in wanted:
            wanted.append(reference)
    return wanted


def _planned(result: SearchResult) -> PlannedSearch:
    assert result.search.planned is not None
    return result.search.planned


def _supports_combo_code(capabilities: Mapping[str, Any] | None) -> bool | None:
    """False when the CapabilityStatement lists Observation search parameters without combo-code;
    True when it lists it; None when it does not say."""
    if capabilities is None:
        return None
    for rest in objects(capabilities.get("rest")):
        for resource in objects(rest.get("resource")):
            if resource.get("type") != "Observation":
                continue
            names = {p.get("name") for p in objects(resource.get("searchParam"))}
            if not names:
                return None
            return "combo-code" in names
    return None


def _refuses_batch(capabilities: Mapping[str, Any] | None) -> bool:
    """True when the CapabilityStatement lists system interactions, none of them batch."""
    if capabilities is None:
        return False
    for rest in objects(capabilities.get("rest")):
        codes = {i.get("code") for i in objects(rest.get("interaction"))}
        if codes and not codes & {"batch", "transaction"}:
            return True
    return False


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
