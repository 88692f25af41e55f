"""PatientRecord reads Observation components as results of their own (CRITERIA.md, Real-world
records): indexed by the component's code, named by the parent, never counted as resources."""

from __future__ import annotations

from typing import Any

from fhir_trial.config import Settings
from fhir_trial.observations import observation_time, observed_on
from fhir_trial.record import PatientRecord, is_component
from fhir_trial.terminology import load_terminology

LOINC = "http://loinc.org"


def _panel() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "cbc",
        "status": "preliminary",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-10T08:00:00Z",
        "issued": "2026-11-10T09:00:00Z",
        "interpretation": [{"text": "panel flag"}],
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "component": [
            {
                "id": "c1",
                "code": {"coding": [{"system": LOINC, "code": "718-7"}]},
                "valueQuantity": {"value": 11.5, "unit": "g/dL"},
                "referenceRange": [{"low": {"value": 12, "unit": "g/dL"}}],
            },
            {"valueQuantity": {"value": 3}},  # no code: not a result of anything
            "not a component",
        ],
    }


def test_component_is_found_by_its_code_with_the_parents_context() -> None:
    terminology = load_terminology(Settings().resources_dir)
    record = PatientRecord()
    record.add(_panel())
    (found,) = record.with_code("Observation", terminology["hemoglobin"])
    assert is_component(found)
    assert record.reference_to(found) == "Observation/cbc"
    assert found["status"] == "preliminary"
    assert found["subject"] == {"reference": "Patient/p1"}
    assert found["valueQuantity"]["value"] == 11.5
    assert found["referenceRange"][0]["low"]["value"] == 12
    # The component's own interpretation (none), not the panel's; not the component's id.
    assert "interpretation" not in found
    assert found["id"] == "cbc"
    assert observation_time(found) == observation_time(_panel())
    assert observed_on(found) == "2026-11-10 (a component of Observation/cbc)"


def test_components_are_not_resources_of_the_record() -> None:
    record = PatientRecord()
    record.add(_panel())
    record.add(_panel())  # the same resource again: kept once, its components too
    assert record.count("Observation") == 1
    assert [o["id"] for o in record.resources("Observation")] == ["cbc"]
    assert len(record.component_results()) == 1
    assert len(record.observation_results()) == 2
    assert record.resolve("Observation/cbc") is record.resources("Observation")[0]


def test_a_panel_and_its_component_are_one_piece_of_evidence() -> None:
    import datetime as dt
    from pathlib import Path

    from clinical_cases import load_case

    from fhir_trial.evaluate import evaluate

    case = load_case(
        Path(__file__).parent
        / "cases/inc-lvef/own-value-and-component-disagree-same-day-needs-review.yaml"
    )
    report = evaluate(case.record(), Settings(as_of=dt.date(2026, 11, 26)))
    result = report.criterion("inc-lvef")
    assert result.status == "needs-review"
    assert result.evidence == ("Observation/observation-1",)
    assert "a component of Observation/observation-1" in result.reason
