"""The coordinator's worksheet as a Questionnaire, and an answer set as its QuestionnaireResponse.

One group item per criterion a coordinator may answer (every voting criterion: the manual items
always, any other when the record leaves it unknown or needing review; the parts of
inc-autoantibody are answered through it), ``linkId`` the criterion id, coded from the project's
CodeSystem. Each group holds ``<id>.met`` (boolean: the criterion's statement holds; for an
exclusion, true means the patient is excluded by it) and ``<id>.comment`` (text). The last items
are the decision, coded as the ResearchSubject status it writes (research-subject-status:
``candidate`` to refer, ``ineligible``, ``screening`` while data is missing), and its comment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_trial.canonical import STUDY_ID, STUDY_RESOURCE_ID, canonical
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.report import Answer
from fhir_trial.study.common import (
    JsonDict,
    camel_name,
    canonical_metadata,
    project_coding,
)

QUESTIONNAIRE_ID = f"{STUDY_RESOURCE_ID}-worksheet"
QUESTIONNAIRE_URL = canonical("Questionnaire", QUESTIONNAIRE_ID)
SUBJECT_STATUS_SYSTEM = "http://hl7.org/fhir/research-subject-status"
# decision key -> (ResearchSubject.status, the code system's display, words for the coordinator)
DECISIONS: Mapping[str, tuple[str, str, str]] = {
    "refer": ("candidate", "Candidate", "Refer to the study team (candidate)"),
    "not-eligible": ("ineligible", "Ineligible", "Not eligible"),
    "needs-data": ("screening", "Screening", "Needs more data (still screening)"),
}


def answerable_criteria() -> list[str]:
    """The criterion ids the Questionnaire has an item for (every voting criterion)."""
    return [spec.id for spec in CRITERIA if spec.part_of is None]


def questionnaire() -> JsonDict:
    """The study's worksheet Questionnaire."""
    items: list[JsonDict] = []
    for spec in CRITERIA:
        if spec.part_of is not None:
            continue
        holds = (
            "The patient is excluded by it (met)" if spec.kind == "exclusion" else "Met"
        ) + f": {spec.title}"
        items.append(
            {
                "linkId": spec.id,
                "code": [project_coding(spec.id, spec.title)],
                "prefix": spec.ref,
                "text": spec.title,
                "type": "group",
                "required": False,
                "item": [
                    {"linkId": f"{spec.id}.met", "text": holds, "type": "boolean"},
                    {"linkId": f"{spec.id}.comment", "text": "Comment", "type": "text"},
                ],
            }
        )
    items.append(
        {
            "linkId": "decision",
            "text": "The coordinator's decision",
            "type": "choice",
            "required": True,
            "answerOption": [
                {"valueCoding": {"system": SUBJECT_STATUS_SYSTEM, "code": code, "display": shown}}
                for code, shown, _ in DECISIONS.values()
            ],
        }
    )
    items.append({"linkId": "decision-comment", "text": "Comment on the decision", "type": "text"})
    return {
        "resourceType": "Questionnaire",
        "id": QUESTIONNAIRE_ID,
        **canonical_metadata("Questionnaire", QUESTIONNAIRE_ID),
        "name": camel_name(QUESTIONNAIRE_ID),
        "title": f"{STUDY_ID} screening worksheet: coordinator answers and decision",
        "subjectType": ["Patient"],
        "description": (
            "The items of the eligibility screening that no computer can decide (consent, "
            "contraception, investigator judgement) and any criterion the record leaves unknown "
            "or needing review, answered met / not met with a comment, and the coordinator's "
            "decision. An answer never overrides a status the record decided."
        ),
        "item": items,
    }


def questionnaire_response(
    *,
    patient: str,
    answers: Iterable[Answer],
    decision: str,
    comment: str,
    author: str | None,
    authored: str,
    identifier: str,
) -> JsonDict:
    """A completed worksheet (``identifier``: a URN naming the decision, for conditional create)."""
    status, shown, _ = DECISIONS[decision]
    items: list[JsonDict] = []
    for answer in answers:
        group: JsonDict = {
            "linkId": answer.criterion,
            "item": [
                {
                    "linkId": f"{answer.criterion}.met",
                    "answer": [{"valueBoolean": answer.status == "met"}],
                }
            ],
        }
        if answer.comment:
            group["item"].append(
                {
                    "linkId": f"{answer.criterion}.comment",
                    "answer": [{"valueString": answer.comment}],
                }
            )
        items.append(group)
    items.append(
        {
            "linkId": "decision",
            "answer": [
                {"valueCoding": {"system": SUBJECT_STATUS_SYSTEM, "code": status, "display": shown}}
            ],
        }
    )
    if comment:
        items.append({"linkId": "decision-comment", "answer": [{"valueString": comment}]})
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": identifier},
        "questionnaire": f"{QUESTIONNAIRE_URL}|{canonical_metadata('Questionnaire', QUESTIONNAIRE_ID)['version']}",
        "status": "completed",
        "subject": {"reference": patient},
        "authored": authored,
        "item": items,
    }
    if author:
        response["author"] = {"reference": author}
    return response
