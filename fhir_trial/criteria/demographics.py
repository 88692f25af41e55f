"""PLACEHOLDER until implemented: inc-age, inc-consent, inc-contraception."""

from __future__ import annotations

from collections.abc import Callable

from fhir_trial.criteria.context import Context
from fhir_trial.report import Finding


def _todo(ctx: Context) -> Finding:
    return Finding("unknown", "not implemented yet")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-age": _todo,
    "inc-consent": _todo,
    "inc-contraception": _todo,
}
