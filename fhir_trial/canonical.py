"""The one canonical base URL of every resource this project publishes, and the study's identity.

Every ``url`` of a ValueSet, CodeSystem, PlanDefinition, Library, ... is ``f"{BASE}/{Type}/{id}"``.
Nothing else in the project spells the base out: source files under ``terminology/`` write the
placeholder ``{{canonical}}`` and the resource builder substitutes it.
"""

from __future__ import annotations

BASE = "https://fhir-trial.org/fhir"
PLACEHOLDER = "{{canonical}}"

STUDY_ID = "NCT06010472"
STUDY_RESOURCE_ID = "nct06010472"
# The main CQL library; its Library is <BASE>/Library/<name> (Using CQL with FHIR, requirement 4.2).
ELIGIBILITY_LIBRARY = "NCT06010472Eligibility"
REGISTRY_URL = "https://clinicaltrials.gov/study/NCT06010472"
NCT_SYSTEM = "https://clinicaltrials.gov"
CODESYSTEM_URL = f"{BASE}/CodeSystem/fhir-trial"
# Canonical urls the project published once and no longer does: ``publish`` retires the copies a
# server still holds as active, so nothing finds two libraries by one name and version.
SUPERSEDED: tuple[tuple[str, str], ...] = (
    # The single Library of the CQL before it was split into one Library per CQL library; it
    # shares the name NCT06010472Eligibility and the version 0.1.0 with the main Library now.
    ("Library", f"{BASE}/Library/nct06010472-eligibility"),
)


def canonical(resource_type: str, resource_id: str) -> str:
    """Return the canonical URL of one of the project's resources."""
    return f"{BASE}/{resource_type}/{resource_id}"


def valueset_url(valueset_id: str) -> str:
    """Return the canonical URL of one of the project's ValueSets."""
    return canonical("ValueSet", valueset_id)
