"""PLACEHOLDER until implemented: exc-iv-antibiotics, exc-severe-herpes, exc-recent-herpes-zoster."""

from __future__ import annotations

from collections.abc import Callable

from fhir_trial.criteria.context import Context
from fhir_trial.report import Finding


def _todo(ctx: Context) -> Finding:
    return Finding("unknown", "not implemented yet")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-iv-antibiotics": _todo,
    "exc-severe-herpes": _todo,
    "exc-recent-herpes-zoster": _todo,
}
