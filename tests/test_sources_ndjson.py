"""Bulk Data NDJSON reader: grouping per patient, completeness, export errors, bad lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.errors import InputError
from fhir_trial.sources import NdjsonExport, records_from_ndjson


def write_ndjson(path: Path, resources: list[Any]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in resources]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def condition(cid: str, pid: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"}}


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    write_ndjson(folder / "Patient.000.ndjson", [patient("a"), patient("b")])
    write_ndjson(folder / "Condition.000.ndjson", [condition("c1", "a"), condition("c2", "b")])
    write_ndjson(folder / "Condition.001.ndjson", [condition("c3", "a")])
    write_ndjson(
        folder / "MedicationRequest.000.ndjson",
        [
            {
                "resourceType": "MedicationRequest",
                "id": "r1",
                "subject": {"reference": "Patient/b"},
                "medicationReference": {"reference": "Medication/m1"},
            }
        ],
    )
    write_ndjson(
        folder / "Medication.000.ndjson",
        [
            {"resourceType": "Medication", "id": "m1", "code": {"text": "drug"}},
            {"resourceType": "Medication", "id": "unused"},
        ],
    )
    write_ndjson(folder / "Encounter.000.ndjson", [{"resourceType": "Encounter", "id": "e"}])
    return folder


def by_patient(folder: Path, **kwargs: Any) -> dict[str, Any]:
    return {r.patient_reference: r for r in records_from_ndjson(folder, **kwargs)}


def test_groups_resources_per_patient(export: Path) -> None:
    records = by_patient(export)
    assert list(records) == ["Patient/a", "Patient/b"]
    assert sorted(c["id"] for c in records["Patient/a"].resources("Condition")) == ["c1", "c3"]
    assert [c["id"] for c in records["Patient/b"].resources("Condition")] == ["c2"]
    b = records["Patient/b"]
    request = b.resources("MedicationRequest")[0]
    assert b.medication_concept(request) == {"text": "drug"}
    assert b.count("Medication") == 1  # only the referenced one
    assert records["Patient/a"].count("Medication") == 0
    assert "Encounter" not in b.types()  # types the criteria never read are not kept


def test_absent_types_are_missing_data(export: Path) -> None:
    # No Observation file, no kick-off _type, no --complete: the export does not say it has none.
    record = by_patient(export)["Patient/a"]
    assert record.state("Observation") == "failed"
    assert record.failed["Observation"] == "Observation is not in the export"
    assert record.usable("Condition") and record.usable("MedicationRequest")


def test_absent_types_vouched_by_type_or_complete(export: Path) -> None:
    requested = {"Patient", "Condition", "Observation"}
    record = by_patient(export, requested_types=requested, complete_types=["Consent"])["Patient/a"]
    assert record.usable("Observation") and record.count("Observation") == 0
    assert record.usable("Consent")
    assert record.state("ResearchSubject") == "failed"  # neither requested nor complete


def test_missing_categories_are_failed(export: Path) -> None:
    record = by_patient(export, missing_categories=["Observation"])["Patient/a"]
    assert record.state("Observation") == "failed"
    assert record.usable("Condition")


def test_unknown_missing_category_is_refused(export: Path) -> None:
    with pytest.raises(InputError, match="Observations"):
        records_from_ndjson(export, missing_categories=["Observations"])


def test_bad_lines_warn_with_file_and_line(export: Path) -> None:
    write_ndjson(
        export / "AllergyIntolerance.000.ndjson",
        [
            {
                "resourceType": "AllergyIntolerance",
                "id": "x",
                "patient": {"reference": "Patient/a"},
            },
            '{"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/b"}, ',
            "[1, 2]",
        ],
    )
    with NdjsonExport(export) as reader:
        records = {r.patient_reference: r for r in reader}
        rejected = {line.place: line for line in reader.account.rejected}
    a, b = records["Patient/a"], records["Patient/b"]
    # The broken line names Patient/b: only b's allergies are in doubt ...
    assert b.state("AllergyIntolerance") == "failed"
    assert "AllergyIntolerance.000.ndjson:2" in b.failed["AllergyIntolerance"]
    assert rejected["AllergyIntolerance.000.ndjson:2"].patient == "b"
    # ... line 3 names nobody: nobody's category is failed for it, but everyone is warned.
    assert a.usable("AllergyIntolerance")
    assert rejected["AllergyIntolerance.000.ndjson:3"].patient is None
    assert any(
        "AllergyIntolerance.000.ndjson:3: not a FHIR resource" in w
        and "any patient's AllergyIntolerance data may be incomplete" in w
        for w in a.warnings
    )


def test_bad_line_naming_a_patient_fails_only_that_patient(export: Path) -> None:
    write_ndjson(
        export / "Consent.000.ndjson",
        ['{"resourceType": "Consent", "patient": {"reference": "Patient/a"} TRUNCATED'],
    )
    records = by_patient(export)
    assert records["Patient/a"].state("Consent") == "failed"
    assert records["Patient/b"].usable("Consent")


def test_log_error_event_fails_that_category(export: Path) -> None:
    write_ndjson(
        export / "log.ndjson",
        [
            {"eventId": "kickoff", "eventDetail": {}},
            {
                "eventId": "download_error",
                "eventDetail": {"fileUrl": "https://x.example/files/Observation.000.ndjson"},
            },
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "exception",
                        "diagnostics": "Consent export failed",
                    }
                ],
            },
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "diagnostics": "Condition fine"}],
            },
        ],
    )
    record = by_patient(export)["Patient/a"]
    assert record.state("Observation") == "failed"
    assert record.state("Consent") == "failed"
    assert record.usable("Condition")


def test_error_file_of_operation_outcomes(export: Path) -> None:
    write_ndjson(
        export / "OperationOutcome.000.ndjson",
        [
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "fatal", "expression": ["ResearchSubject"]}],
            }
        ],
    )
    assert by_patient(export)["Patient/b"].state("ResearchSubject") == "failed"


def test_manifest_output_without_file_fails_category(export: Path) -> None:
    manifest = {"output": [{"type": "Patient", "url": "u1"}, {"type": "Observation", "url": "u2"}]}
    (export / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    record = by_patient(export)["Patient/a"]
    assert record.state("Observation") == "failed"
    assert "manifest" in record.failed["Observation"]


def test_gzip_files_are_read(export: Path) -> None:
    with gzip.open(export / "Observation.000.ndjson.gz", "wt", encoding="utf-8") as handle:
        handle.write(
            json.dumps(
                {"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/a"}}
            )
        )
    assert by_patient(export)["Patient/a"].count("Observation") == 1


def test_not_a_folder_or_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        records_from_ndjson(tmp_path / "nope")
    with pytest.raises(InputError, match=r"no \.ndjson"):
        records_from_ndjson(tmp_path)


def test_temporary_index_is_removed(export: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    reader = NdjsonExport(export, temp_dir=scratch)
    assert reader.count_patients() == 2
    assert any(scratch.iterdir())
    assert len(list(reader)) == 2
    assert not any(scratch.iterdir())


def test_shared_bulk_export(shared_dir: Path) -> None:
    folder = shared_dir / "fixtures/synthea/bulk-ndjson-10-patients"
    patient_lines = (folder / "Patient.000.ndjson").read_text(encoding="utf-8").splitlines()
    expected_ids = [json.loads(line)["id"] for line in patient_lines if line.strip()]
    condition_owner: dict[str, int] = {}
    for line in (folder / "Condition.000.ndjson").read_text(encoding="utf-8").splitlines():
        owner = json.loads(line)["subject"]["reference"]
        condition_owner[owner] = condition_owner.get(owner, 0) + 1

    records = list(records_from_ndjson(folder))
    # The "10-patients" sample holds 13 Patient lines (3 deceased): one record each.
    assert len(records) == len(expected_ids) == 13
    assert sorted(r.patient_reference for r in records) == sorted(
        f"Patient/{i}" for i in expected_ids
    )
    for record in records:
        assert record.count("Condition") == condition_owner.get(record.patient_reference, 0)
        # No Observation file and no manifest naming _type: Observation is missing data.
        assert record.state("Observation") == "failed" and record.count("Observation") == 0
        assert record.warnings == []


@pytest.mark.parametrize(
    "line",
    [
        '{"resourceType": "Condition", "id": "\\udc00", "subject": {"reference": "Patient/a"}}',
        '{"resourceType": "Condition", "id": "n", "subject": {"reference": "Patient/a"}, "x": NaN}',
    ],
    ids=["lone-surrogate", "nan"],
)
def test_lines_that_are_not_strict_json_are_bad_lines(export: Path, line: str) -> None:
    # The standard library would accept both, and the surrogate then broke the upload's index.
    write_ndjson(export / "Condition.002.ndjson", [line])
    records = by_patient(export)
    assert records["Patient/a"].state("Condition") == "failed"
    assert "Condition.002.ndjson:1" in records["Patient/a"].failed["Condition"]
    assert records["Patient/b"].usable("Condition")
