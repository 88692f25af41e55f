"""The three renderings of a report: JSON shape, terminal text, FHIR (schema-valid)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fhir_trial.outputs import (
    report_bundle,
    report_guidance_response,
    report_research_subject,
    report_text,
)
from fhir_trial.report import CriterionResult, EligibilityReport


def _report(verdict: str = "potentially-eligible") -> EligibilityReport:
    return EligibilityReport(
        study="NCT06010472",
        patient="Patient/p1",
        as_of="2026-11-26",
        verdict=verdict,  # type: ignore[arg-type]
        criteria=(
            CriterionResult(
                "inc-age", "inclusion", "Incl 1", "met", "age 34 on 2026-11-26", ("Patient/p1",)
            ),
            CriterionResult(
                "inc-sledai",
                "inclusion",
                "Incl 4",
                "unknown",
                "no SLEDAI-2K score in the last 90 days",
                missing=("SLEDAI-2K total score within 90 days",),
            ),
            CriterionResult(
                "inc-ana",
                "inclusion",
                "Incl 7",
                "met",
                "ANA 1:160",
                ("Observation/o1",),
                part_of="inc-autoantibody",
            ),
        ),
        warnings=("Observation could not be obtained: timeout",),
    )


@lru_cache(maxsize=1)
def _schema_validator(schema_path: str) -> Any:
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    return jsonschema.Draft6Validator(schema)


def _schema_errors(shared_dir: Path, resource: dict[str, Any]) -> list[str]:
    validator = _schema_validator(str(shared_dir / "schemas" / "fhir.schema.json"))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(resource)]


def test_json_shape_matches_criteria_md() -> None:
    out = _report().to_json()
    assert list(out) == ["study", "patient", "asOf", "verdict", "criteria", "warnings"]
    first = out["criteria"][0]
    assert first == {
        "id": "inc-age",
        "kind": "inclusion",
        "ref": "Incl 1",
        "status": "met",
        "reason": "age 34 on 2026-11-26",
        "evidence": ["Patient/p1"],
        "missing": [],
    }
    assert out["criteria"][2]["partOf"] == "inc-autoantibody"
    assert "partOf" not in out["criteria"][1]


def test_text_is_a_table_with_verdict_and_missing_data() -> None:
    text = report_text(_report(), width=200)
    assert "POTENTIALLY-ELIGIBLE" in text
    assert "inc-sledai" in text and "unknown" in text
    assert "missing: SLEDAI-2K total score within 90 days" in text
    assert "[evidence: Observation/o1]" in text
    assert "warning: Observation could not be obtained" in text


@pytest.mark.parametrize(
    ("verdict", "status"),
    [("eligible", "eligible"), ("ineligible", "ineligible"), ("potentially-eligible", "candidate")],
)
def test_research_subject_status_follows_verdict(verdict: str, status: str) -> None:
    subject = report_research_subject(_report(verdict))
    assert subject["status"] == status
    assert subject["individual"] == {"reference": "Patient/p1"}


def test_guidance_response_carries_every_criterion() -> None:
    response = report_guidance_response(
        _report(), request_id="00000000-0000-0000-0000-000000000001"
    )
    parameters = response["contained"][0]
    assert response["outputParameters"] == {"reference": f"#{parameters['id']}"}
    criteria = [p for p in parameters["parameter"] if p["name"] == "criterion"]
    assert len(criteria) == 3
    statuses = {
        next(part["valueCoding"]["code"] for part in c["part"] if part["name"] == "id"): next(
            part["valueCode"] for part in c["part"] if part["name"] == "status"
        )
        for c in criteria
    }
    assert statuses == {"inc-age": "met", "inc-sledai": "unknown", "inc-ana": "met"}
    assert len(response["dataRequirement"]) == 1


def test_fhir_outputs_validate_against_official_schema(shared_dir: Path) -> None:
    bundle = report_bundle(_report())
    assert _schema_errors(shared_dir, bundle) == []
    for entry in bundle["entry"]:
        assert _schema_errors(shared_dir, entry["resource"]) == []


def test_schema_check_can_fail(shared_dir: Path) -> None:
    subject = report_research_subject(_report())
    subject["status"] = "maybe"
    assert _schema_errors(shared_dir, subject)
