"""fhir-trial: NCT06010472 made computable on FHIR R4.

Public API: :func:`evaluate`, :class:`PatientRecord`, :class:`Settings`, :class:`EligibilityReport`
and the record builders in :mod:`fhir_trial.sources`.
"""

from fhir_trial.compiled import choose_build

# Before anything imports the evaluator: compiled, or from source (see fhir_trial.compiled).
choose_build()

from fhir_trial.config import Settings  # noqa: E402
from fhir_trial.record import PatientRecord  # noqa: E402
from fhir_trial.report import CriterionResult, EligibilityReport  # noqa: E402

__all__ = ["CriterionResult", "EligibilityReport", "PatientRecord", "Settings", "evaluate"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # evaluate is imported lazily so that `import fhir_trial` stays cheap for the CLI and the app.
    if name == "evaluate":
        from fhir_trial.evaluate import evaluate

        return evaluate
    raise AttributeError(name)
