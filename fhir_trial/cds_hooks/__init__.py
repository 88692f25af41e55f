"""CDS Hooks 2.0 service for NCT06010472: ``patient-view`` enrollment suggestion.

``create_cds_blueprint(settings)`` gives the Flask blueprint (discovery, hook, feedback, worksheet);
see :mod:`.blueprint` for the routes and :mod:`.auth` for how CDS clients are trusted.
"""

from __future__ import annotations

from fhir_trial.cds_hooks.blueprint import cds_service, create_cds_blueprint
from fhir_trial.cds_hooks.discovery import HOOK, SERVICE_ID

__all__ = ["HOOK", "SERVICE_ID", "cds_service", "create_cds_blueprint"]
