"""The coordinator's worksheet as a SMART on FHIR app (EHR and standalone launch).

See :mod:`fhir_trial.smart.blueprint` for the routes and the security rules, and the README section
"Coordinator's worksheet (SMART app)" for the registration file.
"""

from fhir_trial.smart.blueprint import create_smart_blueprint, smart_app

__all__ = ["create_smart_blueprint", "smart_app"]
