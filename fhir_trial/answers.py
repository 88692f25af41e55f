"""A coordinator's answers applied to a report (CRITERIA.md, "Coordinator answers").

A coordinator may answer ``met`` or ``not-met`` (with a comment) for a criterion whose computed
status is ``unknown`` or ``needs-review``: the manual items (inc-consent, inc-contraception,
exc-major-comorbidity, exc-abnormal-labs, exc-investigator-judgement) are always among them unless
the record decided them (an active research Consent naming the study; a male patient's
contraception is not-applicable). An answer never overrides a computed ``met``, ``not-met`` or
``not-applicable``: such an answer is refused (:class:`AnswerError`), not dropped silently.

The parts of inc-autoantibody (inc-ana, inc-anti-dsdna, inc-anti-sm) do not vote on their own, so
they are not answered one by one: the coordinator answers inc-autoantibody itself.

An answered criterion keeps its computed reason, evidence and missing data and takes the answered
status; the verdict is recomputed with the rules of CRITERIA.md (``eligible`` becomes possible). A
patient deceased on the screening date stays ineligible, and one whose vital status cannot be read
stays at best potentially eligible, whatever is answered (:func:`fhir_trial.evaluate.final_verdict`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fhir_trial.deceased import ALIVE, VitalStatus
from fhir_trial.evaluate import final_verdict, verdict_of
from fhir_trial.report import Answer, CriterionResult, EligibilityReport

__all__ = [
    "ANSWER_STATUSES",
    "MANUAL_ITEMS",
    "AnswerError",
    "answerable",
    "answerable_ids",
    "apply_answers",
]

MANUAL_ITEMS: tuple[str, ...] = (
    "inc-consent",
    "inc-contraception",
    "exc-major-comorbidity",
    "exc-abnormal-labs",
    "exc-investigator-judgement",
)
ANSWER_STATUSES: tuple[str, ...] = ("met", "not-met")
_OPEN = ("unknown", "needs-review")


class AnswerError(ValueError):
    """An answer that may not be applied (unknown criterion, computed status, bad value)."""


def answerable(result: CriterionResult) -> bool:
    """Whether a coordinator may answer this criterion (open and voting)."""
    return result.part_of is None and result.status in _OPEN


def answerable_ids(report: EligibilityReport) -> list[str]:
    """The ids a coordinator may answer, open items in report order."""
    return [r.id for r in report.criteria if answerable(r)]


def _vital(report: EligibilityReport) -> VitalStatus:
    """The vital status the report was computed with (deceased, unclear or alive)."""
    if report.deceased is not None and report.deceased is not False:
        return VitalStatus(state="deceased", deceased=report.deceased, reason=report.reason)
    if report.reason:
        return VitalStatus(state="unclear", reason=report.reason)
    return ALIVE


def apply_answers(report: EligibilityReport, answers: Iterable[Answer]) -> EligibilityReport:
    """The report with the answers applied and the verdict recomputed. Pure.

    Raises :class:`AnswerError` for an answer to an unknown criterion, to a criterion the record
    decided (met / not-met / not-applicable), to a part of inc-autoantibody, with a status other
    than met / not-met, or for two answers to one criterion.
    """
    given: dict[str, Answer] = {}
    by_id = {r.id: r for r in report.criteria}
    for answer in answers:
        result = by_id.get(answer.criterion)
        if result is None:
            raise AnswerError(f"no criterion {answer.criterion!r} in the report")
        if answer.status not in ANSWER_STATUSES:
            raise AnswerError(f"{answer.criterion}: an answer is met or not-met")
        if result.part_of is not None:
            raise AnswerError(f"{answer.criterion} is answered through {result.part_of}")
        if result.status not in _OPEN:
            raise AnswerError(
                f"{answer.criterion} was decided by the record ({result.status}): "
                "an answer never overrides it"
            )
        if answer.criterion in given:
            raise AnswerError(f"two answers to {answer.criterion}")
        given[answer.criterion] = answer
    if not given:
        return report
    criteria = tuple(
        dataclasses.replace(r, status=given[r.id].status) if r.id in given else r
        for r in report.criteria
    )
    ordered = tuple(given[r.id] for r in report.criteria if r.id in given)
    return dataclasses.replace(
        report,
        criteria=criteria,
        verdict=final_verdict(verdict_of(criteria), _vital(report)),
        answers=report.answers + ordered,
    )
