"""Every input of a Bulk NDJSON export accounted for (issue 17, point 2).

Missing types (with and without ``_type`` / ``--complete``), unreadable and truncated lines (patient
known or not), duplicate ids (same / different content, deciding a criterion differently), orphans,
clashing Patients, oversized lines, and the split of large files into ranges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.cli import main
from fhir_trial.config import Settings
from fhir_trial.population import screen_ndjson
from fhir_trial.record import CATEGORIES
from fhir_trial.report import EligibilityReport
from fhir_trial.sources import ndjson_buckets
from fhir_trial.sources.ndjson import NdjsonExport

AS_OF = "2026-11-26"
SETTINGS = Settings(as_of=__import__("datetime").date.fromisoformat(AS_OF))
ACTIVE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    ]
}
LUNG_CANCER = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C34.90"}]}
HYPERTENSION = {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}


def patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1990-01-01", **extra}


def condition(cid: str, pid: str, code: dict[str, Any] = HYPERTENSION) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": ACTIVE,
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
    }


def write(path: Path, lines: list[Any], *, final_newline: bool = True) -> None:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    path.write_text(text + ("\n" if final_newline else ""), encoding="utf-8")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Patients a and b with a Condition each; no Observation file."""
    out = tmp_path / "export"
    out.mkdir()
    write(out / "Patient.000.ndjson", [patient("a"), patient("b")])
    write(out / "Condition.000.ndjson", [condition("c1", "a"), condition("c2", "b")])
    return out


def screen(folder: Path, **kwargs: Any) -> tuple[dict[str, EligibilityReport], NdjsonExport]:
    export = NdjsonExport(folder, **kwargs)
    reports = {s.report.patient: s.report for s in screen_ndjson(export, SETTINGS, workers=1)}
    return reports, export


def status(report: EligibilityReport, criterion: str) -> str:
    return report.criterion(criterion).status


# ----------------------------------------------------------------------------- missing types
def test_type_without_file_is_missing_data_not_absence(folder: Path) -> None:
    reports, export = screen(folder)
    report = reports["Patient/a"]
    # exc-heart-failure reads Observations (LVEF, NYHA): unknown, never not-met.
    assert status(report, "exc-heart-failure") == "unknown"
    assert status(report, "inc-sledai") == "unknown"
    assert any(
        "Observation could not be obtained: Observation is not in the export" in w
        for w in report.warnings
    )
    assert export.account.missing["Observation"] == "Observation is not in the export"
    assert "MISSING Observation" in "\n".join(export.account.summary())


def test_kickoff_type_in_manifest_vouches_for_an_empty_type(folder: Path) -> None:
    request = "https://ehr.example/fhir/Group/g/$export?_type=Patient,Condition,Observation"
    (folder / "manifest.json").write_text(
        json.dumps({"request": request, "output": []}), encoding="utf-8"
    )
    reports, export = screen(folder)
    assert (
        "Observation" not in reports["Patient/a"].warnings[0]
        if reports["Patient/a"].warnings
        else True
    )
    assert "Observation" in export.account.vouched
    assert "Observation" not in export.account.missing
    assert "Consent" in export.account.missing  # not in _type: still missing


def test_kickoff_without_type_vouches_for_nothing(folder: Path) -> None:
    (folder / "manifest.json").write_text(
        json.dumps({"request": "https://ehr.example/fhir/$export", "output": []}), encoding="utf-8"
    )
    _, export = screen(folder)
    assert "Observation" in export.account.missing


def test_requested_types_from_the_bulk_client_and_complete(folder: Path) -> None:
    _, export = screen(folder, requested_types={"Observation"}, complete_types=["Consent"])
    assert export.account.vouched["Observation"] == "the kick-off requested it in _type"
    assert "--complete" in export.account.vouched["Consent"]
    assert "ResearchSubject" in export.account.missing


def test_every_type_complete_gives_absence(folder: Path) -> None:
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert export.account.missing == {}
    assert status(reports["Patient/a"], "exc-malignancy") == "not-met"


# ----------------------------------------------------------------------------- bad lines
def test_corrupt_line_with_known_patient_touches_only_that_patient(folder: Path) -> None:
    write(
        folder / "Condition.000.ndjson",
        [
            condition("c1", "a"),
            '{"resourceType": "Condition", "subject": {"reference": "Patient/b"}, x',
            condition("c2", "b"),
        ],
    )
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert status(reports["Patient/b"], "exc-malignancy") == "unknown"
    assert status(reports["Patient/a"], "exc-malignancy") == "not-met"
    [rejected] = export.account.rejected
    assert (rejected.place, rejected.patient, rejected.resource_type) == (
        "Condition.000.ndjson:2",
        "b",
        "Condition",
    )
    assert export.account.types["Condition"].rejected == 1
    assert not any("Condition.000.ndjson:2" in w for w in reports["Patient/a"].warnings)


