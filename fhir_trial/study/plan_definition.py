"""The computable eligibility PlanDefinition (CPG-on-FHIR ``cpg-computableplandefinition`` style).

One action per criterion, in catalog order: title, protocol wording, the criterion id as ``code``, a
``patient-view`` named-event trigger and an applicability condition naming the CQL define of the same
id in the main Library, NCT06010472Eligibility (``"inc-age" = 'met'`` in ``text/cql``, see
:data:`EXPRESSION_LANGUAGE`), which ``library`` names with its version. A first action, before the
criteria, applies when the patient was alive on the screening date (``not "Deceased"``: a deceased
patient is ineligible whatever the criteria say). A last action carries the verdict (the
``Verdict`` define) as a dynamic value.
"""

from __future__ import annotations

from fhir_trial.canonical import ELIGIBILITY_LIBRARY, STUDY_ID, canonical
from fhir_trial.criteria.catalog import CRITERIA, CriterionSpec
from fhir_trial.study.common import VERSION, JsonDict, canonical_metadata, project_coding
from fhir_trial.study.research_study import ELIGIBILITY_ID

CPG_PROFILE = "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-computableplandefinition"
# CPG 1.0 would write "text/cql-identifier" with the bare define name, but the R4 ExpressionLanguage
# codes (enforced as an enum by the official R4 JSON Schema) only know "text/cql". So each condition
# is a real CQL Boolean over the Library's define (`"inc-age" = 'met'`: ids hold hyphens and must be
# quoted), and Expression.name carries the define's identifier for tools that look it up by name.
EXPRESSION_LANGUAGE = "text/cql"
TRIGGER = {"type": "named-event", "name": "patient-view"}
VERDICT_DEFINE = "Verdict"
DECEASED_DEFINE = "Deceased"
ALIVE_ACTION_ID = "alive-at-screening"


def alive_action() -> JsonDict:
    """The action that applies when the patient was alive on the screening date."""
    return {
        "id": ALIVE_ACTION_ID,
        "title": "Patient alive on the screening date",
        "description": (
            "A patient recorded as deceased (Patient.deceasedBoolean true, or a "
            "Patient.deceasedDateTime whose earliest possible day is on or before the screening "
            "date) is ineligible whatever the criteria say; the criteria are still reported."
        ),
        "trigger": [dict(TRIGGER)],
        "condition": [
            {
                "kind": "applicability",
                "expression": {
                    "language": EXPRESSION_LANGUAGE,
                    "name": DECEASED_DEFINE,
                    "expression": f'not "{DECEASED_DEFINE}"',
                    "description": (
                        f"define {DECEASED_DEFINE} is true when the patient was deceased on the "
                        "screening date; the action applies when the patient was alive"
                    ),
                },
            }
        ],
    }


def applicability_expression(define: str) -> str:
    """The CQL Boolean that holds when a criterion's define says 'met'."""
    return f"\"{define}\" = 'met'"


def criterion_action(spec: CriterionSpec) -> JsonDict:
    """The action of one criterion."""
    return {
        "id": spec.id,
        "prefix": spec.ref,
        "title": spec.title,
        "description": spec.protocol_text,
        "code": [{"coding": [project_coding(spec.id, spec.title)]}],
        "trigger": [dict(TRIGGER)],
        "condition": [
            {
                "kind": "applicability",
                "expression": {
                    "language": EXPRESSION_LANGUAGE,
                    "name": spec.id,
                    "expression": applicability_expression(spec.id),
                    "description": (
                        f"define {spec.id} gives the status of {spec.kind} criterion {spec.id} "
                        "('met', 'not-met', 'unknown', 'needs-review' or 'not-applicable'); the "
                        "action applies when it is 'met'"
                    ),
                },
            }
        ],
    }


def verdict_action() -> JsonDict:
    """The action that reports the overall verdict."""
    return {
        "id": "verdict",
        "title": "Eligibility verdict",
        "description": (
            "eligible, ineligible or potentially-eligible, from the criteria above "
            "(rules in CRITERIA.md); ineligible for a patient deceased on the screening date."
        ),
        "trigger": [dict(TRIGGER)],
        "dynamicValue": [
            {
                "path": "action.description",
                "expression": {
                    "language": EXPRESSION_LANGUAGE,
                    "name": VERDICT_DEFINE,
                    "expression": f'"{VERDICT_DEFINE}"',
                },
            }
        ],
    }


def plan_definition() -> JsonDict:
    """The PlanDefinition resource."""
    return {
        "resourceType": "PlanDefinition",
        "id": ELIGIBILITY_ID,
        "meta": {"profile": [CPG_PROFILE]},
        **canonical_metadata("PlanDefinition", ELIGIBILITY_ID),
        "name": "NCT06010472Eligibility",
        "title": f"{STUDY_ID} eligibility screening",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
                    "code": "eca-rule",
                    "display": "ECA Rule",
                }
            ]
        },
        "description": (
            f"Screens a patient against each eligibility criterion of {STUDY_ID} when the chart is "
            "opened (patient-view); each action's applicability is the CQL define named by its "
            "criterion id."
        ),
        # the main CQL library, pinned to its version (it includes the clinical areas' libraries)
        "library": [f"{canonical('Library', ELIGIBILITY_LIBRARY)}|{VERSION}"],
        "action": [
            alive_action(),
            *(criterion_action(spec) for spec in CRITERIA),
            verdict_action(),
        ],
    }
