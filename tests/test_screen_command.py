"""`fhir-trial screen`: formats, exit codes and one clear line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_fhir_server import FakeFhirServer

from fhir_trial.cli import main
from fhir_trial.demo import DEMO_AS_OF, demo_bundle_paths

DEMO = str(demo_bundle_paths()[0])


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_report_for_a_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "screen", "--bundle", DEMO, "--as-of", DEMO_AS_OF.isoformat())
    assert code == 0, err
    assert "Patient/demo-ana" in out and "inc-sle-diagnosis" in out


def test_json_report_has_all_29_criteria(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "screen", "--bundle", DEMO, "--as-of", "2026-11-26", "--format", "json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["asOf"] == "2026-11-26"
    assert len(report["criteria"]) == 29
    assert report["verdict"] in {"eligible", "ineligible", "potentially-eligible"}


def test_fhir_report_is_a_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "screen", "--bundle", DEMO, "--format", "fhir")
    assert code == 0
    bundle = json.loads(out)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["GuidanceResponse", "ResearchSubject"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("this is not json", "not JSON"),
        ('{"hello": "world"}', "FHIR"),
        ('{"resourceType": "Bundle", "type": "collection", "entry": []}', "Patient"),
    ],
)
def test_bad_bundles_give_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, words: str
) -> None:
    path = tmp_path / "input.json"
    path.write_text(content)
    code, out, err = run(capsys, "screen", "--bundle", str(path))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert words.lower() in err.lower()
    assert "Traceback" not in err


def test_two_patients_need_a_choice(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}},
            {"resource": {"resourceType": "Patient", "id": "b"}},
        ],
    }
    path = tmp_path / "two.json"
    path.write_text(json.dumps(bundle))
    code, _, err = run(capsys, "screen", "--bundle", str(path))
    assert code == 2
    assert "--patient" in err and "Patient/a" in err and "Patient/b" in err
    code, out, _ = run(
        capsys, "screen", "--bundle", str(path), "--patient", "b", "--format", "json"
    )
    assert code == 0
    assert json.loads(out)["patient"] == "Patient/b"


def test_bad_date_and_missing_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "screen", "--bundle", DEMO, "--as-of", "26/11/2026")
    assert code == 2 and "--as-of" in err
    code, _, err = run(capsys, "screen")
    assert code == 2 and "--bundle" in err
    code, _, err = run(capsys, "screen", "--fhir-server", "http://127.0.0.1:9")
    assert code == 2 and "--patient" in err


def test_unreachable_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    code, out, err = run(
        capsys, "screen", "--fhir-server", "http://127.0.0.1:9/fhir", "--patient", "p1"
    )
    assert code == 3, err
    assert out == "" and len(err.strip().splitlines()) == 1


def test_auth_failure_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeFhirServer() as server:
        server.fail(401, times=None)
        code, _, err = run(
            capsys,
            "screen",
            "--fhir-server",
            server.base_url,
            "--patient",
            "p1",
            "--token",
            "secret-token",
        )
    assert code == 4
    assert "secret-token" not in err
