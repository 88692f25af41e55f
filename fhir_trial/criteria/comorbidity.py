"""PLACEHOLDER until implemented: exc-immunodeficiency, exc-heart-failure, exc-cns-disease, exc-malignancy, exc-skin-disease, exc-major-comorbidity, exc-investigator-judgement."""

from __future__ import annotations

from collections.abc import Callable

from fhir_trial.criteria.context import Context
from fhir_trial.report import Finding


def _todo(ctx: Context) -> Finding:
    return Finding("unknown", "not implemented yet")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-immunodeficiency": _todo,
    "exc-heart-failure": _todo,
    "exc-cns-disease": _todo,
    "exc-malignancy": _todo,
    "exc-skin-disease": _todo,
    "exc-major-comorbidity": _todo,
    "exc-investigator-judgement": _todo,
}
