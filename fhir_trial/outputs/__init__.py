"""Renderings of an EligibilityReport: JSON (CRITERIA.md shape), terminal text, FHIR R4."""

from fhir_trial.outputs.fhir import report_bundle, report_guidance_response, report_research_subject
from fhir_trial.outputs.text import report_text

__all__ = ["report_bundle", "report_guidance_response", "report_research_subject", "report_text"]
