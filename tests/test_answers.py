"""Coordinator answers (CRITERIA.md, "Coordinator answers"): fhir_trial.answers.apply_answers."""

from __future__ import annotations

import dataclasses

import pytest

from fhir_trial.answers import MANUAL_ITEMS, AnswerError, answerable_ids, apply_answers
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.report import Answer, CriterionResult, EligibilityReport

OPEN = {*MANUAL_ITEMS, "inc-lvef"}


def _report(**changes: object) -> EligibilityReport:
    """Every inclusion met, every exclusion not-met, except the manual items and LVEF (open)."""
    criteria = []
    for spec in CRITERIA:
        if spec.id in MANUAL_ITEMS:
            status = "needs-review"
        elif spec.id == "inc-lvef":
            status = "unknown"
        else:
            status = "met" if spec.kind == "inclusion" else "not-met"
        criteria.append(
            CriterionResult(
                spec.id,
                spec.kind,
                spec.ref,
                status,  # type: ignore[arg-type]
                f"computed reason of {spec.id}",
                (f"Observation/{spec.id}",),
                ("LVEF (%)",) if spec.id == "inc-lvef" else (),
                spec.part_of,
            )
        )
    report = EligibilityReport(
        "NCT06010472", "Patient/p1", "2026-11-26", "potentially-eligible", tuple(criteria)
    )
    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def _all_favourable(author: str = "Practitioner/dr1") -> list[Answer]:
    return [
        Answer(
            cid,
            "met" if cid.startswith("inc-") else "not-met",
            f"checked {cid}",
            author,
            "2026-11-26T10:00:00Z",
        )
        for cid in sorted(OPEN)
    ]


def test_answering_every_open_item_favourably_makes_the_patient_eligible() -> None:
    answered = apply_answers(_report(), _all_favourable())
    assert answered.verdict == "eligible"
    consent = answered.criterion("inc-consent")
    assert consent.status == "met"
    assert consent.reason == "computed reason of inc-consent"  # reason and evidence are kept
    assert consent.evidence == ("Observation/inc-consent",)
    assert answered.criterion("inc-lvef").missing == ("LVEF (%)",)
    out = answered.to_json()
    assert [a["criterion"] for a in out["answers"]] == [
        r.id for r in answered.criteria if r.id in OPEN
    ]
    first = out["answers"][0]
    assert first == {
        "criterion": "inc-consent",
        "status": "met",
        "comment": "checked inc-consent",
        "author": "Practitioner/dr1",
        "date": "2026-11-26T10:00:00Z",
    }


def test_a_partial_answer_leaves_the_patient_potentially_eligible() -> None:
    answered = apply_answers(_report(), [Answer("inc-consent", "met")])
    assert answered.verdict == "potentially-eligible"
    assert answered.criterion("inc-contraception").status == "needs-review"


def test_an_unfavourable_answer_makes_the_patient_ineligible() -> None:
    answered = apply_answers(_report(), [Answer("exc-investigator-judgement", "met", "unstable")])
    assert answered.verdict == "ineligible"


def test_a_deceased_patient_stays_ineligible() -> None:
    report = _report(verdict="ineligible", deceased="2026-11-01", reason="deceased on 2026-11-01")
    answered = apply_answers(report, _all_favourable())
    assert answered.verdict == "ineligible"
    assert answered.deceased == "2026-11-01"


def test_an_unreadable_vital_status_stays_at_best_potentially_eligible() -> None:
    report = _report(reason="whether the patient was alive ... cannot be read")
    assert apply_answers(report, _all_favourable()).verdict == "potentially-eligible"


@pytest.mark.parametrize("computed", ["met", "not-met", "not-applicable"])
def test_an_answer_never_overrides_a_computed_status(computed: str) -> None:
    report = _report()
    criteria = tuple(
        dataclasses.replace(r, status=computed) if r.id == "inc-contraception" else r  # type: ignore[arg-type]
        for r in report.criteria
    )
    report = dataclasses.replace(report, criteria=criteria)
    assert "inc-contraception" not in answerable_ids(report)
    with pytest.raises(AnswerError, match="never overrides"):
        apply_answers(report, [Answer("inc-contraception", "met")])


@pytest.mark.parametrize(
    "answer",
    [
        Answer("inc-nonexistent", "met"),
        Answer("inc-consent", "unknown"),  # type: ignore[arg-type]
        Answer("inc-ana", "met"),  # a part: answered through inc-autoantibody
    ],
)
def test_bad_answers_are_refused(answer: Answer) -> None:
    report = _report()
    criteria = tuple(
        dataclasses.replace(r, status="unknown") if r.id == "inc-ana" else r
        for r in report.criteria
    )
    with pytest.raises(AnswerError):
        apply_answers(dataclasses.replace(report, criteria=criteria), [answer])


def test_two_answers_to_one_criterion_are_refused() -> None:
    with pytest.raises(AnswerError, match="two answers"):
        apply_answers(_report(), [Answer("inc-consent", "met"), Answer("inc-consent", "not-met")])


def test_no_answers_is_the_report_itself_and_the_json_has_no_answers_key() -> None:
    report = _report()
    assert apply_answers(report, []) is report
    assert "answers" not in report.to_json()
