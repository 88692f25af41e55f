"""``screen-population --fhir-server``: a Bulk export screened like the same folder given as NDJSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_bulk_server import FakeBulkServer, make_jwks, outcome

from fhir_trial.cli import main
from fhir_trial.commands import screen_population
from fhir_trial.population.bulk import client as client_module
from fhir_trial.population.bulk.state import ExportState
from fhir_trial.record import CATEGORIES

AS_OF = "2026-11-26"
SYNTHEA = "fixtures/synthea/bulk-ndjson-10-patients"


@pytest.fixture(autouse=True)
def no_poll_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "POLL_FLOOR_S", 0.0)


@pytest.fixture()
def synthea_server(shared_dir: Path) -> Iterator[FakeBulkServer]:
    with FakeBulkServer.from_folder(shared_dir / SYNTHEA) as server:
        yield server


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["screen-population", "--as-of", AS_OF, "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def vouch_for_requested_types(folder: Path) -> list[str]:
    """``--complete T`` for each type the bulk kick-off requested that the folder has no file for.

    The bulk download is complete for those (its kick-off listed them in ``_type``); the shared
    folder's own kick-off listed none, so the same data as ``--ndjson`` needs the user's word for
    them (where the command has ``--complete``; before it, every export counted as complete).
    """
    if not any(param.name == "complete" for param in screen_population.command.params):
        return []
    present = {path.name.split(".")[0] for path in folder.glob("*.ndjson")}
    return [arg for rtype in CATEGORIES if rtype not in present for arg in ("--complete", rtype)]


def results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bulk_export_screens_like_the_ndjson_folder(
    synthea_server: FakeBulkServer,
    shared_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    synthea_server.polls = 2
    synthea_server.token = "tok"
    synthea_server.files_require_token = True
    code, bulk_out, err = run(
        [
            "--fhir-server",
            synthea_server.base_url,
            "--group",
            "sample-10",
            "--token",
            "tok",
            "--download-dir",
            str(tmp_path / "export"),
            "--format",
            "json",
            "--output",
            str(tmp_path / "bulk.jsonl"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "Bulk export of 2026-12-07T10:00:00Z" in err
    assert "types requested: Patient, Condition, Observation" in err
    code, ndjson_out, err = run(
        [
            "--ndjson",
            str(shared_dir / SYNTHEA),
            *vouch_for_requested_types(shared_dir / SYNTHEA),
            "--format",
            "json",
            "--output",
            str(tmp_path / "ndjson.jsonl"),
        ],
        capsys,
    )
    assert code == 0, err
    bulk_report, ndjson_report = json.loads(bulk_out), json.loads(ndjson_out)
    # The inputs differ by design: the server exported only the types asked for.
    bulk_inputs, ndjson_inputs = bulk_report.pop("inputs"), ndjson_report.pop("inputs")
    assert bulk_report == ndjson_report
    for name, row in bulk_inputs.items():
        if isinstance(row, dict) and row["status"] == "read":
            assert row["resources read"] == ndjson_inputs[name]["resources read"], name
    assert json.loads(bulk_out)["runs"][0]["population"]["patients"]["count"] == len(
        synthea_server.data["Patient"]
    )
    assert results(tmp_path / "bulk.jsonl") == results(tmp_path / "ndjson.jsonl")
    kick = synthea_server.kickoffs[0]
    assert "/Group/sample-10/$export?_type=Patient,Condition" in kick
    assert len(synthea_server.deleted) == 1


def test_ctrl_c_keeps_the_job_and_says_how_to_resume_or_cancel(
    synthea_server: FakeBulkServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "export"
    real = client_module.BulkClient._fetch_file
    calls = {"n": 0}

    def interrupt_second(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(client_module.BulkClient, "_fetch_file", interrupt_second)
    code, out, err = run(
        [
            "--fhir-server",
            synthea_server.base_url,
            "--patient-level",
            "--download-dir",
            str(folder),
        ],
        capsys,
    )
    assert code == 130
    assert "The export is kept on the server" in err
    assert f"--resume {folder}" in err
    assert f"--cancel-export {folder}" in err
    assert synthea_server.deleted == []
    assert out == ""

    monkeypatch.setattr(client_module.BulkClient, "_fetch_file", real)
    code, out, err = run(["--resume", str(folder), "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["population"]["patients"]["count"] == len(
        synthea_server.data["Patient"]
    )
    assert "1 kept from an earlier run" in err
    assert all(n == 1 for n in synthea_server.downloads.values())
    assert len(synthea_server.deleted) == 1


def test_cancel_export(
    synthea_server: FakeBulkServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synthea_server.polls = 100
    folder = tmp_path / "export"

    def stop(self: Any, retry_after: Any, fallback: float) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(client_module.BulkClient, "_wait", stop)
    code, _, err = run(
        ["--fhir-server", synthea_server.base_url, "--system-level", "--download-dir", str(folder)],
        capsys,
    )
    assert code == 130 and "--cancel-export" in err
    code, out, err = run(["--cancel-export", str(folder)], capsys)
    assert code == 0, err
    assert "cancelled" in err and out == ""
    assert len(synthea_server.deleted) == 1
    assert ExportState.load(folder).phase == "cancelled"


def test_expired_files_say_how_to_start_again(
    synthea_server: FakeBulkServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthea_server.expire = 410
    code, _, err = run(
        [
            "--fhir-server",
            synthea_server.base_url,
            "--group",
            "g",
            "--download-dir",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 5
    assert "HTTP 410" in err and "start a new one with --fhir-server" in err


def test_kickoff_failure_is_one_line(
    synthea_server: FakeBulkServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthea_server.kickoff_fault = (400, "Unsupported _type: Consent")
    code, _, err = run(
        ["--fhir-server", synthea_server.base_url, "--group", "g", "--download-dir", str(tmp_path)],
        capsys,
    )
    assert code == 5
    assert err.strip().splitlines()[-1].startswith("error: the server refused the export: HTTP 400")
    assert "Unsupported _type: Consent" in err


def test_export_errors_are_shown(
    synthea_server: FakeBulkServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthea_server.errors = [outcome("Observation: search failed")]
    code, _, err = run(
        [
            "--fhir-server",
            synthea_server.base_url,
            "--group",
            "g",
            "--download-dir",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "The server reported 1 export errors" in err
    assert "Observation: search failed" in err


def test_smart_backend_services_from_the_command_line(
    synthea_server: FakeBulkServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = make_jwks("ES384", "registry-key")
    synthea_server.smart_clients = {"registry-app": public}
    synthea_server.files_require_token = True
    jwks = tmp_path / "registry.jwks.json"
    jwks.write_text(json.dumps(private))
    code, out, err = run(
        [
            "--fhir-server",
            synthea_server.base_url,
            "--group",
            "sample-10",
            "--client-id",
            "registry-app",
            "--jwks",
            str(jwks),
            "--download-dir",
            str(tmp_path / "export"),
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["runs"][0]["population"]["patients"]["count"] == len(
        synthea_server.data["Patient"]
    )
    scopes = synthea_server.token_requests[0]["scope"].split()
    assert "system/Group.rs" in scopes and "system/Condition.rs" in scopes
    assert "system/Encounter.rs" not in scopes
    assert not synthea_server.token_rejections


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fhir-server", "http://127.0.0.1:9/fhir"], "exactly one of --group"),
        (["--fhir-server", "http://x/fhir", "--group", "g", "--ndjson", "d"], "not both"),
        (["--fhir-server", "http://x/fhir", "--group", "g", "--client-id", "c"], "--jwks"),
        (["--resume", "/nonexistent-folder"], "no Bulk Data export state"),
    ],
)
def test_option_mistakes(args: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(args, capsys)
    assert code == 2
    assert message in err


# ------------------------------------------------------------------ a real server, when given
LIVE = os.environ.get("FHIR_TRIAL_BULK_TEST_SERVER")


@pytest.mark.skipif(not LIVE, reason="set FHIR_TRIAL_BULK_TEST_SERVER to a Bulk Data server")
def test_live_bulk_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against any server: FHIR_TRIAL_BULK_TEST_SERVER (base URL), and optionally
    FHIR_TRIAL_BULK_TEST_GROUP (else a patient-level export), FHIR_TRIAL_TOKEN, or
    FHIR_TRIAL_BULK_TEST_CLIENT_ID + FHIR_TRIAL_BULK_TEST_JWKS (+ _KID, _SCOPE) for SMART
    Backend Services (e.g. the SMART Bulk Data reference server)."""
    args = ["--fhir-server", str(LIVE), "--download-dir", str(tmp_path / "export")]
    group = os.environ.get("FHIR_TRIAL_BULK_TEST_GROUP")
    args += ["--group", group] if group else ["--patient-level"]
    for env, option in (
        ("FHIR_TRIAL_BULK_TEST_CLIENT_ID", "--client-id"),
        ("FHIR_TRIAL_BULK_TEST_JWKS", "--jwks"),
        ("FHIR_TRIAL_BULK_TEST_KID", "--kid"),
        ("FHIR_TRIAL_BULK_TEST_SCOPE", "--scope"),
    ):
        if os.environ.get(env):
            args += [option, os.environ[env]]
    code, out, err = run([*args, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["population"]["patients"]["count"] >= 1
    state = ExportState.load(tmp_path / "export")
    assert state.phase == "deleted"


def test_export_errors_go_into_the_shared_report_without_resource_ids(
    synthea_server: FakeBulkServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export's error files are in report.json's inputs, counted, their references masked."""
    synthea_server.errors = [outcome("Observation search failed for Patient/abc-123")]
    code, _, err = run(
        [
            "--fhir-server",
            synthea_server.base_url,
            "--group",
            "g",
            "--download-dir",
            str(tmp_path / "x"),
            "--report",
            str(tmp_path / "report"),
        ],
        capsys,
    )
    assert code == 0, err
    inputs = json.loads((tmp_path / "report" / "report.json").read_text())["inputs"]
    assert inputs["export errors reported by the server"] == 1
    (errors,) = [v for k, v in inputs.items() if k.startswith("export errors (")]
    assert errors["errors"] == 1
    assert "Observation search failed for Patient/..." in errors["messages"]
    assert "abc-123" not in (tmp_path / "report" / "report.json").read_text()
    assert "abc-123" not in (tmp_path / "report" / "report.html").read_text()
