"""Clinical test cases written as data: one YAML file per situation under ``tests/cases/<criterion>/``.

A case reads like a chart extract a clinician can check:

    title: ANA 1:160 by immunofluorescence meets the ANA criterion
    as_of: 2026-11-26            # screening date (default 2026-11-26)
    settings: {}                 # optional Settings overrides (e.g. infusion_date)
    patient: {gender: female, birthDate: "1990-06-15"}   # optional; this is the default
    failed: {Observation: "server timed out"}            # optional categories that failed to load
    resources:                   # FHIR R4 resources; ids and subject references are filled in
      - resourceType: Observation
        status: final
        code: {coding: [{system: "http://loinc.org", code: "5048-4"}]}
        valueString: "1:160"
        effectiveDateTime: "2025-01-10"
    expect:                      # criterion id -> status; `verdict` optional
      inc-ana: met
      inc-autoantibody: met
    reason_contains:             # optional: words the reason must contain
      inc-ana: "1:160"           # (key `verdict`: the report's top-level reason)
    deceased: "2026-11-12"       # optional: the report's top-level `deceased` (a date text, true,
                                 # or false: the key must be absent, the patient was alive)
    warning_contains: "..."      # optional: words one of the report's warnings must contain

Every case is a complete record: all categories count as obtained unless listed in ``failed``.
The same cases feed the CQL oracle test, through :func:`case_bundle`.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fhir_trial.config import Settings
from fhir_trial.record import CATEGORIES, PatientRecord

CASES_DIR = Path(__file__).parent / "cases"
PATIENT_ID = "case"
DEFAULT_AS_OF = "2026-11-26"
DEFAULT_PATIENT = {"gender": "female", "birthDate": "1990-06-15"}

# Where each resource type points at its patient.
_SUBJECT_ELEMENT = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationStatement": "subject",
    "MedicationRequest": "subject",
    "MedicationAdministration": "subject",
    "MedicationDispense": "subject",
    "AllergyIntolerance": "patient",
    "ResearchSubject": "individual",
    "Consent": "patient",
    "Procedure": "subject",
}


@dataclass
class ClinicalCase:
    """One parsed case file."""

    path: Path
    title: str
    as_of: dt.date
    settings: dict[str, Any]
    resources: list[dict[str, Any]]
    failed: dict[str, str]
    expect: dict[str, str]
    reason_contains: dict[str, str] = field(default_factory=dict)
    deceased: str | bool | None = None  # None: not checked
    warning_contains: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.stem}"

    def settings_object(self) -> Settings:
        values = dict(self.settings)
        for key in ("as_of", "infusion_date"):
            if isinstance(values.get(key), str):
                values[key] = dt.date.fromisoformat(values[key])
        return Settings(as_of=self.as_of, **values)

    def record(self) -> PatientRecord:
        record = PatientRecord()
        for resource in self.resources:
            record.add(copy.deepcopy(resource))
        record.mark_obtained(*CATEGORIES)
        for category, why in self.failed.items():
            record.mark_failed(category, why)
        return record


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _stringify_dates(node: Any) -> Any:
    """YAML turns 2025-01-10 into a date; FHIR wants the string."""
    if isinstance(node, dict):
        return {k: _stringify_dates(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_stringify_dates(v) for v in node]
    if isinstance(node, (dt.date, dt.datetime)):
        return node.isoformat()
    return node


def load_case(path: Path) -> ClinicalCase:
    """Parse one case file, filling in ids, the Patient and subject references."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    resources = [_stringify_dates(r) for r in data.get("resources") or []]
    patient_fields = data.get("patient", DEFAULT_PATIENT)
    if patient_fields is not None and not any(
        r.get("resourceType") == "Patient" for r in resources
    ):
        patient = {"resourceType": "Patient", "id": PATIENT_ID, **_stringify_dates(patient_fields)}
        resources.insert(0, patient)
    counters: dict[str, int] = {}
    for resource in resources:
        rtype = resource["resourceType"]
        counters[rtype] = counters.get(rtype, 0) + 1
        resource.setdefault("id", f"{rtype.lower()}-{counters[rtype]}")
        element = _SUBJECT_ELEMENT.get(rtype)
        if element and element not in resource:
            resource[element] = {"reference": f"Patient/{PATIENT_ID}"}
    return ClinicalCase(
        path=path,
        title=str(data.get("title", path.stem)),
        as_of=_as_date(data.get("as_of", DEFAULT_AS_OF)),
        settings=_stringify_dates(data.get("settings") or {}),
        resources=resources,
        failed=dict(data.get("failed") or {}),
        expect={k: str(v) for k, v in (data.get("expect") or {}).items()},
        reason_contains=dict(data.get("reason_contains") or {}),
        deceased=_stringify_dates(data.get("deceased")),
        warning_contains=data.get("warning_contains"),
    )


def all_cases() -> list[ClinicalCase]:
    """Every case under tests/cases, sorted by path."""
    return [load_case(p) for p in sorted(CASES_DIR.glob("*/*.yaml"))]


def case_bundle(case: ClinicalCase) -> dict[str, Any]:
    """The case's resources as a FHIR collection Bundle (for the CQL engine and the CLI)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": copy.deepcopy(r)}
            for r in case.resources
        ],
    }
