"""Runs every clinical case under tests/cases through the evaluator (see clinical_cases.py)."""

from __future__ import annotations

import re

import pytest
from clinical_cases import ClinicalCase, all_cases

from fhir_trial.evaluate import evaluate

CASES = all_cases()
_RULE_NUMBER = re.compile(r"\brule \d", re.IGNORECASE)


def test_there_are_at_least_100_cases() -> None:
    assert len(CASES) >= 100, f"only {len(CASES)} clinical cases"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_clinical_case(case: ClinicalCase) -> None:
    assert case.expect, f"{case.name} expects nothing"
    report = evaluate(case.record(), case.settings_object())
    statuses = report.statuses()
    for key, expected in case.expect.items():
        actual = report.verdict if key == "verdict" else statuses[key]
        reason = "" if key == "verdict" else report.criterion(key).reason
        assert actual == expected, (
            f"{case.title}: {key} is {actual} ({reason}), expected {expected}"
        )
    for cid, words in case.reason_contains.items():
        reason = (report.reason or "") if cid == "verdict" else report.criterion(cid).reason
        assert words.lower() in reason.lower(), f"{cid} reason {reason!r} lacks {words!r}"
    if case.deceased is not None:
        expected_deceased = None if case.deceased is False else case.deceased
        assert report.deceased == expected_deceased, (
            f"{case.title}: deceased is {report.deceased!r}, expected {expected_deceased!r}"
        )
        assert ("deceased" in report.to_json()) is (expected_deceased is not None)
    if case.warning_contains is not None:
        words = case.warning_contains.lower()
        assert any(words in w.lower() for w in report.warnings), (
            f"no warning contains {case.warning_contains!r}: {report.warnings}"
        )
    # Every status is explained, in words: coordinators do not have CRITERIA.md, so a reason
    # states what an absence rule says instead of citing its number.
    for result in report.criteria:
        assert result.reason, f"{result.id} has no reason"
        assert not _RULE_NUMBER.search(result.reason), f"{result.id} cites a rule: {result.reason}"
