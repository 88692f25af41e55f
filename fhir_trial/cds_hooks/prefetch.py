"""CDS Hooks prefetch -> PatientRecord.

For each prefetch key the service asked for (see :mod:`.discovery`):

- key absent: the client chose not to (or could not) prefetch it -> the service fetches that
  category from ``fhirServer`` itself (CDS Hooks 2.0, "Prefetch Template");
- ``null``: the client has no data for it -> the category is marked failed (its criteria become
  ``unknown``, never ``not-met``: CRITERIA.md absence rule 1);
- an OperationOutcome: the client hit an error -> failed, with the outcome's reason;
- a searchset (or any) Bundle, or a single resource: its resources are added and the category is
  obtained. A Bundle that still has a ``next`` link is incomplete: the next URL is handed back so the
  service can continue paging on the client's FHIR server, and the category counts as failed if it
  cannot.

Resources that plainly belong to another patient are dropped (with a warning), so a client that
mixes patients cannot make the service screen the wrong person. Keys the service never asked for
are read too, but they never mark a category obtained: only a Patient with the right id is taken
from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_trial.cds_hooks.discovery import KEY_TO_CATEGORY, prefetch_key
from fhir_trial.record import CATEGORIES, PatientRecord
from fhir_trial.sources._common import patient_refs

__all__ = ["PrefetchResult", "apply_prefetch", "bundle_resources", "next_link", "outcome_reason"]

_MAX_REASON = 200


@dataclass
class PrefetchResult:
    """What prefetch left to do: categories to fetch, and next pages of incomplete Bundles."""

    to_fetch: list[str] = field(default_factory=list)
    next_pages: dict[str, str] = field(default_factory=dict)


def apply_prefetch(
    record: PatientRecord, prefetch: Mapping[str, Any] | None, patient_id: str
) -> PrefetchResult:
    """Add the prefetched resources to ``record``; return what is still missing."""
    prefetch = prefetch or {}
    result = PrefetchResult()
    for category in CATEGORIES:
        key = prefetch_key(category)
        if key not in prefetch:
            result.to_fetch.append(category)
            continue
        value = prefetch[key]
        if value is None:
            record.mark_failed(category, f"the EHR sent no data for prefetch key '{key}' (null)")
            continue
        if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
            record.mark_failed(category, f"prefetch key '{key}' did not hold a FHIR resource")
            continue
        rtype = value["resourceType"]
        if rtype == "OperationOutcome":
            record.mark_failed(
                category, f"the EHR could not prefetch '{key}': {outcome_reason(value)}"
            )
            continue
        if rtype == "Bundle":
            _add(record, bundle_resources(value), patient_id, key)
            nxt = next_link(value)
            if nxt:
                result.next_pages[category] = nxt
                record.mark_failed(category, f"prefetch '{key}' was only the first page of results")
            else:
                record.mark_obtained(category)
            continue
        if category == "Patient" and rtype == "Patient" and not _is_our_patient(value, patient_id):
            record.mark_failed(category, "the prefetched Patient is not the patient in context")
            continue
        _add(record, [dict(value)], patient_id, key)
        record.mark_obtained(category)

    for key, value in prefetch.items():
        if key in KEY_TO_CATEGORY or not isinstance(value, Mapping):
            continue
        # A key this service never asked for: take only the patient in context from it.
        if (
            value.get("resourceType") == "Patient"
            and _is_our_patient(value, patient_id)
            and record.patient is None
        ):
            record.add(dict(value))
            record.mark_obtained("Patient")
            if "Patient" in result.to_fetch:
                result.to_fetch.remove("Patient")
    return result


def bundle_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle's entries, without search outcomes (OperationOutcome entries)."""
    found: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        if resource["resourceType"] == "OperationOutcome":
            continue
        found.append(resource)
    return found


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The Bundle's ``next`` link URL, if any."""
    for link in bundle.get("link") or []:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


def outcome_reason(outcome: Mapping[str, Any]) -> str:
    """A short, one-line reason from an OperationOutcome (issue code and text)."""
    parts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (
            details.get("text") if isinstance(details, Mapping) else None
        )
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
