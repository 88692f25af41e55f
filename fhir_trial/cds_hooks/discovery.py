"""The one CDS Service this project offers, and its discovery document.

Prefetch templates are the searches of :mod:`fhir_trial.searches`, keyed by
``{{context.patientId}}``: a read of the Patient, and per data category one or more searches.
The service asks only for what its criteria need: Observations by the codes the criteria read, in
the Observation's code or a component's (``combo-code``: ``observation``, ``observationScores``),
and NYHA class findings by value (``observationNyha``, ``observationNyhaParts`` for a class inside
a panel), NYHA assessments by code (``observationNyhaAssessment``) or by words
(``observationNyhaWords``, ``code:text``), instead of every Observation in the chart. A code list too long for one URL becomes
several keys (``observation2``, ...). Several keys may fill one category (all the above fill
Observation); the category counts as obtained only when every one of its keys was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fhir_trial.canonical import STUDY_ID
from fhir_trial.searches import SEARCHES, PlannedSearch

__all__ = [
    "HOOK",
    "PATIENT_TOKEN",
    "PREFETCH_KEYS",
    "SERVICE_ID",
    "discovery_document",
    "prefetch_templates",
]

SERVICE_ID = "nct06010472-eligibility"
HOOK = "patient-view"
TITLE = f"{STUDY_ID} eligibility pre-screening"
DESCRIPTION = (
    f"At chart open, checks the patient's record against the eligibility criteria of {STUDY_ID} "
    "(anti-CD19 CAR-NK cells, KN5501, for moderate-to-severe refractory systemic lupus "
    "erythematosus) and, when the patient may be eligible, suggests referral with the reasons and a "
    "link to a screening worksheet. Missing data never makes a patient ineligible. It asks only for "
    "the data its criteria need: Observations are requested by the codes the criteria read, not the "
    "whole chart."
)
USAGE = (
    "Send the prefetch keys listed here, or fhirServer (on the allowlist agreed for your issuer) with "
    "fhirAuthorization granting read access to these resource types. The templates ask only for "
    "what the criteria need (code- and value-filtered Observation searches); a prefetch Bundle for "
    "them may hold just the matching resources. Several keys fill one data category (observation, "
    "observationScores and the observationNyha... keys are all Observations; a long code "
    "list is split into numbered keys such as observation2): a key left out is fetched from "
    "fhirServer with the same query; a value of null marks its whole category as unavailable (its "
    "criteria become unknown), except the observationNyha... keys, which only the NYHA class "
    "criterion reads (and observationNyhaWords, a code:text search, which only warns)."
)
PATIENT_TOKEN = "{{context.patientId}}"

# The first key of every search (a code list split for its length adds observation2, ...; a plan
# without ValueSets asks for fewer).
PREFETCH_KEYS: tuple[str, ...] = tuple(spec.key for spec in SEARCHES)


def prefetch_templates(plan: Sequence[PlannedSearch]) -> dict[str, str]:
    """Prefetch key -> template (``Type?param={{context.patientId}}&...``) for a search plan."""
    return {search.key: search.relative_url(PATIENT_TOKEN) for search in plan}


def discovery_document(plan: Sequence[PlannedSearch]) -> dict[str, Any]:
    """The body of ``GET /cds-services`` (CDS Hooks 2.0 discovery response)."""
    service: Mapping[str, Any] = {
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": TITLE,
        "description": DESCRIPTION,
        "prefetch": prefetch_templates(plan),
        "usageRequirements": USAGE,
    }
    return {"services": [dict(service)]}
