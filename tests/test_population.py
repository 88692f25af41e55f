"""Population screening: feasibility counting, sources, workers, and the screen-population CLI."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from fhir_trial.cli import main
from fhir_trial.config import DEFAULT_RESOURCES_DIR, Settings
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.population import (
    Feasibility,
    Screened,
    Skipped,
    bounded_map,
    record_from_payload,
    record_payload,
    rules_out,
    screen_bundle_files,
    screen_ndjson,
    verdict_line,
)
from fhir_trial.record import PatientRecord
from fhir_trial.report import CriterionResult, EligibilityReport, Status
from fhir_trial.sources.ndjson import NdjsonExport

# The ValueSet ids the criteria read (from the project's brief); used only when the real
# resources/ValueSet-*.json have not been built in this checkout yet.
VALUESET_IDS = (
    "sle",
    "lupus-unspecified-or-cutaneous",
    "drug-induced-lupus",
    "sledai-2k-total",
    "bilag-2004-panel",
    "bilag-2004-organ-systems",
    "bilag-2004-grades",
    "ana-immunofluorescence-titer",
    "ana-other-method",
    "anti-dsdna",
    "anti-sm",
    "positive-result-answers",
    "interpretation-above-normal",
    "interpretation-critical",
    "neutrophils-absolute",
    "neutrophils-percent",
    "hemoglobin",
    "lvef",
    "oral-corticosteroids",
    "immunosuppressants",
    "sle-biologics",
    "hydroxychloroquine",
    "route-oral",
    "route-intravenous",
    "route-local",
    "trial-medication-allergens",
    "anaphylaxis-reactions",
    "systemic-antibacterials",
    "antivirals-herpes",
    "b-cell-therapies",
    "active-infections",
    "immunodeficiency",
    "immunosuppressed-state",
    "nyha-class-iii-iv",
    "heart-failure",
    "epilepsy",
    "cns-disorders",
    "severe-herpes",
    "malignancy",
    "malignancy-carve-outs",
    "herpes-varicella-infection",
    "pregnancy-status",
    "pregnant-answers",
    "not-pregnant-answers",
    "pregnancy-findings",
    "hcg-tests",
    "breastfeeding-status",
    "yes-answers",
    "no-answers",
    "skin-disease-exclusion",
    "research-consent-scope",
)

AS_OF = dt.date(2026, 11, 26)


def resources_dir(tmp_path: Path) -> str:
    """The real resources when their ValueSets exist, else empty stand-ins (evaluation must still run)."""
    if any(DEFAULT_RESOURCES_DIR.glob("ValueSet-*.json")):
        return str(DEFAULT_RESOURCES_DIR)
    stub = tmp_path / "stub-resources"
    stub.mkdir(exist_ok=True)
    for vid in VALUESET_IDS:
        body = {"resourceType": "ValueSet", "id": vid, "url": f"urn:stub:{vid}", "expansion": {}}
        (stub / f"ValueSet-{vid}.json").write_text(json.dumps(body), encoding="utf-8")
    return str(stub)


def evaluation_settings(tmp_path: Path) -> Settings:
    """Settings for evaluating fixture patients on a fixed date."""
    return Settings(as_of=AS_OF, resources_dir=resources_dir(tmp_path))


# ------------------------------------------------------------------------------ feasibility
def make_report(statuses: dict[str, Status], patient: str = "Patient/x") -> EligibilityReport:
    """A report whose criteria have the given statuses (others: needs-review)."""
    results = tuple(
        CriterionResult(
            id=spec.id,
            kind=spec.kind,
            ref=spec.ref,
            status=statuses.get(spec.id, "needs-review"),
            reason="",
            part_of=spec.part_of,
        )
        for spec in CRITERIA
    )
    ruled_out = any(rules_out(r.kind, r.status) for r in results if r.part_of is None)
    return EligibilityReport(
        study="NCT06010472",
        patient=patient,
        as_of=AS_OF.isoformat(),
        verdict="ineligible" if ruled_out else "potentially-eligible",
        criteria=results,
    )


def test_rules_out() -> None:
    assert rules_out("inclusion", "not-met")
    assert rules_out("exclusion", "met")
    assert not rules_out("inclusion", "met")
    assert not rules_out("exclusion", "not-met")
    assert not rules_out("inclusion", "unknown")


def test_feasibility_counts_removals_funnel_and_statuses() -> None:
    feasibility = Feasibility()
    feasibility.add(make_report({"inc-age": "not-met", "exc-malignancy": "met"}))
    feasibility.add(make_report({"inc-age": "met", "exc-malignancy": "met"}))
    feasibility.add(make_report({"inc-age": "met", "inc-ana": "not-met"}))  # part: never removes
    feasibility.add(make_report({"inc-age": "met"}))

    assert feasibility.total == 4
    assert feasibility.verdicts["ineligible"] == 2
    assert feasibility.verdicts["potentially-eligible"] == 2
    assert feasibility.removes["inc-age"] == 1
    assert feasibility.removes["exc-malignancy"] == 2  # counted even when already out
    assert feasibility.removes["inc-ana"] == 0
    funnel = dict(feasibility.funnel())
    assert "inc-ana" not in funnel
    assert funnel["inc-age"] == 3
    assert funnel["exc-drug-allergy"] == 3
    assert funnel["exc-malignancy"] == 2  # only the second patient leaves here
    assert funnel["exc-investigator-judgement"] == 2
    assert feasibility.statuses["inc-age"]["met"] == 3
    assert feasibility.statuses["inc-ana"]["not-met"] == 1

    data = feasibility.to_json()
    assert data["patients"] == 4
    assert [row["id"] for row in data["criteria"]] == [spec.id for spec in CRITERIA]
    ana = next(row for row in data["criteria"] if row["id"] == "inc-ana")
    assert ana["removes"] is None and ana["partOf"] == "inc-autoantibody"

    rows = list(csv.DictReader(io.StringIO(feasibility.to_csv())))
    assert len(rows) == len(CRITERIA) + 1  # the deceased step first
    assert (rows[0]["id"], rows[0]["removes"], rows[0]["remaining"]) == ("deceased", "0", "4")
    age = next(row for row in rows if row["id"] == "inc-age")
    assert (age["removes"], age["remaining"], age["met"], age["not-met"]) == ("1", "3", "3", "1")

    text = feasibility.to_text()
    assert "4 patients screened as of 2026-11-26" in text
    assert "ineligible 2" in text


def test_feasibility_lists_skipped_inputs() -> None:
    feasibility = Feasibility()
    feasibility.skipped.append(Skipped("x.json", "no Patient in this Bundle"))
    assert "skipped x.json: no Patient" in feasibility.to_text()
    assert feasibility.to_json()["skipped"] == [
        {"source": "x.json", "reason": "no Patient in this Bundle"}
    ]


def test_verdict_line_names_what_rules_out() -> None:
    line = verdict_line(Screened(make_report({"inc-age": "not-met"}, "Patient/p"), "file"))
    assert line.startswith("ineligible")
    assert "file (Patient/p)" in line and "ruled out by inc-age" in line
    open_line = verdict_line(Screened(make_report({"inc-sledai": "unknown"})))
    assert "1 unknown" in open_line and open_line.startswith("potentially-eligible")


# ------------------------------------------------------------------------------ machinery
def _square(value: int) -> int:
    return value * value


def test_bounded_map_keeps_order_in_a_process_pool() -> None:
    assert list(bounded_map(_square, range(30), workers=2)) == [n * n for n in range(30)]
    assert list(bounded_map(_square, iter(range(5)), workers=1)) == [0, 1, 4, 9, 16]


def test_record_payload_round_trip() -> None:
    record = PatientRecord()
    record.add({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"}})
    record.add({"resourceType": "Patient", "id": "p"})
    record.mark_obtained("Patient", "Condition")
    record.mark_failed("Observation", "timed out")
    record.warnings.append("w")
    copy = record_from_payload(record_payload(record))
    assert copy.patient_reference == "Patient/p"
    assert copy.count("Condition") == 1
    assert copy.obtained == {"Patient", "Condition"}
    assert copy.failed == {"Observation": "timed out"}
    assert copy.warnings == ["w"]


# ------------------------------------------------------------------------------ sources
def test_screen_bundle_files_skips_unusable_inputs(shared_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("nope", encoding="utf-8")
    blaze = shared_dir / "fixtures/synthea/blaze"
    skipped: list[Skipped] = []
    settings = evaluation_settings(tmp_path)
    screened = list(screen_bundle_files([blaze, bad], settings, skipped=skipped))
    assert sorted(s.report.patient for s in screened) == sorted(
        f"Patient/{p.stem}" for p in blaze.glob("*.json") if not p.name.startswith("0-")
    )
    assert sorted(s.source for s in skipped) == sorted(
        [p.name for p in blaze.glob("0-*.json")] + ["bad.json"]
    )
    assert any("not JSON" in s.reason for s in skipped)


def test_screen_ndjson_with_workers_matches_serial(shared_dir: Path, tmp_path: Path) -> None:
    folder = shared_dir / "fixtures/synthea/bulk-ndjson-10-patients"
    settings = evaluation_settings(tmp_path)
    with NdjsonExport(folder) as export:
        serial = [s.report.to_json() for s in screen_ndjson(export, settings)]
    with NdjsonExport(folder) as export:
        parallel = [s.report.to_json() for s in screen_ndjson(export, settings, workers=2)]
    assert len(serial) == 13
    assert parallel == serial


# ------------------------------------------------------------------------------ CLI
def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp: Path
) -> tuple[int, str, str]:
    monkeypatch.setenv("FHIR_TRIAL_RESOURCES_DIR", resources_dir(tmp))
    code = main(["screen-population", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_demo(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fhir_trial.demo import demo_bundle_paths

    demo = demo_bundle_paths()
    if not demo:
        pytest.fail("fhir_trial/demo/*.json is empty")
    code, out, err = run_cli(["--demo"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    for path in demo:
        assert path.stem in out
    assert f"Feasibility: {len(demo)} patients screened as of 2026-11-26" in out


def test_cli_bundles_json_and_output_file(
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    files = sorted((shared_dir / "fixtures/synthea/bundles").glob("*.json"))
    out_file = tmp_path / "results.jsonl"
    args = ["--as-of", "2026-11-26", "--format", "json", "--output", str(out_file)]
    code, out, err = run_cli(
        ["--bundles", str(files[0]), *map(str, files[1:3]), *args], capsys, monkeypatch, tmp_path
    )
    assert code == 0, err
    report = json.loads(out)["runs"][0]  # the baseline run of the report document
    assert report["population"]["patients"]["count"] == 3
    assert sum(cell["count"] for cell in report["verdicts"].values()) == 3
    lines = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    assert all(len(line["criteria"]) == 29 and line["asOf"] == "2026-11-26" for line in lines)


def test_cli_ndjson_csv_with_missing_category(
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    folder = shared_dir / "fixtures/synthea/bulk-ndjson-10-patients"
    out_file = tmp_path / "r.jsonl"
    code, out, err = run_cli(
        [
            "--ndjson",
            str(folder),
            "--missing",
            "Observation",
            "--format",
            "csv",
            "--output",
            str(out_file),
        ],
        capsys,
        monkeypatch,
        tmp_path,
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    funnel = [row["id"] for row in rows if row["section"] == "funnel"]
    assert funnel[:3] == ["screened", "deceased", "deceased"]  # removed, then remaining
    criteria = {row["id"] for row in rows if row["section"] == "criteria"}
    assert criteria == {spec.id for spec in CRITERIA}
    for line in out_file.read_text(encoding="utf-8").splitlines():
        warnings = json.loads(line).get("warnings", [])
        assert any("Observation could not be obtained" in w for w in warnings)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of"),
        (["--demo", "--ndjson", "x"], "exactly one of"),
        (["--bundles", "/does/not/exist.json"], "does not exist"),
        (["--demo", "--missing", "Observation"], "--missing only applies"),
        (["--demo", "--as-of", "26/11/2026"], "--as-of must be a date"),
    ],
)
def test_cli_bad_input(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    code, _out, err = run_cli(args, capsys, monkeypatch, tmp_path)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_nothing_screenable(
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    orgs = shared_dir / "fixtures/synthea/blaze/0-hospitalInformation1625911868739.json"
    code, _out, err = run_cli(["--bundles", str(orgs)], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert "no patient could be screened" in err and "no Patient" in err
