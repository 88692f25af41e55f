"""PLACEHOLDER until implemented: exc-drug-allergy."""

from __future__ import annotations

from collections.abc import Callable

from fhir_trial.criteria.context import Context
from fhir_trial.report import Finding


def _todo(ctx: Context) -> Finding:
    return Finding("unknown", "not implemented yet")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-drug-allergy": _todo,
}
