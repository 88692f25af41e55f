"""The study's worksheet Questionnaire and the QuestionnaireResponse of an answer set."""

from __future__ import annotations

import json
from pathlib import Path

from fhir_trial.config import DEFAULT_RESOURCES_DIR
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.report import Answer
from fhir_trial.study.questionnaire import (
    QUESTIONNAIRE_URL,
    questionnaire,
    questionnaire_response,
)
from fhir_trial.validation import validate_resource


def test_one_item_per_answerable_criterion_and_the_decision(shared_dir: Path) -> None:
    resource = questionnaire()
    ids = [item["linkId"] for item in resource["item"]]
    assert ids == [s.id for s in CRITERIA if s.part_of is None] + ["decision", "decision-comment"]
    assert "inc-ana" not in ids  # parts are answered through inc-autoantibody
    assert resource["url"] == QUESTIONNAIRE_URL
    codes = [o["valueCoding"]["code"] for o in resource["item"][-2]["answerOption"]]
    assert codes == ["candidate", "ineligible", "screening"]
    schema = shared_dir / "schemas" / "fhir.schema.json"
    issues = validate_resource(resource, schema_path=schema)
    assert issues == [], [i.line() for i in issues]
    published = Path(DEFAULT_RESOURCES_DIR) / "Questionnaire-nct06010472-worksheet.json"
    assert json.loads(published.read_text(encoding="utf-8")) == resource


def test_a_response_is_schema_valid_and_names_author_answers_and_decision(
    shared_dir: Path,
) -> None:
    response = questionnaire_response(
        patient="Patient/p1",
        answers=[
            Answer("inc-consent", "met", "signed 2026-11-20"),
            Answer("exc-investigator-judgement", "not-met"),
        ],
        decision="refer",
        comment="refer to Dr Wang",
        author="Practitioner/dr1",
        authored="2026-11-26T10:00:00+00:00",
        identifier="urn:uuid:0b5c7b7e-6f53-4c1f-9a4f-2f1d6d0c1a11",
    )
    schema = shared_dir / "schemas" / "fhir.schema.json"
    issues = validate_resource(response, schema_path=schema)
    assert issues == [], [i.line() for i in issues]
    assert response["questionnaire"].startswith(QUESTIONNAIRE_URL + "|")
    assert response["author"] == {"reference": "Practitioner/dr1"}
    first = response["item"][0]
    assert first["linkId"] == "inc-consent"
    assert first["item"][0]["answer"] == [{"valueBoolean": True}]
    assert response["item"][-2]["answer"][0]["valueCoding"]["code"] == "candidate"
