"""Code matching on codes as real exports send them: text, JSON numbers, and malformed values."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import PatientRecord
from fhir_trial.terminology import (
    ICD10CM,
    SNOMED,
    code_text,
    load_terminology,
    lookup_keys,
    normalise_system,
)

MALFORMED = [{"coding": "55464009"}, ["55464009"], 55464009.0, True, None, "", "   "]


@pytest.mark.parametrize(
    ("code", "text"),
    [(" 55464009 ", "55464009"), (55464009, "55464009"), ("M32.14", "M32.14")]
    + [(bad, None) for bad in MALFORMED],
)
def test_code_text(code: Any, text: str | None) -> None:
    assert code_text(code) == text


@pytest.mark.parametrize("system", [5, ["http://snomed.info/sct"], {"uri": "x"}, None, ""])
def test_a_system_that_is_not_text_is_no_system(system: Any) -> None:
    assert normalise_system(system) == ""


def test_lookup_keys_for_numbers_and_malformed_codes() -> None:
    assert lookup_keys(SNOMED, 55464009) == [(SNOMED, "55464009")]
    assert lookup_keys(ICD10CM, "M32.14")[-1] == (ICD10CM, "M")
    for bad in MALFORMED:
        assert lookup_keys(SNOMED, bad) == []
    assert lookup_keys({"not": "a system"}, "55464009") == [("", "55464009")]


def test_valueset_membership_never_raises_on_malformed_codes() -> None:
    sle = load_terminology(Settings().resources_dir).get("sle")
    assert sle.contains(SNOMED, 55464009)  # a JSON number is the same SNOMED CT code
    for bad in MALFORMED:
        assert not sle.contains(SNOMED, bad)
    assert not sle.contains(["not", "a", "system"], "55464009")


def _with_condition(code: Any) -> PatientRecord:
    record = PatientRecord()
    record.add(
        {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1990-01-01"}
    )
    record.add(
        {
            "resourceType": "Condition",
            "id": "c",
            "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": SNOMED, "code": code}]},
        }
    )
    record.mark_obtained("Patient", "Condition")
    return record


def test_sle_sent_as_a_json_number_is_found() -> None:
    record = _with_condition(55464009)
    report = evaluate(record)
    assert report.criterion("inc-sle-diagnosis").status == "met"
    assert report.warnings == ()


def test_a_malformed_code_is_ignored_and_the_report_says_so() -> None:
    record = _with_condition({"value": "55464009"})
    report = evaluate(record)
    assert report.criterion("inc-sle-diagnosis").status == "not-met"
    assert report.warnings == (
        "Condition codings whose code is not text were ignored: they match no ValueSet, "
        "so what they record was not seen",
    )
