"""The coordinator's worksheet as a SMART on FHIR app (EHR and standalone launch).

See :mod:`fhir_trial.smart.blueprint` for the routes and the security rules, and the README section
"Coordinator's worksheet (SMART app)" for the registration file. Nothing is imported here, so the
CDS service can use :mod:`fhir_trial.smart.links` without loading the app.
"""
