"""``fhir-trial validate`` and ``fhir-trial build-resources``: outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_trial.cli import main
from fhir_trial.config import DEFAULT_RESOURCES_DIR

RESOURCES = Path(DEFAULT_RESOURCES_DIR)


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_default_validates_every_resource(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    count = len(list(RESOURCES.glob("*.json")))
    assert out.strip() == f"ok: {count} resource(s) valid"


def test_json_output_is_an_operation_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    study = RESOURCES / "ResearchStudy-nct06010472.json"
    assert main(["validate", "--format", "json", str(study)]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"


def test_broken_resource_gives_its_path_and_exit_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write(
        tmp_path / "bad.json",
        {"resourceType": "ResearchStudy", "id": "x", "status": "active", "arm": [{"name": 5}]},
    )
    assert main(["validate", str(bad)]) == 6
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines and all(line.startswith("error ResearchStudy.arm[0].name: ") for line in lines)
    assert "validation found 2 error(s)" in captured.err

    assert main(["validate", "--format", "json", str(bad)]) == 6
    outcome = json.loads(capsys.readouterr().out)
    assert {tuple(i["expression"]) for i in outcome["issue"]} == {("ResearchStudy.arm[0].name",)}
    assert all(i["severity"] == "error" for i in outcome["issue"])


def test_unresolved_reference_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = {
        "resourceType": "ResearchStudy",
        "id": "x",
        "status": "active",
        "sponsor": {"reference": "Organization/nowhere"},
    }
    assert main(["validate", str(_write(tmp_path / "s.json", study))]) == 6
    assert "ResearchStudy.sponsor.reference" in capsys.readouterr().out


def test_reference_into_the_resources_folder_resolves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = {
        "resourceType": "ResearchStudy",
        "id": "x",
        "status": "active",
        "sponsor": {"reference": "Organization/changhai-hospital"},
    }
    assert main(["validate", str(_write(tmp_path / "s.json", study))]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("this is not json", "not JSON"),
        ('{"hello": "world"}', "not a FHIR resource"),
        ("[1, 2]", "not a FHIR resource"),
    ],
)
def test_not_fhir_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    path = _write(tmp_path / "input.json", content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert words in err and str(path) in err


def test_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "absent.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_missing_schema_is_said_and_models_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = RESOURCES / "Organization-changhai-hospital.json"
    missing = tmp_path / "none.json"
    assert main(["validate", "--schema", str(missing), str(good)]) == 0
    assert f"warning: FHIR R4 JSON Schema not found at {missing}" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.json", {"resourceType": "Organization", "name": 1})
    assert main(["validate", "--schema", str(missing), str(bad)]) == 6
    assert "Organization.name" in capsys.readouterr().out


def test_build_resources_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "resources"
    assert main(["build-resources", "--check", "--out", str(out)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["build-resources", "--out", str(out)]) == 0
    assert main(["build-resources", "--check", "--out", str(out)]) == 0
    first = sorted(out.glob("*.json"))[0]
    first.write_text(first.read_text(encoding="utf-8") + " ", encoding="utf-8")
    assert main(["build-resources", "--check", "--out", str(out)]) == 1
    assert first.name in capsys.readouterr().err


def test_the_project_resources_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-resources", "--check"]) == 0
    capsys.readouterr()


def test_ndjson_lines_are_validated_and_named_by_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patient = {"resourceType": "Patient", "id": "p"}
    link = [{"other": {"reference": "Patient/p"}, "type": "seealso"}]
    good = {"resourceType": "Patient", "id": "q", "link": link}
    bad = {"resourceType": "Patient", "id": "r", "birthDate": "1990-13-45"}
    lines = [json.dumps(patient), "", json.dumps(good), json.dumps(bad)]
    path = _write(tmp_path / "Patient.000.ndjson", "\n".join(lines) + "\n")
    assert main(["validate", str(path)]) == 6
    out = capsys.readouterr().out
    assert f"({path}:4)" in out and f"({path}:3)" not in out
    path.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 0
    assert "ok: 2 resource(s) valid" in capsys.readouterr().out
    # a reference to a type the export left out is a warning in NDJSON, an error in JSON
    encounter = {
        "resourceType": "Encounter",
        "id": "e",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p"},
        "participant": [{"individual": {"reference": "Practitioner/not-exported"}}],
    }
    exported = _write(tmp_path / "Encounter.000.ndjson", json.dumps(encounter) + "\n")
    assert main(["validate", str(exported), str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("warning Encounter.participant[0].individual.reference: ")
    assert f"({exported}:1)" in out and "ok: 3 resource(s) valid (1 warning(s) above)" in out
    alone = _write(tmp_path / "encounter.json", encounter)
    assert main(["validate", str(alone), str(path)]) == 6
    capsys.readouterr()
    path.write_text(json.dumps(patient) + "\n{not json\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:2: not JSON" in capsys.readouterr().err


# --- real-world records: Synthea as served by SMART, Blaze and a Bulk Data export ---------------
NDJSON_SAMPLE = 150  # lines validated per NDJSON file; the rest is context references resolve to


def test_synthea_fixtures_validate_without_errors(shared_dir: Path) -> None:
    """Transaction and batch Bundles (urn:uuid, conditional references, contained Coverage) and
    bulk NDJSON (references across files) hold no error. A sample keeps this under ~15 s; the
    whole folders pass too (`fhir-trial validate ../shared/fixtures/synthea/*/*.json`)."""
    from fhir_trial.commands.validate import read_inputs
    from fhir_trial.validation import validate_set

    folder = shared_dir / "fixtures" / "synthea"
    bundles = sorted((folder / "bundles").glob("*.json"), key=lambda p: p.stat().st_size)
    blaze = sorted((folder / "blaze").glob("*.json"), key=lambda p: p.stat().st_size)
    ndjson = sorted((folder / "bulk-ndjson-10-patients").glob("[A-Z]*.ndjson"))
    assert len(bundles) == 13 and len(blaze) == 7 and len(ndjson) == 13
    # the two smallest patient Bundles; Blaze's smallest transaction and both batch Bundles
    chosen = bundles[:2] + blaze[:1] + [p for p in blaze if p.name.startswith("0-")]
    for path in chosen:
        issues = validate_set(read_inputs(path))
        assert [i.line() for i in issues if i.is_error] == [], path.name
    lines = [pair for path in ndjson for pair in read_inputs(path)]
    sample = [pair for pair in lines if int(pair[0].rsplit(":", 1)[1]) <= NDJSON_SAMPLE]
    context = [resource for _source, resource in lines]
    issues = validate_set(sample, context=context)
    assert [i.line() for i in issues if i.is_error] == []
    assert {source.rsplit(":", 1)[0] for source, _r in sample} == {str(p) for p in ndjson}