def test_corrupt_line_with_unknown_patient_warns_everyone_fails_nobody(folder: Path) -> None:
    write(
        folder / "Condition.000.ndjson",
        [condition("c1", "a"), '{"resourceType": "Cond', condition("c2", "b")],
    )
    reports, export = screen(folder, complete_types=CATEGORIES)
    for report in reports.values():
        assert status(report, "exc-malignancy") == "not-met"
        assert any(
            "Condition.000.ndjson:2" in w and "any patient's Condition" in w
            for w in report.warnings
        )
    assert export.account.lost_unknown_patient == {"Condition": 1}
    assert export.account.rejected[0].patient is None
    assert "cannot be told whose" in "\n".join(export.account.summary())


def test_truncated_last_line_makes_its_patient_unknown(folder: Path) -> None:
    # Bulk servers write the subject early (resourceType, id, subject, ...): the cut comes later.
    cancer = condition("c3", "a", LUNG_CANCER)
    text = json.dumps({"subject": cancer.pop("subject"), **cancer})
    write(folder / "Condition.000.ndjson", [condition("c2", "b"), text[:-15]], final_newline=False)
    reports, export = screen(folder, complete_types=CATEGORIES)
    # Patient a's only Condition line was cut: unknown, not not-met (and not met either).
    malignancy = reports["Patient/a"].criterion("exc-malignancy")
    assert malignancy.status == "unknown"
    assert any(
        "Condition could not be obtained: an unreadable line in the export "
        "(Condition.000.ndjson:2)" in w
        for w in reports["Patient/a"].warnings
    )
    assert status(reports["Patient/b"], "exc-malignancy") == "not-met"
    assert export.account.rejected_total == 1
    assert export.account.rejected[0].patient == "a"


def test_unreadable_patient_line_is_named_and_not_screened(folder: Path) -> None:
    write(folder / "Patient.000.ndjson", [patient("a"), '{"resourceType": "Patient", "id": "b", '])
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert list(reports) == ["Patient/a"]
    [rejected] = export.account.rejected
    assert rejected.patient == "b" and "not screened" in rejected.why
    # b's Condition now points to a patient the export does not hold.
    assert any("Condition/c2" in o and "Patient/b" in o for o in export.account.orphans)


# ----------------------------------------------------------------------------- duplicates
def test_identical_duplicate_is_kept_once(folder: Path) -> None:
    write(folder / "Condition.001.ndjson", [condition("c1", "a")])
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert export.account.duplicates_same == 1
    assert export.account.duplicates_different_total == 0
    assert status(reports["Patient/a"], "exc-malignancy") == "not-met"


def test_different_duplicate_that_decides_nothing_differently_is_named(folder: Path) -> None:
    changed = condition("c1", "a") | {"note": [{"text": "re-sent"}]}
    write(folder / "Condition.001.ndjson", [changed])
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert export.account.duplicates_different == [
        "Condition/c1 in Patient/a (Condition.000.ndjson:1, Condition.001.ndjson:1)"
    ]
    assert export.account.needs_review == []
    assert status(reports["Patient/a"], "exc-malignancy") == "not-met"


def test_duplicate_deciding_differently_is_needs_review_naming_both(folder: Path) -> None:
    # The same Condition id sent again as an active lung cancer: was silently ignored.
    write(folder / "Condition.001.ndjson", [condition("c1", "a", LUNG_CANCER)])
    reports, export = screen(folder, complete_types=CATEGORIES)
    result = reports["Patient/a"].criterion("exc-malignancy")
    assert result.status == "needs-review"
    assert "Condition.000.ndjson:1 gives not-met" in result.reason
    assert "Condition.001.ndjson:1 gives met" in result.reason
    assert reports["Patient/a"].verdict != "ineligible" or any(
        c.status == "not-met" and c.kind == "inclusion" for c in reports["Patient/a"].criteria
    )
    assert export.account.needs_review and "exc-malignancy" in export.account.needs_review[0]
    assert status(reports["Patient/b"], "exc-malignancy") == "not-met"


