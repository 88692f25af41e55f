"""CDS Hooks prefetch -> PatientRecord.

The service asks only for what its criteria need (see :mod:`fhir_trial.searches`): the prefetch
templates of code- and value-filtered Observation searches may come back holding just the matching
resources, and that is complete for those keys. A data category may have several prefetch keys
(Observation has ``observation``, ``observationScores`` and the NYHA keys ``observationNyha``,
``observationNyhaParts``, ``observationNyhaAssessment`` and ``observationNyhaWords``, plus numbered
keys such as ``observation2`` when a code list is split);
their resources are merged (a resource in two of them is kept once) and the category counts as
obtained only when every one of its keys was. For each key of the search plan:

- key absent: the client chose not to (or could not) prefetch it -> the service runs the same query
  on ``fhirServer`` itself (CDS Hooks 2.0, "Prefetch Template");
- ``null``: the client has no data for it -> its whole category is marked failed (its criteria
  become ``unknown``, never ``not-met``: CRITERIA.md absence rule 1), and its other keys are not
  fetched. Two exceptions: a ``combo-code`` Observation key that is ``null`` (the EHR's server may
  not support combo-code) is left open, so the service fetches it itself, falling back to
  ``code``; and a NYHA key (``observationNyha...``) that is ``null`` or an OperationOutcome fails
  only the Observation part ``Observation.nyha`` (the criterion reading NYHA class findings),
  not every Observation criterion;
- a NYHA key absent or ``null`` (an EHR configured before the key existed, or whose server cannot
  run ``value-concept`` or ``code:text``): the service runs it on ``fhirServer``; without one, only
  the NYHA part fails, and for the words key (``code:text``, assessments named only in words) the
  record only says that they were not searched for;
- an OperationOutcome: the client hit an error -> failed, with the outcome's reason;
- a searchset (or any) Bundle, or a single resource: its resources are added. A Bundle that still
  has a ``next`` link is incomplete: the next URL is handed back so the service can continue paging
  on the client's FHIR server, and the category counts as failed if it cannot.

A category with keys still open (absent, or a next page to read) is marked failed with a provisional
reason until the service has fetched them. Resources that plainly belong to another patient are
dropped (with a warning), so a client that mixes patients cannot make the service screen the wrong
person. Keys the service never asked for are read too, but they never mark a category obtained: only
a Patient with the right id is taken from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_trial.elements import child, objects
from fhir_trial.record import PatientRecord
from fhir_trial.searches import NO_WORDS_SEARCH_WARNING, PlannedSearch
from fhir_trial.sources._common import patient_refs, search_bundle_entries

__all__ = [
    "NO_FHIR_SERVER",
    "PrefetchResult",
    "add_resources",
    "apply_prefetch",
    "bundle_resources",
    "next_link",
    "outcome_reason",
]

_MAX_REASON = 200
NO_FHIR_SERVER = "not in the prefetch, and no fhirServer was given"


@dataclass
class PrefetchResult:
    """What prefetch left open: searches to run, next pages to read, per category the open keys."""

    to_fetch: list[PlannedSearch] = field(default_factory=list)
    next_pages: dict[str, str] = field(default_factory=dict)  # prefetch key -> next page URL
    pending: dict[str, list[str]] = field(default_factory=dict)  # category -> open keys
    part_failures: dict[str, str] = field(default_factory=dict)  # Observation part -> why
    # Open keys that fill only an Observation part (the NYHA searches): unless the service fetches
    # them from fhirServer, only that part fails (part -> why), or, for the words search, the
    # record says what was not searched (:meth:`settle_without_server`).
    open_parts: dict[str, str] = field(default_factory=dict)
    words_open: bool = False

    def settle_without_server(self, record: PatientRecord) -> None:
        """What the open part keys mean when there is no fhirServer to fetch them from."""
        for part, why in self.open_parts.items():
            if part not in record.failed:
                record.mark_failed(part, why)
        if self.words_open:
            record.warnings.append(NO_WORDS_SEARCH_WARNING)

    def category_of(self, key: str) -> str:
        """The category an open key belongs to."""
        for category, keys in self.pending.items():
            if key in keys:
                return category
        raise KeyError(key)


def apply_prefetch(
    record: PatientRecord,
    prefetch: Mapping[str, Any] | None,
    patient_id: str,
    plan: Sequence[PlannedSearch],
) -> PrefetchResult:
    """Add the prefetched resources to ``record``; return what is still missing."""
    prefetch = prefetch or {}
    result = PrefetchResult()
    by_category: dict[str, list[PlannedSearch]] = {}
    for search in plan:
        by_category.setdefault(search.category, []).append(search)
    for category, searches in by_category.items():
        failure: str | None = None
        absent: list[PlannedSearch] = []
        nulled: list[str] = []
        paged: dict[str, str] = {}
        part_keys: list[PlannedSearch] = []
        for search in searches:
            key = search.key
            if search.spec.fills and prefetch.get(key) is None:
                # A NYHA key left out (an EHR configured before it existed, or unable to run it)
                # or null (its server may not support value-concept, combo-code or code:text): the
                # service runs it on fhirServer; without one, only its part is lost.
                part_keys.append(search)
                continue
            if key not in prefetch:
                absent.append(search)
                continue
            value = prefetch[key]
            if value is None and search.uses_combo_code:
                absent.append(search)  # fetched by the service, with the code fallback
                nulled.append(key)
                continue
            why = _unusable(value, key, category, patient_id)
            if why is not None and search.spec.fills:
                result.part_failures.setdefault(search.spec.fills, why)
                continue
            if why is not None:
                failure = failure or why
                continue
            if value["resourceType"] == "Bundle":
                resources, problem = bundle_resources(value)
                if problem:
                    failure = failure or (
                        f"prefetch key '{key}' held a Bundle that cannot be read: {problem}"
                    )
                    continue
                _add(record, resources, patient_id, key)
                nxt = next_link(value)
                if nxt:
                    paged[key] = nxt
                continue
            _add(record, [dict(value)], patient_id, key)
        if failure is not None:
            record.mark_failed(category, failure)
            continue
        for search in part_keys:
            result.to_fetch.append(search)
            result.pending.setdefault(category, []).append(search.key)
            if search.searches_words:
                result.words_open = True
            elif search.spec.fills:
                sent = "sent no data for" if search.key in prefetch else "did not send"
                why = (
                    f"the EHR {sent} prefetch key '{search.key}', and no fhirServer was given "
                    "to fetch it from"
                )
                result.open_parts.setdefault(search.spec.fills, why)
        if not absent and not paged:
            record.mark_obtained(category)
            continue
        result.to_fetch.extend(absent)
        result.next_pages.update(paged)
        result.pending.setdefault(category, []).extend([s.key for s in absent] + list(paged))
        if paged:
            key = next(iter(paged))
            record.mark_failed(category, f"prefetch '{key}' was only the first page of results")
        elif nulled:
            record.mark_failed(
                category,
                f"the EHR sent no data for prefetch key '{nulled[0]}' (null), and no fhirServer "
                "was given to fetch it from",
            )
        else:
            record.mark_failed(category, f"{NO_FHIR_SERVER} (prefetch key '{absent[0].key}')")
    for part, why in result.part_failures.items():
        record.mark_failed(part, why)

    asked = {search.key for search in plan}
    for key, value in prefetch.items():
        if key in asked or not isinstance(value, Mapping):
            continue
        # A key this service never asked for: take only the patient in context from it.
        if (
            value.get("resourceType") == "Patient"
            and _is_our_patient(value, patient_id)
            and record.patient is None
        ):
            record.add(dict(value))
            record.mark_obtained("Patient")
            if "Patient" in result.pending:
                keys = result.pending.pop("Patient")
                result.to_fetch = [s for s in result.to_fetch if s.key not in keys]
                for patient_key in keys:
                    result.next_pages.pop(patient_key, None)
    return result


def _unusable(value: Any, key: str, category: str, patient_id: str) -> str | None:
    """Why a prefetch value fails its category (None: it holds data)."""
    if value is None:
        return f"the EHR sent no data for prefetch key '{key}' (null)"
    if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
        return f"prefetch key '{key}' did not hold a FHIR resource"
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        return f"the EHR could not prefetch '{key}': {outcome_reason(value)}"
    if category == "Patient" and rtype == "Patient" and not _is_our_patient(value, patient_id):
        return "the prefetched Patient is not the patient in context"
    return None


def bundle_resources(bundle: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The resources of a search Bundle without search outcomes (OperationOutcome entries), or
    ``([], why)`` when the Bundle cannot be read (see ``search_bundle_entries``)."""
    entries, problem = search_bundle_entries(bundle)
    resources = [entry["resource"] for entry in entries]
    return [r for r in resources if r["resourceType"] != "OperationOutcome"], problem


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The Bundle's ``next`` link URL, if any."""
    for link in objects(bundle.get("link")):
        if link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


