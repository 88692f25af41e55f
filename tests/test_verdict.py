"""The verdict rules of CRITERIA.md, on hand-made results (every verdict reachable)."""

from __future__ import annotations

import pytest

from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.evaluate import derive_autoantibody, verdict_of
from fhir_trial.report import CriterionResult, Finding, Status


def _results(overrides: dict[str, Status]) -> tuple[CriterionResult, ...]:
    """Every criterion at its 'favourable' status, with some overridden."""
    out = []
    for spec in CRITERIA:
        default: Status = "met" if spec.kind == "inclusion" else "not-met"
        status = overrides.get(spec.id, default)
        out.append(CriterionResult(spec.id, spec.kind, spec.ref, status, "r", part_of=spec.part_of))
    return tuple(out)


def test_all_favourable_is_eligible() -> None:
    assert verdict_of(_results({})) == "eligible"


def test_not_applicable_counts_as_favourable() -> None:
    assert verdict_of(_results({"inc-contraception": "not-applicable"})) == "eligible"


@pytest.mark.parametrize(
    "overrides",
    [
        {"inc-age": "not-met"},
        {"exc-malignancy": "met"},
        {"inc-sledai": "not-met", "exc-cns-disease": "unknown"},
    ],
)
def test_a_failed_inclusion_or_met_exclusion_is_ineligible(overrides: dict[str, Status]) -> None:
    assert verdict_of(_results(overrides)) == "ineligible"


@pytest.mark.parametrize("status", ["unknown", "needs-review"])
def test_undecided_criteria_leave_the_patient_potentially_eligible(status: Status) -> None:
    assert verdict_of(_results({"inc-lvef": status})) == "potentially-eligible"
    assert verdict_of(_results({"exc-recent-trial": status})) == "potentially-eligible"


def test_parts_of_autoantibody_do_not_vote() -> None:
    # A negative ANA alone is not a failed inclusion while inc-autoantibody itself is met.
    assert verdict_of(_results({"inc-ana": "not-met"})) == "eligible"
    assert (
        verdict_of(_results({"inc-ana": "not-met", "inc-autoantibody": "not-met"})) == "ineligible"
    )


@pytest.mark.parametrize(
    ("ana", "dsdna", "sm", "expected"),
    [
        ("not-met", "met", "unknown", "met"),
        ("not-met", "not-met", "not-met", "not-met"),
        ("not-met", "needs-review", "unknown", "needs-review"),
        ("unknown", "not-met", "unknown", "unknown"),
    ],
)
def test_autoantibody_is_derived_from_its_parts(
    ana: Status, dsdna: Status, sm: Status, expected: Status
) -> None:
    parts = {
        "inc-ana": Finding(ana, "a"),
        "inc-anti-dsdna": Finding(dsdna, "d"),
        "inc-anti-sm": Finding(sm, "s"),
    }
    assert derive_autoantibody(parts).status == expected