# ----------------------------------------------------------------------------- orphans, clashes
def test_orphans_are_counted_and_named(folder: Path) -> None:
    write(
        folder / "Condition.001.ndjson",
        [
            {"resourceType": "Condition", "id": "lost", "code": HYPERTENSION},
            condition("stray", "nobody"),
        ],
    )
    _, export = screen(folder, complete_types=CATEGORIES)
    assert export.account.orphans_total == 2
    assert sorted(export.account.orphans) == [
        "Condition/lost: no reference to a patient",
        "Condition/stray: Patient/nobody is not in the export",
    ]
    assert export.account.types["Condition"].without_patient == 2


def test_clashing_patients_are_never_merged(folder: Path) -> None:
    write(folder / "Patient.001.ndjson", [patient("a", gender="male", birthDate="1950-05-05")])
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert "Patient/a" not in reports
    assert export.account.clashing_patients == ["a"]
    assert "two different Patients share this id" in "\n".join(export.account.summary())


def test_same_patient_twice_is_one_patient(folder: Path) -> None:
    write(folder / "Patient.001.ndjson", [patient("a")])
    reports, export = screen(folder, complete_types=CATEGORIES)
    assert sorted(reports) == ["Patient/a", "Patient/b"]
    assert export.account.duplicates_same == 1 and not export.account.clashing_patients


# ----------------------------------------------------------------------------- sizes
def test_oversized_line_is_refused_without_stopping(folder: Path) -> None:
    big = condition("big", "a") | {"note": [{"text": "x" * 5000}]}
    write(folder / "Condition.001.ndjson", [condition("c9", "b"), big, condition("c8", "b")])
    reports, export = screen(folder, complete_types=CATEGORIES, max_line_bytes=1000)
    assert export.account.oversized == ["Condition.001.ndjson:2"]
    assert export.account.rejected[0].why.startswith("longer than 1000 bytes")
    assert len(reports) == 2
    assert export.account.types["Condition"].resources == 4


