"""``fhir-trial serve`` runs the app under gunicorn on 127.0.0.1 (and stops when told)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from cds_helpers import (
    PATIENT_ID,
    SERVICE_PATH,
    free_port,
    full_prefetch,
    hook_request,
    patient,
    sle_condition,
)
from click.testing import CliRunner
from fake_fhir_server import FakeFhirServer

from fhir_trial.commands.serve import command, default_workers, gunicorn_options
from fhir_trial.commands.serve_worker import SlowClientSafeWorker
from fhir_trial.config import Settings


def _serve(port: int, env: dict[str, str], *options: str) -> subprocess.Popen[str]:
    """``fhir-trial serve`` with two workers, in its own process group."""
    command_line = ["serve", "--port", str(port), "--workers", "2", *options]
    return subprocess.Popen(
        [sys.executable, "-m", "fhir_trial", *command_line],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_until_up(base: str) -> None:
    for _ in range(300):
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


def _children(pid: int) -> list[int]:
    """The gunicorn master's worker processes (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _wait_for_workers(pid: int, count: int, without: int | None = None) -> list[int]:
    """Wait (up to 10 s) until the master has ``count`` workers, none of them ``without``."""
    for _ in range(100):
        workers = _children(pid)
        if len(workers) == count and without not in workers:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"the master did not reach {count} workers")


def _summaries(response: dict) -> list[str]:
    return [card["summary"] for card in response["cards"]]


def test_serve_help_lists_the_options() -> None:
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--workers", "--development-mode", "--dev-server"):
        assert option in result.output


def test_gunicorn_options() -> None:
    options = gunicorn_options("127.0.0.1", 8080, 3, Settings())
    assert options["bind"] == "127.0.0.1:8080" and options["workers"] == 3
    assert options["accesslog"] is None  # worksheet tokens travel in URLs
    assert options["preload_app"] is True  # workers fork from one built app
    assert issubclass(options["worker_class"], SlowClientSafeWorker)  # slow clients cost no thread
    assert options["worker_class"].header_timeout_s == 10.0
    assert options["threads"] == 8
    assert options["timeout"] == 300  # long enough to screen a large population upload
    assert gunicorn_options("127.0.0.1", 8080, 3, Settings(worker_timeout_s=900))["timeout"] == 900
    assert 1 <= default_workers() <= 9


def test_serve_runs_gunicorn_with_workers(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, FHIR_TRIAL_DATABASE_PATH=str(tmp_path / "db.sqlite3"))
    process = _serve(port, env, "--development-mode")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base)
        response = requests.post(
            f"{base}{SERVICE_PATH}", json=hook_request(full_prefetch()), timeout=10
        )
        assert response.status_code == 200
        assert response.headers.get("X-Fhir-Trial-Development-Mode")
        # A worker that dies is replaced by a fork of the preloaded master and the service goes on.
        workers = _wait_for_workers(process.pid, 2)
        os.kill(workers[0], signal.SIGKILL)
        assert _summaries(response.json())  # a card, so the comparison below means something
        assert workers[0] not in _wait_for_workers(process.pid, 2, without=workers[0])
        forged = hook_request(full_prefetch(), hookInstance='x\n{"forged": 1}')
        assert requests.post(f"{base}{SERVICE_PATH}", json=forged, timeout=10).status_code == 200
        for _ in range(4):
            again = requests.post(
                f"{base}{SERVICE_PATH}", json=hook_request(full_prefetch()), timeout=10
            )
            assert again.status_code == 200
            assert _summaries(again.json()) == _summaries(response.json())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert "development mode" in stderr.lower()
    assert "Booting worker" in stderr  # gunicorn, not the Flask development server
    # The app's own lines are JSON objects, one per line (gunicorn's own lines are not).
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    hook_lines = [e["msg"] for e in entries if e["msg"].startswith("cds hook ")]
    assert any(
        re.fullmatch(r"cds hook [0-9a-f-]{36}: report, 1 card\(s\) in \d+ ms", m)
        for m in hook_lines
    )
    # The hookInstance with a newline stayed inside its line.
    assert any(m.startswith("cds hook x\\n{") for m in hook_lines), hook_lines
    assert not any(line.startswith('{"forged"') for line in stderr.splitlines())
    requests_logged = [e for e in entries if e["msg"] == "request"]
    assert {e["route"] for e in requests_logged} >= {"/healthz", "/cds-services/<service_id>"}
    assert all(e["request_id"] for e in requests_logged)
    assert PATIENT_ID not in stderr


def test_forked_workers_fetch_from_fhir_server_within_the_deadline(tmp_path: Path) -> None:
    """Fetching runs on thread pools built before the fork: it must work, and keep its deadline."""
    with FakeFhirServer() as fhir:
        fhir.add(patient())
        fhir.add(sle_condition())
        port = free_port()
        env = dict(
            os.environ,
            FHIR_TRIAL_DATABASE_PATH=str(tmp_path / "db.sqlite3"),
            FHIR_TRIAL_CDS_DEVELOPMENT_MODE="1",
            FHIR_TRIAL_CDS_DEV_FHIR_SERVERS=fhir.base_url,
            FHIR_TRIAL_CDS_DEADLINE_S="2.5",  # not less: loaded CI machines
        )
        process = _serve(port, env)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(base)
            call = hook_request(None, fhirServer=fhir.base_url)
            for _ in range(4):  # both workers, most likely
                fetched = requests.post(f"{base}{SERVICE_PATH}", json=call, timeout=10)
                assert fetched.status_code == 200, fetched.text[:300]
                prefetched = requests.post(
                    f"{base}{SERVICE_PATH}", json=hook_request(full_prefetch()), timeout=10
                )
                assert _summaries(fetched.json()) == _summaries(prefetched.json())
                assert _summaries(fetched.json())
            fetched_paths = {r.path for r in fhir.searched()}
            assert {"Patient/pat-1", "Condition"} <= fetched_paths  # fetched, not prefetched

            fhir.delay(8.0, times=None)  # every answer now comes far too late
            started = time.monotonic()
            late = requests.post(f"{base}{SERVICE_PATH}", json=call, timeout=15)
            elapsed = time.monotonic() - started
            assert late.status_code == 200 and elapsed < 5.0
            cards = late.json()["cards"]
            assert len(cards) == 1 and "could not be completed" in cards[0]["summary"].lower()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=20)
