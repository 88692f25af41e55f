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


# --- false errors that must not be raised, true errors that must stay ---------------------------
def _encounter(**changes: Any) -> dict[str, Any]:
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "e",
        "status": "finished",
        "class": {"code": "AMB"},
    }
    encounter.update(changes)
    return encounter


def _coverage(cid: str = "coverage") -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": cid,
        "status": "active",
        "beneficiary": {"reference": "#"},
        "payor": [{"display": "NO_INSURANCE"}],
    }


def test_contained_resources_resolve_and_are_validated_in_their_container(schema: Path) -> None:
    # Synthea's Claims: references to "#coverage" inside every entry of a Bundle.
    encounter = _encounter(contained=[_coverage()], reasonReference=[{"reference": "#coverage"}])
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": encounter}]}
    assert validate_set([("b", bundle)], schema_path=schema) == []
    # ... and a contained resource is still validated, with its path
    broken = _encounter(contained=[{**_coverage(), "status": 5}])
    issues = validate_set([("e", broken)], schema_path=schema)
    assert {i.expression for i in issues} == {"Encounter.contained[0].status"}
    assert len(issues) == 2  # the model and the schema
    missing = _encounter(reasonReference=[{"reference": "#nowhere"}])
    (issue,) = reference_issues([("e", missing)])
    assert "#nowhere" in issue.message


def test_bundle_entries_are_validated_one_by_one_with_their_paths(schema: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": _study()},
            {"resource": _study(arm=[{"name": 5}])},
            {"resource": {"resourceType": "NotAType", "id": "x"}},
        ],
    }
    issues = schema_issues(bundle, schema)
    assert [i.expression for i in issues] == [
        "Bundle.entry[1].resource.arm[0].name",
        "Bundle.entry[2].resource.resourceType",
    ]
    model = model_issues({**bundle, "entry": bundle["entry"][:2]})
    assert [i.expression for i in model] == ["Bundle.entry[1].resource.arm[0].name"]
    (unknown,) = model_issues(bundle)  # fhir.resources stops at the unknown type; no crash
    assert "NotAType" in unknown.message


def _transaction(*entries: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for url, resource in entries
        ],
    }


PATIENT_URN = "urn:uuid:0b8a1b6e-5d7e-4d38-9b8b-6f1c2a3d4e5f"


def test_transaction_references_by_urn_conditional_and_to_the_server() -> None:
    encounter = _encounter(
        subject={"reference": PATIENT_URN},
        participant=[{"individual": {"reference": "Practitioner?identifier=http://x|9"}}],
        serviceProvider={"reference": "Organization/on-the-server"},
        location=[{"location": {"reference": "https://other.example/fhir/Location/1"}}],
    )
    bundle = _transaction((PATIENT_URN, {"resourceType": "Patient"}), ("urn:uuid:e", encounter))
    assert reference_issues([("t", bundle)]) == []
    # a urn: that no entry carries is a broken transaction
    broken = _encounter(subject={"reference": "urn:uuid:not-in-the-bundle"})
    (issue,) = reference_issues([("t", _transaction(("urn:uuid:e", broken)))])
    assert issue.expression == "Bundle.entry[0].resource.subject.reference"
    assert "fullUrl" in issue.message


def test_collection_references_resolve_by_full_url_or_fail() -> None:
    patient = {"resourceType": "Patient", "id": "p"}
    good = _encounter(subject={"reference": "Patient/p"})
    base = "http://hospital.example/fhir"
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{base}/Patient/p", "resource": patient},
            {"fullUrl": f"{base}/Encounter/e", "resource": good},
            {"resource": _encounter(id="x", subject={"reference": f"{base}/Patient/p"})},
            {"resource": _encounter(id="y", subject={"reference": "Patient/absent"})},
        ],
    }
    (issue,) = reference_issues([("c", bundle)])
    assert issue.expression == "Bundle.entry[3].resource.subject.reference"


def test_project_extensions_are_known_and_unknown_ones_fail() -> None:
    from fhir_trial.canonical import BASE

    known = f"{BASE}/StructureDefinition/code-verification"
    study = _study(extension=[{"url": known, "valueString": "x"}])
    assert reference_issues([("s", study)]) == []
    unknown = _study(
        status="active",
        arm=[{"name": "A", "extension": [{"url": f"{BASE}/StructureDefinition/made-up"}]}],
    )
    (issue,) = reference_issues([("s", unknown)])
    assert issue.expression == "ResearchStudy.arm[0].extension[0].url"
    assert "no StructureDefinition of the project" in issue.message
    other = _study(extension=[{"url": f"{BASE}/extension/not-a-definition"}])
    assert len(reference_issues([("s", other)])) == 1
    # other publishers' extensions are not ours to check
    us_core = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
    assert reference_issues([("s", _study(extension=[{"url": us_core}]))]) == []


def test_fhir_version_4_0_1_is_not_an_error(schema: Path) -> None:
    # The published R4 schema's FHIRVersion enum lacks 4.0.1 (R4 itself); other values still fail.
    cap = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
    }
    assert validate_resource(cap, schema_path=schema) == []
    (issue,) = schema_issues({**cap, "fhirVersion": "9.9.9"}, schema)
    assert issue.expression == "CapabilityStatement.fhirVersion"
