"""PatientRecords from FHIR R4 Bundles (collection, searchset, transaction, batch, document).

A Bundle is complete by definition (CRITERIA.md, "Completeness"): every data category is marked
obtained, so a Condition that is not in the Bundle is absent, not unknown.

- ``urn:uuid`` fullUrls are kept so that references between entries resolve.
- A Bundle with several Patients needs the caller to choose one (``patient=``); the resources of the
  other patients are never mixed in. ``records_from_bundle`` yields one record per Patient.
- Resources whose ``resourceType`` is not a FHIR resource type are skipped with a warning.
- A bare Patient resource (not in a Bundle) is accepted: the record holds only that patient and only
  the ``Patient`` category is marked obtained (nothing says the rest is complete, so criteria that
  need other data are ``unknown``, never ``not-met``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_trial.errors import InputError, NotFhirError, NotJsonError, PatientSelectionError
from fhir_trial.json_input import JsonSyntaxError, parse_json
from fhir_trial.record import CATEGORIES, PatientRecord
from fhir_trial.sources._common import (
    is_known_type,
    is_patient_reference,
    patient_ref,
    patient_refs,
)

Resource = dict[str, Any]

BUNDLE_TYPES: tuple[str, ...] = ("collection", "searchset", "transaction", "batch", "document")


def read_json_file(path: str | Path) -> dict[str, Any]:
    """Read a file holding one FHIR resource as JSON.

    Raises :class:`InputError` when the file cannot be read, :class:`NotJsonError` when it is not
    JSON, :class:`NotFhirError` when it is JSON but not a FHIR resource (no ``resourceType``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = parse_json(raw)
    except JsonSyntaxError as exc:
        raise NotJsonError(f"{path} {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise NotFhirError(f"{path} is JSON but not a FHIR resource (no resourceType)")
    return data


@dataclass(slots=True)
class _Entry:
    resource: Resource
    full_url: str | None
    # Indexes into _Parsed.patients; None for none (most entries of a one-patient Bundle name it,
    # but a set per entry costs more than the rest of the entry).
    patients: set[int] | frozenset[int] | None = None
    other_patient: bool = False  # references a patient that is not in the Bundle


@dataclass
class _Parsed:
    """A Bundle split into Patients, per-patient entries and shared entries."""

    patients: list[_Entry]
    entries: list[_Entry]
    warnings: list[str]


def _check_bundle(bundle: Any) -> Mapping[str, Any]:
    if not isinstance(bundle, Mapping) or not isinstance(bundle.get("resourceType"), str):
        raise NotFhirError("the input is not a FHIR resource (no resourceType)")
    rtype = bundle["resourceType"]
    if rtype == "Patient":
        return bundle
    if rtype != "Bundle":
        raise NotFhirError(f"expected a Bundle (or a single Patient), got a {rtype} resource")
    btype = bundle.get("type")
    if btype not in BUNDLE_TYPES:
        raise NotFhirError(
            f"Bundle type {btype!r} is not supported; expected one of: {', '.join(BUNDLE_TYPES)}"
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise NotFhirError("Bundle.entry is not a list")
    return bundle


def _parse(bundle: Mapping[str, Any]) -> _Parsed:
    """One pass over the entries: find the Patients, then assign every entry to its patient(s)."""
    if bundle.get("resourceType") == "Patient":
        return _Parsed([_Entry(dict(bundle), None)], [], [])
    warnings: list[str] = []
    unknown: Counter[str] = Counter()
    malformed = 0
    patients: list[_Entry] = []
    others: list[_Entry] = []
    for raw in bundle.get("entry", []):
        if not isinstance(raw, dict):
            malformed += 1
            continue
        request = raw.get("request")
        if request and isinstance(request, dict) and request.get("method") == "DELETE":
            continue
        resource = raw.get("resource")
        if resource is None:
            continue
        if not isinstance(resource, dict):
            malformed += 1
            continue
        rtype = resource.get("resourceType")
        if not is_known_type(rtype):
            unknown[str(rtype) if rtype is not None else "(none)"] += 1
            continue
        search = raw.get("search")
        if search is not None and isinstance(search, dict) and search.get("mode") == "outcome":
            continue  # an OperationOutcome about the search, not data
        full_url = raw.get("fullUrl")
        entry = _Entry(resource, full_url if isinstance(full_url, str) else None)
        (patients if rtype == "Patient" else others).append(entry)
    for rtype, count in sorted(unknown.items()):
        warnings.append(f"skipped {count} Bundle entries with unknown resourceType {rtype!r}")
    if malformed:
        warnings.append(f"skipped {malformed} malformed Bundle entries (not a JSON object)")

    keys: dict[str, int] = {}
    for index, entry in enumerate(patients):
        for key in _patient_keys(entry):
            keys.setdefault(key, index)
    only = frozenset({0}) if len(patients) == 1 else None
    for entry in others:
        if only is not None and _names_the_patient(entry.resource, keys):
            # The one Patient's resource whatever else it references: other patients it may name
            # would only set other_patient, which no longer matters (see _build).
            entry.patients = only
            continue
        for ref in patient_refs(entry.resource):
            found = keys.get(ref)
            if found is not None:
                entry.patients = {found} if entry.patients is None else {*entry.patients, found}
            elif is_patient_reference(ref):
                entry.other_patient = True
    return _Parsed(patients, others, warnings)


def _names_the_patient(resource: Mapping[str, Any], keys: Mapping[str, int]) -> bool:
    """Whether ``subject`` or ``patient`` names a Patient of ``keys``: a shortcut of
    :func:`patient_refs` for the usual resource, which names its patient there."""
    holder = resource.get("subject") or resource.get("patient")
    ref = holder.get("reference") if type(holder) is dict else None
    return type(ref) is str and patient_ref(ref) in keys


def _patient_keys(entry: _Entry) -> list[str]:
    """Every spelling under which other entries may refer to this Patient."""
    keys = []
    rid = entry.resource.get("id")
    if isinstance(rid, str) and rid:
        keys.append(f"Patient/{rid}")
    if entry.full_url:
        keys.append(entry.full_url)
        if not entry.full_url.startswith("urn:"):
            tail = "/".join(entry.full_url.rstrip("/").split("/")[-2:])
            if tail.startswith("Patient/"):
                keys.append(tail)
    return keys


def _label(entry: _Entry) -> str:
    rid = entry.resource.get("id")
    if isinstance(rid, str) and rid:
        return f"Patient/{rid}"
    return entry.full_url or "Patient (no id)"


def patients_in_bundle(bundle: Mapping[str, Any]) -> list[str]:
    """The Patients of a Bundle as ``Patient/<id>`` (the fullUrl for a Patient without id)."""
    parsed = _parse(_check_bundle(bundle))
    return [_label(entry) for entry in parsed.patients]


def _build(parsed: _Parsed, index: int, complete: bool) -> PatientRecord:
    record = PatientRecord()
    record.warnings.extend(parsed.warnings)
    patient = parsed.patients[index]
    record.add(patient.resource, full_url=patient.full_url)
    add = record.add
    for entry in parsed.entries:
        owners = entry.patients
        if (index in owners) if owners is not None else not entry.other_patient:
            add(entry.resource, entry.full_url)
    if complete:
        record.mark_obtained(*CATEGORIES)
    else:
        record.mark_obtained("Patient")
    return record


def _choose(parsed: _Parsed, patient: str | None) -> int:
    labels = [_label(entry) for entry in parsed.patients]
    if not parsed.patients:
        raise PatientSelectionError("the Bundle holds no Patient resource")
    if patient is None:
        if len(parsed.patients) == 1:
            return 0
        raise PatientSelectionError(
            f"the Bundle holds {len(labels)} Patients ({', '.join(labels)}); "
            "choose one with --patient",
            candidates=labels,
        )
    wanted = {patient, f"Patient/{patient}"}
    for index, entry in enumerate(parsed.patients):
        if wanted & set(_patient_keys(entry)) or _label(entry) in wanted:
            return index
    raise PatientSelectionError(
        f"{patient} is not in the Bundle; its Patients are: {', '.join(labels)}",
        candidates=labels,
    )


def record_from_bundle(bundle: Mapping[str, Any], patient: str | None = None) -> PatientRecord:
    """The record of one patient of a Bundle (or of a bare Patient resource).

    ``patient`` may be ``<id>``, ``Patient/<id>`` or the Patient entry's fullUrl. Raises
    :class:`PatientSelectionError` when the Bundle has no Patient, when it has several and none is
    chosen, or when the chosen one is not there; :class:`NotFhirError` when it is not a Bundle.
    """
    checked = _check_bundle(bundle)
    parsed = _parse(checked)
    return _build(parsed, _choose(parsed, patient), complete=checked["resourceType"] == "Bundle")


def records_from_bundle(bundle: Mapping[str, Any]) -> Iterator[PatientRecord]:
    """One record per Patient of the Bundle (none for a Bundle without Patients)."""
    checked = _check_bundle(bundle)
    parsed = _parse(checked)
    complete = checked["resourceType"] == "Bundle"
    for index in range(len(parsed.patients)):
        yield _build(parsed, index, complete)
