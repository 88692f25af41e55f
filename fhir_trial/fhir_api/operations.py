"""The FHIR operations of the ``/fhir`` blueprint: their routes and their CapabilityStatement entries.

Each operation is answered only when the study's own resource (the PlanDefinition or the
ResearchStudy) is served by the store, so the CapabilityStatement (:func:`resource_operations`)
never claims an operation that is not there.

``POST PlanDefinition/$apply``, ``POST PlanDefinition/nct06010472-eligibility/$apply``
    screen one patient: see :mod:`.apply`.
``POST ResearchStudy/nct06010472/$screen-population``
    screen a population: see :mod:`.population_operation`.

Both need a bearer access token (:mod:`.access`) before anything else is looked at: 401 or 403
with an OperationOutcome and ``WWW-Authenticate`` otherwise (development mode turns this off).
Errors are OperationOutcomes (:class:`~.requests_io.OperationError`); any other method than POST
is 405 with ``Allow: POST``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request

from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.config import Settings
from fhir_trial.errors import FhirTrialError
from fhir_trial.fhir_api.access import OperationAccess
from fhir_trial.fhir_api.apply import APPLY_DEFINITION, APPLY_DOC, PLAN_ID, apply_operation
from fhir_trial.fhir_api.population_operation import screen_population_operation
from fhir_trial.fhir_api.requests_io import OperationError, operation_outcome
from fhir_trial.fhir_api.store import ResourceStore
from fhir_trial.study.operation_definition import POPULATION_DOC, SCREEN_POPULATION_DEFINITION

__all__ = ["register_operations", "resource_operations"]

log = logging.getLogger(__name__)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def resource_operations(store: ResourceStore, resource_type: str) -> dict[str, Any]:
    """``{"operation": [...]}`` for a CapabilityStatement resource entry, or ``{}``."""
    if resource_type == "PlanDefinition" and store.read("PlanDefinition", PLAN_ID):
        return {
            "operation": [
                {"name": "apply", "definition": APPLY_DEFINITION, "documentation": APPLY_DOC}
            ]
        }
    if resource_type == "ResearchStudy" and store.read("ResearchStudy", STUDY_RESOURCE_ID):
        return {
            "operation": [
                {
                    "name": "screen-population",
                    "definition": SCREEN_POPULATION_DEFINITION,
                    "documentation": POPULATION_DOC,
                }
            ]
        }
    return {}


def register_operations(bp: Blueprint, settings: Settings, store: ResourceStore) -> None:
    """Add the ``$apply`` and ``$screen-population`` routes to the ``/fhir`` blueprint."""
    access = OperationAccess(settings)

    def post_only() -> None:
        if request.method != "POST":
            raise OperationError(
                405,
                "not-supported",
                f"{request.method} is not supported: this operation takes POST",
            )

    def answer(resource_type: str, run: Callable[[], Response]) -> Response:
        # Authentication first: the body (patient data) is not even read without a token.
        refusal = access.refusal(resource_type)
        if refusal is not None:
            return refusal
        return access.mark(attempt(run))

    def attempt(run: Callable[[], Response]) -> Response:
        try:
            post_only()
            return run()
        except OperationError as exc:
            response = operation_outcome(
                "error", exc.code, exc.message, status=exc.status, expression=exc.expression
            )
            if exc.status == 405:
                response.headers["Allow"] = "POST"
            return response
        except FhirTrialError as exc:  # e.g. resources/ without ValueSets: our fault, said plainly
            log.error("operation failed: %s", exc.message)
            return operation_outcome("error", "exception", exc.message, status=500)

    @bp.route("/PlanDefinition/$apply", methods=METHODS)
    def apply_type() -> Response:
        return answer("PlanDefinition", lambda: apply_operation(store, settings, None))

    @bp.route("/PlanDefinition/<rid>/$apply", methods=METHODS)
    def apply_instance(rid: str) -> Response:
        return answer("PlanDefinition", lambda: apply_operation(store, settings, rid))

    @bp.route("/ResearchStudy/<rid>/$screen-population", methods=METHODS)
    def screen_population(rid: str) -> Response:
        return answer("ResearchStudy", lambda: screen_population_operation(store, settings, rid))