def outcome_reason(outcome: Mapping[str, Any]) -> str:
    """A short, one-line reason from an OperationOutcome (issue code and text)."""
    parts: list[str] = []
    for issue in objects(outcome.get("issue")):
        text = issue.get("diagnostics") or child(issue.get("details"), "text")
        code = issue.get("code")
        piece = " ".join(str(p) for p in (code, text) if isinstance(p, str) and p.strip())
        if piece:
            parts.append(" ".join(piece.split()))
    reason = "; ".join(parts) or "no reason given"
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


def add_resources(
    record: PatientRecord, resources: Iterable[dict[str, Any]], patient_id: str, source: str
) -> int:
    """Add resources that belong to the patient (or to nobody); returns how many were dropped."""
    return _add(record, resources, patient_id, source)


def _add(
    record: PatientRecord, resources: Iterable[dict[str, Any]], patient_id: str, source: str
) -> int:
    dropped = 0
    ours = f"Patient/{patient_id}"
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            if not _is_our_patient(resource, patient_id):
                dropped += 1
                continue
        elif _belongs_to_someone_else(resource, ours):
            dropped += 1
            continue
        record.add(resource)
    if dropped:
        record.warnings.append(
            f"{dropped} resource(s) in '{source}' belong to another patient and were ignored"
        )
    return dropped


def _is_our_patient(patient: Mapping[str, Any], patient_id: str) -> bool:
    rid = patient.get("id")
    return rid is None or str(rid) == patient_id


def _belongs_to_someone_else(resource: Mapping[str, Any], ours: str) -> bool:
    """Whether the resource points at a Patient, but never at ``ours`` (``Patient/<id>``)."""
    for name in ("subject", "patient"):  # where the patient usually is: decided at once
        value = resource.get(name)
        if isinstance(value, dict) and value.get("reference") == ours:
            return False
    other = False
    for ref in patient_refs(resource):
        if ref == ours:
            return False
        if ref.startswith("Patient/"):
            other = True
    return other
