"""PLACEHOLDER until implemented: inc-sledai, inc-bilag."""

from __future__ import annotations

from collections.abc import Callable

from fhir_trial.criteria.context import Context
from fhir_trial.report import Finding


def _todo(ctx: Context) -> Finding:
    return Finding("unknown", "not implemented yet")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-sledai": _todo,
    "inc-bilag": _todo,
}
