"""The ResearchStudy for NCT06010472, from the registry record (``../study/NCT06010472.txt``).

R4 has no element for three facts of the record, so they are extensions (documented in the README):
the estimated completion date (``period-end-estimated`` on ``period``), the planned enrolment (the
R5 cross-version ``recruitment.targetNumber`` extension) and the canonical URL (an identifier with
system ``urn:ietf:rfc:3986``, since R4 ResearchStudy has no ``url``).
"""

from __future__ import annotations

from collections.abc import Mapping

from fhir_trial.canonical import NCT_SYSTEM, REGISTRY_URL, STUDY_ID, STUDY_RESOURCE_ID
from fhir_trial.study.common import (
    EXT_PERIOD_END_ESTIMATED,
    EXT_TARGET_NUMBER,
    JsonDict,
    uri_identifier,
)
from fhir_trial.study.organization import LOCATION_ID, ORGANIZATION_ID

ELIGIBILITY_ID = f"{STUDY_RESOURCE_ID}-eligibility"
SNOMED = "http://snomed.info/sct"
PLANNED_ENROLMENT = 36
SPONSOR_PROTOCOL_ID = "CHEC2023-174"

# (condition as the registry words it, ValueSet that holds its code, SNOMED code or None).
# Codes are looked up in the built ValueSets; one missing there leaves the condition as text only.
CONDITIONS: tuple[tuple[str, str, str | None], ...] = (
    ("Systemic Lupus Erythematosus", "sle", "55464009"),
    ("Cutaneous Lupus Erythematosus", "lupus-unspecified-or-cutaneous", "7119001"),
    ("Lupus", "lupus-unspecified-or-cutaneous", "200936003"),
)

KEYWORDS = (
    "systemic lupus erythematosus",
    "refractory SLE",
    "CAR-NK",
    "anti-CD19",
    "KN5501",
    "cell therapy",
)

DESCRIPTION = """\
Single-arm, open-label, dose-escalation pilot study (phase 1) at Changhai Hospital, Shanghai, of
allogeneic anti-CD19 chimeric antigen receptor natural killer cells (CAR-NK, KN5501) in adults aged 18
to 65 with moderate to severe, refractory, active systemic lupus erythematosus. About 36 participants
are planned.

The primary objective is safety. Secondary objectives are efficacy: BILAG-2004 index, SRI-4 response
rate, Lupus Low Disease Activity State (LLDAS) rate and DORIS remission rate.

Eligibility is defined computably by the Group and PlanDefinition referenced from this study. The study
started on 2023-08-20; the end date 2027-08-25 is the ESTIMATED completion date given by the registry
(marked with the period-end-estimated extension). Summary written for this project from the
ClinicalTrials.gov record; the registry record is authoritative."""

OBJECTIVES: tuple[tuple[str, str], ...] = (
    ("Safety of allogeneic anti-CD19 CAR-NK cells (KN5501) in refractory active SLE", "primary"),
    ("Efficacy: British Isles Lupus Assessment Group 2004 (BILAG-2004) index", "secondary"),
    ("Efficacy: SLE Responder Index 4 (SRI-4) response rate", "secondary"),
    ("Efficacy: Lupus Low Disease Activity State (LLDAS) rate", "secondary"),
    ("Efficacy: Definitions Of Remission In SLE (DORIS) remission rate", "secondary"),
)


def _expansion_entry(valueset: Mapping[str, object] | None, code: str) -> JsonDict | None:
    if not valueset:
        return None
    expansion = valueset.get("expansion")
    stack = list(expansion.get("contains", [])) if isinstance(expansion, dict) else []
    while stack:
        entry = stack.pop(0)
        if entry.get("system") == SNOMED and entry.get("code") == code:
            coding: JsonDict = {"system": SNOMED, "code": code}
            if entry.get("display"):
                coding["display"] = entry["display"]
            return coding
        stack.extend(entry.get("contains", []))
    return None


def conditions(valuesets: Mapping[str, JsonDict]) -> list[JsonDict]:
    """The study's conditions, coded where the ValueSets confirm the code."""
    out: list[JsonDict] = []
    for text, valueset_id, code in CONDITIONS:
        concept: JsonDict = {"text": text}
        coding = _expansion_entry(valuesets.get(valueset_id), code) if code else None
        if coding:
            concept["coding"] = [coding]
        out.append(concept)
    return out


def research_study(valuesets: Mapping[str, JsonDict]) -> JsonDict:
    """The ResearchStudy resource; ``valuesets`` (by id) confirm the condition codes."""
    return {
        "resourceType": "ResearchStudy",
        "id": STUDY_RESOURCE_ID,
        "identifier": [
            {"use": "official", "system": NCT_SYSTEM, "value": STUDY_ID},
            {
                "use": "secondary",
                "type": {"text": "Sponsor protocol / ethics committee number"},
                "value": SPONSOR_PROTOCOL_ID,
                "assigner": {"reference": f"Organization/{ORGANIZATION_ID}"},
            },
            uri_identifier("ResearchStudy", STUDY_RESOURCE_ID),
        ],
        "title": (
            "An Exploratory Clinical Study of Anti-CD19 CAR NK Cells in the Treatment of "
            "Systemic Lupus Erythematosus"
        ),
        "protocol": [{"reference": f"PlanDefinition/{ELIGIBILITY_ID}"}],
        "status": "active",
        "primaryPurposeType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/research-study-prim-purp-type",
                    "code": "treatment",
                    "display": "Treatment",
                }
            ]
        },
        "phase": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/research-study-phase",
                    "code": "phase-1",
                    "display": "Phase 1",
                }
            ]
        },
        "category": [{"text": "Interventional"}],
        "focus": [{"text": "anti-CD19 CAR NK cells (KN5501)"}],
        "condition": conditions(valuesets),
        "relatedArtifact": [
            {
                "type": "documentation",
                "label": STUDY_ID,
                "display": "ClinicalTrials.gov registry record",
                "url": REGISTRY_URL,
            }
        ],
        "keyword": [{"text": keyword} for keyword in KEYWORDS],
        "location": [{"text": "China"}],
        "description": DESCRIPTION,
        "enrollment": [{"reference": f"Group/{ELIGIBILITY_ID}"}],
        "period": {
            "start": "2023-08-20",
            "end": "2027-08-25",
            "extension": [{"url": EXT_PERIOD_END_ESTIMATED, "valueBoolean": True}],
        },
        "sponsor": {"reference": f"Organization/{ORGANIZATION_ID}", "display": "Changhai Hospital"},
        "site": [
            {"reference": f"Location/{LOCATION_ID}", "display": "Changhai Hospital, Shanghai"}
        ],
        "arm": [
            {
                "name": "KN5501",
                "type": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/research-study-arm-type",
                            "code": "experimental",
                            "display": "Experimental",
                        }
                    ],
                    "text": "Experimental",
                },
                "description": (
                    "Single arm: allogeneic anti-CD19 CAR NK cells (KN5501), dose escalation."
                ),
            }
        ],
        "objective": [
            {
                "name": name,
                "type": {
                    "coding": [
                        {
                            "system": (
                                "http://terminology.hl7.org/CodeSystem/research-study-objective-type"
                            ),
                            "code": kind,
                            "display": kind.capitalize(),
                        }
                    ]
                },
            }
            for name, kind in OBJECTIVES
        ],
        "extension": [{"url": EXT_TARGET_NUMBER, "valueUnsignedInt": PLANNED_ENROLMENT}],
    }