def test_large_files_split_in_ranges_give_the_same_result(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[Any] = [condition(f"c{n}", "ab"[n % 2]) for n in range(300)]
    lines[150] = '{"resourceType": "Condition", "subject": {"reference": "Patient/a"} cut'
    lines[151] = "x" * 3000  # oversized, straddling range bounds
    write(folder / "Condition.000.ndjson", lines)
    whole_reports, whole = screen(folder, complete_types=CATEGORIES, max_line_bytes=2000)
    monkeypatch.setattr(ndjson_buckets, "RANGE_BYTES", 1000)
    monkeypatch.setattr(ndjson_buckets, "BLOCK_BYTES", 97)
    monkeypatch.setattr(ndjson_buckets, "BUCKET_BYTES", 2000)
    split_reports, split = screen(folder, complete_types=CATEGORIES, max_line_bytes=2000)
    assert len(split.jobs) > 1
    assert {k: r.to_json() for k, r in split_reports.items()} == {
        k: r.to_json() for k, r in whole_reports.items()
    }
    assert split.account.to_json() == whole.account.to_json()
    assert [r.place for r in split.account.rejected] == [
        "Condition.000.ndjson:151",
        "Condition.000.ndjson:152",
    ]
    assert split.account.types["Condition"].resources == 298


def test_two_workers_give_the_same_reports_and_account(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ndjson_buckets, "BUCKET_BYTES", 200)  # several buckets
    write(folder / "Condition.001.ndjson", [condition("c1", "a", LUNG_CANCER), "{broken"])
    serial = NdjsonExport(folder)
    one = [s.report.to_json() for s in screen_ndjson(serial, SETTINGS, workers=1)]
    parallel = NdjsonExport(folder)
    two = [s.report.to_json() for s in screen_ndjson(parallel, SETTINGS, workers=2)]
    assert one == two
    assert serial.account.to_json() == parallel.account.to_json()


# ----------------------------------------------------------------------------- end to end
def test_cli_synthea_export_without_observations(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_dir / "fixtures/synthea/bulk-ndjson-10-patients"
    assert not (folder / "Observation.000.ndjson").exists()
    out_file = tmp_path / "r.jsonl"
    args = ["screen-population", "--ndjson", str(folder), "--as-of", "2024-08-06"]
    assert main([*args, "--output", str(out_file), "--no-progress", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "MISSING Observation: Observation is not in the export" in captured.err
    assert "not read by the criteria: " in captured.err and "Encounter" in captured.err
    reports = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert len(reports) == 13
    observation_criteria = ("inc-sledai", "inc-neutrophils", "inc-hemoglobin", "inc-lvef")
    for report in reports:
        if "deceased" in report:
            continue
        statuses = {c["id"]: c for c in report["criteria"]}
        for criterion in observation_criteria:
            assert statuses[criterion]["status"] == "unknown", (report["patient"], criterion)
        assert statuses["exc-heart-failure"]["status"] != "not-met"
        assert any("Observation is not in the export" in w for w in report["warnings"])
    # Told the export is complete for Observation, the same criteria follow the absence rules.
    assert main([*args, "--complete", "Observation", "--format", "json", "--no-progress"]) == 0
    assert "MISSING Observation" not in capsys.readouterr().err


@pytest.mark.parametrize("small_blocks", [False, True])
def test_lines_routed_alone_keep_their_place_among_a_patients_run(
    folder: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: bool
) -> None:
    # A line naming its patient twice (subject and asserter) is routed on its own; the lines
    # naming it once travel in the patient's run. The first version of an id must still be the
    # one earliest in the file, whichever way each version travelled.
    def asserted(cid: str, pid: str, code: dict[str, Any]) -> dict[str, Any]:
        return condition(cid, pid, code) | {"asserter": {"reference": f"Patient/{pid}"}}

    filler = [condition(f"f{n}", "ab"[n % 2]) for n in range(40)]
    write(
        folder / "Condition.001.ndjson",
        [
            asserted("c9", "a", LUNG_CANCER),  # line 1, alone: first, decides met
            *filler[:20],
            condition("c9", "a"),  # line 22, in a's run
            condition("c8", "b"),  # line 23, in b's run: first, decides not-met
            *filler[20:],
            asserted("c8", "b", LUNG_CANCER),  # line 44, alone
        ],
    )
    if small_blocks:  # runs cut into several flushes and ranges
        monkeypatch.setattr(ndjson_buckets, "RANGE_BYTES", 1500)
        monkeypatch.setattr(ndjson_buckets, "BLOCK_BYTES", 300)
        monkeypatch.setattr(ndjson_buckets, "FLUSH_BYTES", 600)
    reports, _ = screen(folder, complete_types=CATEGORIES)
    a = reports["Patient/a"].criterion("exc-malignancy").reason
    b = reports["Patient/b"].criterion("exc-malignancy").reason
    assert "Condition/c9 at Condition.001.ndjson:1 gives met" in a
    assert "other version at Condition.001.ndjson:22 gives not-met" in a
    assert "Condition/c8 at Condition.001.ndjson:23 gives not-met" in b
    assert "other version at Condition.001.ndjson:44 gives met" in b


# ----------------------------------------------------------------------------- what-if runs
def _placed(resources: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    return [(f"Condition.000.ndjson:{n}", r) for n, r in enumerate(resources, 1)]


@pytest.mark.parametrize(
    "resources",
    [
        [condition("c1", "a"), condition("c2", "a", LUNG_CANCER)],  # nothing twice
        [condition("c1", "a"), condition("c1", "a")],  # the same copy twice
        [condition("c1", "a"), condition("c1", "a", LUNG_CANCER)],  # two versions
        [condition("c1", "a"), {"resourceType": 7, "id": "x"}],  # one the record leaves out
    ],
    ids=["clean", "identical-copy", "two-versions", "left-out"],
)
def test_what_if_runs_give_what_building_the_record_again_gives(
    resources: list[dict[str, Any]],
) -> None:
    from fhir_trial.sources.ndjson import assemble_record
    from fhir_trial.sources.ndjson_versions import screen_patient, screen_with_what_if

    builds: list[int] = []

    def build(items: list[dict[str, Any]]) -> Any:
        builds.append(len(items))
        return assemble_record(patient("a", birthDate="1950-01-01"), items, lambda ref: None)

    what_if = (SETTINGS.replace(max_age=120), SETTINGS.replace(min_age=80))
    placed = _placed(resources)
    report, variants, notes = screen_with_what_if(build, placed, SETTINGS, what_if)
    built_for_all = len(builds)
    again = [screen_patient(build, placed, variant)[0] for variant in what_if]
    assert [v.to_json() for v in variants] == [v.to_json() for v in again]
    assert report.to_json() == screen_patient(build, placed, SETTINGS)[0].to_json()
    assert variants[0].criterion("inc-age").status != report.criterion("inc-age").status
    if notes.duplicates_same == 0 and not notes.duplicates_different and len(resources) == 2:
        clean = all(isinstance(r["resourceType"], str) for r in resources)
        # The clean patient's record is built once for all three runs.
        assert built_for_all == (1 if clean else 2 + 2 * len(what_if))
