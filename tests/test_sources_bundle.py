"""Bundle reader: shapes of Bundles, patient selection, references, malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_population import evaluation_settings

from fhir_trial.errors import InputError, NotFhirError, NotJsonError, PatientSelectionError
from fhir_trial.evaluate import evaluate
from fhir_trial.record import CATEGORIES
from fhir_trial.sources import (
    patients_in_bundle,
    read_json_file,
    record_from_bundle,
    records_from_bundle,
)


def bundle(btype: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


def entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resource": resource}
    if full_url:
        out["fullUrl"] = full_url
    return out


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1990-01-01"}


def condition(cid: str, subject: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": subject}}


# ------------------------------------------------------------------------------ read_json_file
def test_read_json_file_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(NotJsonError, match=r"x\.json is not JSON \(line 1"):
        read_json_file(path)


def test_read_json_file_binary(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(NotJsonError):
        read_json_file(path)


@pytest.mark.parametrize(
    "content",
    ['{"resourceType": "Bundle", "id": "\\ud800"}', '{"resourceType": "Bundle", "total": NaN}'],
    ids=["lone-surrogate", "nan"],
)
def test_read_json_file_refuses_what_is_not_strict_json(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(NotJsonError, match=r"x\.json is not JSON \(line 1"):
        read_json_file(path)


@pytest.mark.parametrize("content", ["[1, 2]", '{"hello": "world"}', '"text"'])
def test_read_json_file_json_but_not_fhir(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(NotFhirError, match="not a FHIR resource"):
        read_json_file(path)


def test_read_json_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_json_file(tmp_path / "absent.json")


# ------------------------------------------------------------------------------ bundle shapes
@pytest.mark.parametrize("btype", ["collection", "searchset", "transaction", "batch", "document"])
def test_every_supported_bundle_type_gives_a_complete_record(btype: str) -> None:
    b = bundle(btype, entry(patient("p1")), entry(condition("c1", "Patient/p1")))
    record = record_from_bundle(b)
    assert record.patient_reference == "Patient/p1"
    assert record.count("Condition") == 1
    assert all(record.usable(category) for category in CATEGORIES)


def test_unsupported_bundle_type_is_refused() -> None:
    with pytest.raises(NotFhirError, match="history"):
        record_from_bundle(bundle("history", entry(patient("p1"))))


def test_other_resource_than_bundle_is_refused() -> None:
    with pytest.raises(NotFhirError, match="got a Observation"):
        record_from_bundle({"resourceType": "Observation", "id": "o"})


def test_bare_patient_gives_record_with_only_patient_category() -> None:
    record = record_from_bundle(patient("solo"))
    assert record.patient_reference == "Patient/solo"
    assert record.usable("Patient")
    assert not record.usable("Condition")  # nothing says the rest is complete
    assert record.state("Condition") == "not-requested"


def test_urn_uuid_references_are_resolved_and_assigned() -> None:
    pat_url = "urn:uuid:11111111-1111-1111-1111-111111111111"
    med_url = "urn:uuid:22222222-2222-2222-2222-222222222222"
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "x"}}
    request = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "subject": {"reference": pat_url},
        "medicationReference": {"reference": med_url},
    }
    b = bundle(
        "transaction",
        entry(patient("p1"), pat_url),
        entry(medication, med_url),
        entry(request, "urn:uuid:33333333-3333-3333-3333-333333333333"),
    )
    record = record_from_bundle(b)
    assert record.count("MedicationRequest") == 1
    assert record.medication_concept(request) == {"text": "x"}
    assert record.resolve(pat_url) is record.patient


def test_several_patients_need_a_choice_naming_the_candidates() -> None:
    b = bundle("collection", entry(patient("a")), entry(patient("b")))
    with pytest.raises(PatientSelectionError, match="--patient") as caught:
        record_from_bundle(b)
    assert caught.value.candidates == ["Patient/a", "Patient/b"]
    assert "Patient/a" in caught.value.message and "Patient/b" in caught.value.message


def test_chosen_patient_gets_only_its_own_resources() -> None:
    url_b = "urn:uuid:bbbbbbbb-0000-0000-0000-000000000000"
    org = {"resourceType": "Organization", "id": "org"}
    b = bundle(
        "collection",
        entry(patient("a")),
        entry(patient("b"), url_b),
        entry(condition("ca", "Patient/a")),
        entry(condition("cb1", "Patient/b")),
        entry(condition("cb2", url_b)),
        entry(condition("cx", "Patient/not-in-bundle")),
        entry(org),
    )
    for choice in ("b", "Patient/b", url_b):
        record = record_from_bundle(b, patient=choice)
        assert record.patient_reference == "Patient/b"
        assert sorted(c["id"] for c in record.resources("Condition")) == ["cb1", "cb2"]
        assert record.count("Organization") == 1  # shared resources come along
        assert record.count("Patient") == 1
    record_a = record_from_bundle(b, patient="a")
    assert [c["id"] for c in record_a.resources("Condition")] == ["ca"]


def test_absolute_reference_to_the_patient_is_recognised() -> None:
    b = bundle(
        "searchset",
        entry(patient("p9"), "https://ehr.example/fhir/Patient/p9"),
        entry(
            condition("c", "https://ehr.example/fhir/Patient/p9/_history/2"),
            "https://ehr.example/fhir/Condition/c",
        ),
    )
    assert record_from_bundle(b).count("Condition") == 1


def test_unknown_patient_choice_lists_candidates() -> None:
    b = bundle("collection", entry(patient("a")))
    with pytest.raises(PatientSelectionError, match="Patient/a"):
        record_from_bundle(b, patient="zzz")


def test_bundle_without_patient() -> None:
    b = bundle("batch", entry({"resourceType": "Organization", "id": "o"}))
    with pytest.raises(PatientSelectionError, match="no Patient"):
        record_from_bundle(b)
    assert patients_in_bundle(b) == []
    assert list(records_from_bundle(b)) == []


def test_records_from_bundle_one_per_patient() -> None:
    b = bundle(
        "collection",
        entry(patient("a")),
        entry(patient("b")),
        entry(condition("ca", "Patient/a")),
        entry(condition("cb", "Patient/b")),
    )
    records = list(records_from_bundle(b))
    assert [r.patient_reference for r in records] == ["Patient/a", "Patient/b"]
    assert [[c["id"] for c in r.resources("Condition")] for r in records] == [["ca"], ["cb"]]


def test_unknown_types_are_skipped_with_a_warning() -> None:
    b = bundle(
        "collection",
        entry(patient("a")),
        entry({"resourceType": "Paitent", "id": "typo"}),
        entry({"resourceType": "Paitent", "id": "typo2"}),
        entry({"id": "no-type"}),
        {"request": {"method": "DELETE", "url": "Observation/1"}},
    )
    record = record_from_bundle(b)
    assert record.types() == ["Patient"]
    assert any("2 Bundle entries" in w and "Paitent" in w for w in record.warnings)
    assert any("(none)" in w for w in record.warnings)


def test_searchset_outcome_entries_are_not_data() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    b = bundle("searchset", entry(patient("a")))
    b["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    assert "OperationOutcome" not in record_from_bundle(b).types()


def test_entry_list_must_be_a_list() -> None:
    with pytest.raises(NotFhirError, match=r"Bundle\.entry"):
        record_from_bundle({"resourceType": "Bundle", "type": "collection", "entry": {}})


# ------------------------------------------------------------------------------ shared fixtures
def synthea_files(shared_dir: Path) -> list[Path]:
    return sorted((shared_dir / "fixtures/synthea/bundles").glob("*.json"))


def blaze_files(shared_dir: Path) -> list[Path]:
    return sorted((shared_dir / "fixtures/synthea/blaze").glob("*.json"))


def test_synthea_bundles_load_and_evaluate(shared_dir: Path, tmp_path: Path) -> None:
    files = synthea_files(shared_dir)
    assert len(files) == 13
    settings = evaluation_settings(tmp_path)
    for path in files:
        data = read_json_file(path)
        expected_id = next(
            e["resource"]["id"] for e in data["entry"] if e["resource"]["resourceType"] == "Patient"
        )
        record = record_from_bundle(data)
        assert record.patient_reference == f"Patient/{expected_id}"
        # Every Condition of a one-patient Synthea Bundle belongs to that patient.
        conditions = [e for e in data["entry"] if e["resource"]["resourceType"] == "Condition"]
        assert record.count("Condition") == len(conditions)
        assert record.warnings == []
        report = evaluate(record, settings)
        assert len(report.criteria) == 29


def test_blaze_bundles_load(shared_dir: Path, tmp_path: Path) -> None:
    files = blaze_files(shared_dir)
    assert len(files) == 7
    settings = evaluation_settings(tmp_path)
    with_patient = 0
    for path in files:
        data = read_json_file(path)
        found = patients_in_bundle(data)
        if path.name.startswith("0-"):
            # batches of shared Organizations / Practitioners: no Patient at all
            assert found == []
            with pytest.raises(PatientSelectionError):
                record_from_bundle(data)
            continue
        with_patient += 1
        assert found == [f"Patient/{path.stem}"]
        record = record_from_bundle(data)
        encounters = [e for e in data["entry"] if e["resource"]["resourceType"] == "Encounter"]
        assert record.count("Encounter") == len(encounters)  # urn:uuid subjects recognised
        assert evaluate(record, settings).patient == f"Patient/{path.stem}"
    assert with_patient == 5


def test_concatenated_patients_stay_apart(shared_dir: Path) -> None:
    """Two Synthea transaction Bundles merged into one: each record keeps only its own data."""
    first, second = synthea_files(shared_dir)[:2]
    a, b = read_json_file(first), read_json_file(second)
    merged = bundle("collection", *a["entry"], *b["entry"])
    ids = patients_in_bundle(merged)
    assert len(ids) == 2
    with pytest.raises(PatientSelectionError):
        record_from_bundle(merged)
    for pid, source in zip(ids, (a, b), strict=True):
        record = record_from_bundle(merged, patient=pid)
        own = sum(1 for e in source["entry"] if e["resource"]["resourceType"] == "Observation")
        assert record.count("Observation") == own


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle("collection", entry(patient("a")))), encoding="utf-8")
    assert record_from_bundle(read_json_file(path)).patient_reference == "Patient/a"
