"""fhir_trial.validation: both validators, FHIR paths, and resolution inside a set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_trial.canonical import valueset_url
from fhir_trial.validation import (
    Issue,
    fhir_path,
    model_issues,
    operation_outcome,
    reference_issues,
    schema_issues,
    validate_resource,
    validate_set,
)


@pytest.fixture(scope="module")
def schema(shared_dir: Path) -> Path:
    path = shared_dir / "schemas" / "fhir.schema.json"
    assert path.is_file()
    return path


def _study(**changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {"resourceType": "ResearchStudy", "id": "s", "status": "active"}
    study.update(changes)
    return study


def test_fhir_path_from_locations() -> None:
    assert fhir_path("ResearchStudy", ("arm", 0, "name")) == "ResearchStudy.arm[0].name"
    assert fhir_path("Patient", ("resource_type",)) == "Patient.resourceType"
    assert fhir_path("Patient", ("status__ext",)) == "Patient._status"
    assert (
        fhir_path("Group", ("characteristic", 3, "function-after[x]")) == "Group.characteristic[3]"
    )


def test_valid_resource_has_no_issues(schema: Path) -> None:
    assert validate_resource(_study(arm=[{"name": "A"}]), schema_path=schema) == []


def test_wrong_type_is_reported_with_its_path_by_both_validators(schema: Path) -> None:
    broken = _study(arm=[{"name": 5}])
    issues = validate_resource(broken, schema_path=schema)
    assert {i.expression for i in issues} == {"ResearchStudy.arm[0].name"}
    sources = {i.message.rsplit("[", 1)[-1] for i in issues}
    assert sources == {"fhir.resources R4B]", "R4 JSON Schema]"}
    assert all(i.is_error for i in issues)


def test_model_reports_missing_required_status() -> None:
    (issue,) = model_issues({"resourceType": "ResearchStudy", "id": "s"})
    assert (issue.code, issue.expression) == ("required", "ResearchStudy.status")


def test_schema_catches_what_the_model_does_not(schema: Path) -> None:
    # fhir.resources does not check required code bindings; the R4 JSON Schema has the enum.
    bogus = _study(status="bogus")
    assert model_issues(bogus) == []
    (issue,) = schema_issues(bogus, schema)
    assert issue.expression == "ResearchStudy.status"


def test_unknown_property_and_bad_date(schema: Path) -> None:
    issues = schema_issues({"resourceType": "Patient", "birthDate": "1990-13-45", "foo": 1}, schema)
    expressions = sorted(i.expression or "" for i in issues)
    assert expressions == ["Patient", "Patient.birthDate"]
    assert any("foo" in i.message for i in issues)


def test_unknown_resource_type(schema: Path) -> None:
    issues = validate_resource({"resourceType": "UserSession", "id": "x"}, schema_path=schema)
    assert len(issues) == 2
    assert all(i.expression == "resourceType" and i.is_error for i in issues)


def test_missing_schema_warns_and_models_still_run(tmp_path: Path) -> None:
    issues = validate_resource(_study(arm=[{"name": 5}]), schema_path=tmp_path / "none.json")
    warning, *rest = issues
    assert warning.severity == "warning" and "not found" in warning.message
    assert str(tmp_path / "none.json") in warning.message
    assert [i.expression for i in rest] == ["ResearchStudy.arm[0].name"]


def test_schema_that_is_not_the_fhir_schema(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"type": "object"}', encoding="utf-8")
    (issue,) = validate_resource(_study(), schema_path=path)
    assert issue.severity == "warning" and "definitions" in issue.message


def test_references_resolve_inside_the_set() -> None:
    org = {"resourceType": "Organization", "id": "o"}
    study = _study(sponsor={"reference": "Organization/o"}, site=[{"reference": "Location/x"}])
    issues = reference_issues([("study", study), ("org", org)])
    assert [(i.expression, i.source) for i in issues] == [
        ("ResearchStudy.site[0].reference", "study")
    ]
    # external and urn references are not checked
    other = _study(sponsor={"reference": "https://example.org/fhir/Organization/1"})
    assert reference_issues([("s", other)]) == []


def test_canonicals_resolve_inside_the_set() -> None:
    vs = {"resourceType": "ValueSet", "id": "sle", "url": valueset_url("sle"), "status": "active"}
    lib = {
        "resourceType": "Library",
        "status": "active",
        "relatedArtifact": [
            {"type": "depends-on", "resource": valueset_url("sle") + "|0.1.0"},
            {"type": "depends-on", "resource": valueset_url("absent")},
        ],
    }
    issues = reference_issues([("lib", lib), ("vs", vs)])
    assert [i.expression for i in issues] == ["Library.relatedArtifact[1].resource"]
    assert "absent" in issues[0].message


def test_context_and_bundle_entries_resolve() -> None:
    study = _study(sponsor={"reference": "Organization/o"})
    assert (
        reference_issues([("s", study)], context=[{"resourceType": "Organization", "id": "o"}])
        == []
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/p"}}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/q"}}},
        ],
    }
    (issue,) = reference_issues([("b", bundle)])
    assert issue.expression == "Bundle.entry[2].resource.subject.reference"


def test_validate_set_attributes_issues_to_sources(schema: Path) -> None:
    issues = validate_set([("a.json", _study(arm=[{"name": 5}]))], schema_path=schema)
    assert {i.source for i in issues} == {"a.json"}


def test_operation_outcome_is_itself_valid(schema: Path) -> None:
    issue = Issue("error", "value", "bad", "ResearchStudy.arm[0].name", "a.json")
    outcome = operation_outcome([issue])
    assert outcome["issue"][0] == {
        "severity": "error",
        "code": "value",
        "diagnostics": "a.json: bad",
        "expression": ["ResearchStudy.arm[0].name"],
    }
    assert validate_resource(outcome, schema_path=schema) == []
    empty = operation_outcome([], checked=3)
    assert empty["issue"][0]["severity"] == "information"
    assert validate_resource(empty, schema_path=schema) == []


def test_schema_validator_is_compiled_once_per_type(schema: Path) -> None:
    from fhir_trial import validation

    first = validation._type_validator(str(schema), "Patient")
    assert validation._type_validator(str(schema), "Patient") is first
    assert validation._type_validator(str(schema), "NotAType") is None
