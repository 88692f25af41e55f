"""The one CDS Service this project offers, and its discovery document.

Prefetch templates are generated from the data categories the criteria read
(:data:`fhir_trial.record.CATEGORIES`): a read of the Patient and one patient search per other
category, all keyed by ``{{context.patientId}}``. The prefetch key of a category is its resource
type with a lower-case first letter (``Condition`` -> ``condition``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_trial.canonical import STUDY_ID
from fhir_trial.record import CATEGORIES

__all__ = [
    "HOOK",
    "KEY_TO_CATEGORY",
    "PREFETCH_TEMPLATES",
    "SERVICE_ID",
    "discovery_document",
    "prefetch_key",
    "search_path",
]

SERVICE_ID = "nct06010472-eligibility"
HOOK = "patient-view"
TITLE = f"{STUDY_ID} eligibility pre-screening"
DESCRIPTION = (
    f"At chart open, checks the patient's record against the eligibility criteria of {STUDY_ID} "
    "(anti-CD19 CAR-NK cells, KN5501, for moderate-to-severe refractory systemic lupus "
    "erythematosus) and, when the patient may be eligible, suggests referral with the reasons and a "
    "link to a screening worksheet. Missing data never makes a patient ineligible."
)
USAGE = (
    "Send the prefetch keys listed here, or fhirServer (on the allowlist agreed for your issuer) with "
    "fhirAuthorization granting read access to these resource types. A prefetch value of null marks "
    "that category as unavailable (its criteria become unknown)."
)
PATIENT_TOKEN = "{{context.patientId}}"


def prefetch_key(category: str) -> str:
    """The prefetch key of a data category (``MedicationRequest`` -> ``medicationRequest``)."""
    return category[:1].lower() + category[1:]


def search_path(category: str, patient_id: str) -> str:
    """The relative FHIR request for one category of one patient (read for Patient, else search)."""
    if category == "Patient":
        return f"Patient/{patient_id}"
    return f"{category}?patient={patient_id}"


PREFETCH_TEMPLATES: Mapping[str, str] = {
    prefetch_key(category): search_path(category, PATIENT_TOKEN) for category in CATEGORIES
}
KEY_TO_CATEGORY: Mapping[str, str] = {prefetch_key(category): category for category in CATEGORIES}


def discovery_document() -> dict[str, Any]:
    """The body of ``GET /cds-services`` (CDS Hooks 2.0 discovery response)."""
    return {
        "services": [
            {
                "hook": HOOK,
                "id": SERVICE_ID,
                "title": TITLE,
                "description": DESCRIPTION,
                "prefetch": dict(PREFETCH_TEMPLATES),
                "usageRequirements": USAGE,
            }
        ]
    }
