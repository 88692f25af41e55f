"""PLACEHOLDER until implemented: inc-neutrophils, inc-hemoglobin, inc-lvef, exc-abnormal-labs."""

from __future__ import annotations

from collections.abc import Callable

from fhir_trial.criteria.context import Context
from fhir_trial.report import Finding


def _todo(ctx: Context) -> Finding:
    return Finding("unknown", "not implemented yet")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-neutrophils": _todo,
    "inc-hemoglobin": _todo,
    "inc-lvef": _todo,
    "exc-abnormal-labs": _todo,
}
