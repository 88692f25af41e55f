"""The eligibility criteria, one module per clinical area; see :mod:`fhir_trial.evaluate`."""
