"""The Bulk Data client against the fake bulk server: kick-off, polling, downloads, errors, resume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fake_bulk_server import FakeBulkServer, http_date, outcome
from header_trickle import HeaderTrickle

from fhir_trial.config import Settings
from fhir_trial.errors import AuthenticationError, InputError, ServerUnreachableError
from fhir_trial.population.bulk import client as client_module
from fhir_trial.population.bulk.auth import StaticToken
from fhir_trial.population.bulk.client import (
    EXPORT_TYPES,
    BulkClient,
    BulkExportError,
    ExportExpiredError,
    requested_types_of,
)
from fhir_trial.population.bulk.progress import percent_of
from fhir_trial.population.bulk.state import STATE_FILE, ExportState
from fhir_trial.record import CATEGORIES

PATIENTS = [json.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(3)]
CONDITIONS = [
    json.dumps(
        {
            "resourceType": "Condition",
            "id": f"c{i}",
            "subject": {"reference": f"Patient/p{i}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55464009"}]},
        }
    )
    for i in range(3)
]
ENCOUNTERS = [json.dumps({"resourceType": "Encounter", "id": "e1"})]


class Recorder:
    """Progress and sleep recorder (no real waiting)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.statuses: list[str] = []
        self.files: list[str] = []
        self.fail_on_file: int | None = None

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def download(self, name: str, index: int, total: int) -> None:
        self.files.append(name)
        if self.fail_on_file is not None and len(self.files) == self.fail_on_file:
            raise KeyboardInterrupt

    def advance(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[FakeBulkServer]:
    data = {"Patient": PATIENTS, "Condition": CONDITIONS, "Encounter": ENCOUNTERS}
    with FakeBulkServer(data) as s:
        yield s


def make_client(server: FakeBulkServer, rec: Recorder, **kwargs: Any) -> BulkClient:
    return BulkClient(server.base_url, progress=rec, sleep=rec.sleep, **kwargs)


def test_kickoff_asks_for_the_types_the_criteria_read(server: FakeBulkServer, tmp_path: Path):
    rec = Recorder()
    export = make_client(server, rec).run(tmp_path / "out", "group", "cohort-1")

    kick = next(r for r in server.requests if r["path"].endswith("$export"))
    assert kick["path"] == "/fhir/Group/cohort-1/$export"
    assert kick["headers"]["Prefer"] == "respond-async"
    assert kick["headers"]["Accept"] == "application/fhir+json"
    types = kick["query"]["_type"][0].split(",")
    assert types == list(EXPORT_TYPES)
    assert set(CATEGORIES) | {"Medication"} == set(types)
    assert "Encounter" not in types
    # what the server echoes in the manifest's request is what the reader may rely on
    assert export.requested_types == EXPORT_TYPES
    assert export.transaction_time == "2026-12-07T10:00:00Z"
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.ndjson")) == [
        "Condition.000.ndjson",
        "Patient.000.ndjson",
    ]
    assert (out / "Patient.000.ndjson").read_text().splitlines() == PATIENTS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"].endswith("_type=" + ",".join(EXPORT_TYPES))
    # the job is deleted once its files are on disk
    assert server.deleted == [next(iter(server.jobs))]
    assert export.deleted is True
    assert ExportState.load(out).phase == "deleted"


@pytest.mark.parametrize(
    ("level", "path"),
    [("patient", "/fhir/Patient/$export"), ("system", "/fhir/$export")],
)
def test_patient_and_system_level(server: FakeBulkServer, tmp_path: Path, level: str, path: str):
    make_client(server, Recorder()).run(tmp_path / "out", level, None)
    assert any(r["path"] == path for r in server.requests)


def test_slow_export_polls_honouring_retry_after_and_shows_progress(
    server: FakeBulkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    server.polls = 3
    server.retry_after = "7"
    rec = Recorder()
    make_client(server, rec).run(tmp_path / "out", "group", "g")
    polls = [r for r in server.requests if "$export-poll" in r["path"] and r["method"] == "GET"]
    assert len(polls) == 4
    assert rec.sleeps == [7.0, 7.0, 7.0]
    assert rec.statuses[-3:] == ["0% complete", "33% complete", "66% complete"]


def test_retry_after_is_capped_and_floored(server: FakeBulkServer, tmp_path: Path):
    server.polls = 2
    server.retry_after = "86400"
    rec = Recorder()
    make_client(server, rec).run(tmp_path / "a", "group", "g")
    assert rec.sleeps == [client_module.POLL_CAP_S] * 2

    server.retry_after = "0"
    rec = Recorder()
    make_client(server, rec).run(tmp_path / "b", "group", "g")
    assert rec.sleeps == [client_module.POLL_FLOOR_S] * 2


def test_retry_after_as_http_date_and_default_backoff(server: FakeBulkServer, tmp_path: Path):
    server.polls = 1
    server.retry_after = http_date(30)
    rec = Recorder()
    make_client(server, rec).run(tmp_path / "a", "group", "g")
    assert 25 <= rec.sleeps[0] <= 30

    server.polls = 3
    server.retry_after = None  # no header: a growing delay from POLL_FIRST_S
    rec = Recorder()
    make_client(server, rec).run(tmp_path / "b", "group", "g")
    first = client_module.POLL_FIRST_S
    assert rec.sleeps == [first, first * 1.5, first * 2.25]


def test_429_is_waited_out(server: FakeBulkServer, tmp_path: Path):
    server.throttle = 3  # kick-off, then the first polls
    server.polls = 1
    rec = Recorder()
    export = make_client(server, rec).run(tmp_path / "out", "group", "g")
    assert len(export.output_files) == 2
    assert len([r for r in server.requests if r["path"].endswith("$export")]) == 4


@pytest.mark.parametrize("status", [400, 404, 422])
def test_kickoff_refused_names_the_servers_reason(
    server: FakeBulkServer, tmp_path: Path, status: int
):
    server.kickoff_fault = (status, "Group cohort-1 is unknown")
    with pytest.raises(BulkExportError) as caught:
        make_client(server, Recorder()).run(tmp_path / "out", "group", "cohort-1")
    assert f"HTTP {status}" in caught.value.message
    assert "Group cohort-1 is unknown" in caught.value.message
    assert caught.value.outcome is not None
    assert not (tmp_path / "out" / STATE_FILE).exists()


def test_kickoff_5xx_is_retried_then_reported(server: FakeBulkServer, tmp_path: Path):
    server.kickoff_fault = (503, "maintenance")
    rec = Recorder()
    with pytest.raises(BulkExportError, match="maintenance"):
        make_client(server, rec).run(tmp_path / "out", "group", "g")
    assert len(rec.sleeps) == 3  # Settings.max_retries


def test_failed_job_is_reported(server: FakeBulkServer, tmp_path: Path):
    server.job_fault = (500, "export ran out of disk", "exception")
    with pytest.raises(BulkExportError, match="export ran out of disk"):
        make_client(server, Recorder()).run(tmp_path / "out", "group", "g")


def test_transient_job_error_is_retried(server: FakeBulkServer, tmp_path: Path):
    server.job_fault = (503, "busy", "transient")
    server.job_fault_times = 2
    export = make_client(server, Recorder()).run(tmp_path / "out", "group", "g")
    assert len(export.output_files) == 2


@pytest.mark.parametrize("status", [404, 410])
def test_expired_files_give_a_clear_error(server: FakeBulkServer, tmp_path: Path, status: int):
    server.expire = status
    client = make_client(server, Recorder())
    with pytest.raises(ExportExpiredError, match="gone from the server"):
        client.run(tmp_path / "out", "group", "g")
    assert ExportState.load(tmp_path / "out").phase == "expired"
    with pytest.raises(InputError, match="start a new one"):
        client.resume(tmp_path / "out")


def test_error_files_reach_the_result(server: FakeBulkServer, tmp_path: Path):
    server.errors = [
        outcome("Observation export failed: timeout"),
        outcome("Observation export failed: timeout"),
        outcome("Consent: access denied"),
    ]
    export = make_client(server, Recorder()).run(tmp_path / "out", "group", "g")
    assert export.error_count == 3
    assert export.errors[0].name == "OperationOutcome.error.000.ndjson"
    assert export.errors[0].messages == [
        "Observation export failed: timeout",
        "Consent: access denied",
    ]
    assert (tmp_path / "out" / "OperationOutcome.error.000.ndjson").is_file()
    assert any("Consent: access denied" in line for line in export.summary())
    assert export.to_json()["errorCount"] == 3


def test_token_goes_to_the_server_and_files_that_need_it(server: FakeBulkServer, tmp_path: Path):
    server.token = "secret-1"
    server.files_require_token = True
    export = make_client(server, Recorder(), auth=StaticToken("secret-1")).run(
        tmp_path / "out", "group", "g"
    )
    assert len(export.output_files) == 2
    files = [r for r in server.requests if r["path"].startswith("/files/")]
    assert files and all(r["headers"]["Authorization"] == "Bearer secret-1" for r in files)


def test_wrong_token_is_an_authentication_error(server: FakeBulkServer, tmp_path: Path):
    server.token = "secret-1"
    with pytest.raises(AuthenticationError, match="HTTP 401"):
        make_client(server, Recorder(), auth=StaticToken("wrong")).run(
            tmp_path / "out", "group", "g"
        )


def test_no_token_to_files_that_do_not_require_it(server: FakeBulkServer, tmp_path: Path):
    server.token = "secret-1"
    server.files_require_token = False
    server.file_host = "localhost"  # another host (pre-signed storage URLs, say)
    make_client(server, Recorder(), auth=StaticToken("secret-1")).run(
        tmp_path / "out", "group", "g"
    )
    files = [r for r in server.requests if r["path"].startswith("/files/")]
    assert files and all("Authorization" not in r["headers"] for r in files)


def test_token_never_sent_to_another_host_unless_allowlisted(
    server: FakeBulkServer, tmp_path: Path
):
    server.token = "secret-1"
    server.files_require_token = True
    server.file_host = "localhost"
    with pytest.raises(BulkExportError, match="--token-host localhost"):
        make_client(server, Recorder(), auth=StaticToken("secret-1")).run(
            tmp_path / "a", "group", "g"
        )
    assert not [r for r in server.requests if r["path"].startswith("/files/")]

    export = make_client(
        server, Recorder(), auth=StaticToken("secret-1"), token_hosts=["localhost"]
    ).run(tmp_path / "b", "group", "g")
    assert len(export.output_files) == 2


def test_interrupted_download_resumes_without_fetching_finished_files(
    server: FakeBulkServer, tmp_path: Path
):
    server.split_lines = 1  # 3 Patient files + 3 Condition files
    out = tmp_path / "out"
    rec = Recorder()
    rec.fail_on_file = 4  # Ctrl-C as the fourth file starts
    with pytest.raises(KeyboardInterrupt):
        make_client(server, rec).run(out, "group", "g")
    state = ExportState.load(out)
    assert len(state.files) == 3 and state.phase == "complete"
    assert server.deleted == []  # the job is kept

    export = make_client(server, Recorder()).resume(out)
    assert export.reused == 3 and export.downloaded == 3
    assert all(count == 1 for count in server.downloads.values())
    assert len(server.downloads) == 6
    assert len(server.deleted) == 1
    assert len(list(out.glob("*.ndjson"))) == 6
    assert not list(out.glob("*.part"))


def test_a_damaged_file_is_downloaded_again(server: FakeBulkServer, tmp_path: Path):
    out = tmp_path / "out"
    rec = Recorder()
    rec.fail_on_file = 2
    with pytest.raises(KeyboardInterrupt):
        make_client(server, rec).run(out, "group", "g")
    done = next(iter(ExportState.load(out).files.values()))
    (out / done.name).write_text("truncated")
    make_client(server, Recorder()).resume(out)
    assert sorted(server.downloads.values()) == [1, 2]


def test_interrupted_while_polling_resumes_polling(server: FakeBulkServer, tmp_path: Path):
    server.polls = 5
    out = tmp_path / "out"

    class Stop(Recorder):
        def sleep(self, seconds: float) -> None:
            if len(self.statuses) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_client(server, Stop()).run(out, "group", "g")
    assert ExportState.load(out).phase == "kicked-off"
    export = make_client(server, Recorder()).resume(out)
    assert len(export.output_files) == 2
    assert len(server.kickoffs) == 1


def test_cancel_deletes_the_job(server: FakeBulkServer, tmp_path: Path):
    server.polls = 10
    out = tmp_path / "out"
    client = make_client(server, Recorder())
    client.start(out, "group", "g")
    client.cancel(out)
    assert len(server.deleted) == 1
    assert ExportState.load(out).phase == "cancelled"
    with pytest.raises(InputError, match="cancelled"):
        client.resume(out)


def test_folder_with_an_export_is_not_reused(server: FakeBulkServer, tmp_path: Path):
    out = tmp_path / "out"
    make_client(server, Recorder()).run(out, "group", "g")
    with pytest.raises(InputError, match="--resume"):
        make_client(server, Recorder()).run(out, "group", "g")


def test_manifest_without_request_vouches_for_no_type(server: FakeBulkServer, tmp_path: Path):
    server.echo_request = False
    export = make_client(server, Recorder()).run(tmp_path / "out", "group", "g")
    assert export.requested_types == ()


def test_requested_types_of_reads_repeated_and_comma_lists():
    url = "https://x/fhir/$export?_type=Patient,Condition&_type=Observation&_since=2020"
    assert requested_types_of(url) == ("Patient", "Condition", "Observation")
    assert requested_types_of("https://x/fhir/$export") == ()


def test_percent_of_x_progress():
    assert percent_of("45% complete") == 45.0
    assert percent_of("Processing 12.5 %") == 12.5
    assert percent_of("in progress") is None


def test_status_url_on_a_relative_content_location(server: FakeBulkServer, tmp_path: Path):
    state = make_client(server, Recorder()).start(tmp_path / "out", "group", "g")
    assert urlsplit(state.status_url).netloc == urlsplit(server.base_url).netloc
    assert parse_qs(urlsplit(state.kickoff_url).query)["_type"] == [",".join(EXPORT_TYPES)]


def test_progress_lines_without_a_terminal():
    import io

    from fhir_trial.population.bulk.progress import TqdmProgress

    stream = io.StringIO()
    progress = TqdmProgress(stream)
    progress.status("10% complete")
    progress.status("10% complete")
    progress.status("50% complete")
    progress.download("Patient.000.ndjson", 1, 2)
    progress.advance(100)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "bulk export: 10% complete",
        "bulk export: 50% complete",
        "bulk export: downloading 1/2 Patient.000.ndjson",
    ]


def test_progress_bar_on_a_terminal():
    import io

    from fhir_trial.population.bulk.progress import TqdmProgress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = TqdmProgress(stream)
    progress.status("45% complete")
    assert progress._bar.n == 45.0
    progress.download("Condition.000.ndjson", 2, 3)
    progress.advance(2048)
    assert progress._bar.n == 2048
    progress.close()
    assert "45% complete" in stream.getvalue()


def test_large_file_is_streamed_not_held_in_memory(tmp_path: Path):
    """A 7.5 MB file downloads with a few hundred KB of Python memory (the client side only: the
    file is served by ``python -m http.server`` in another process)."""
    import socket
    import subprocess
    import sys
    import tracemalloc

    import requests

    served = tmp_path / "served"
    served.mkdir()
    filler = "x" * 900
    with (served / "big.ndjson").open("w") as handle:
        for i in range(8000):
            handle.write(json.dumps({"resourceType": "Patient", "id": f"p{i}", "x": filler}) + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=served,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/big.ndjson"
        for _ in range(100):
            try:
                requests.head(url, timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.05)
        client = BulkClient(f"http://127.0.0.1:{port}/fhir", sleep=lambda s: None)
        tracemalloc.start()
        size, _ = client._fetch_file(url, tmp_path / "copy.ndjson", with_token=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert size == (served / "big.ndjson").stat().st_size > 7_000_000
    assert (tmp_path / "copy.ndjson").read_bytes() == (served / "big.ndjson").read_bytes()
    assert peak < 1_000_000, f"peak {peak} bytes for a {size}-byte file"


def test_new_download_folder_is_private(server: FakeBulkServer, tmp_path: Path):
    make_client(server, Recorder()).run(tmp_path / "out", "group", "g")
    assert (tmp_path / "out").stat().st_mode & 0o077 == 0


def test_gzip_content_encoding_is_decoded(server: FakeBulkServer, tmp_path: Path):
    server.gzip_files = True
    make_client(server, Recorder()).run(tmp_path / "out", "group", "g")
    assert (tmp_path / "out" / "Patient.000.ndjson").read_text().splitlines() == PATIENTS


def test_a_server_trickling_its_headers_is_given_up_on_within_the_read_timeout(tmp_path: Path):
    # The status line and headers a byte every 0.2 s: every socket read gets a byte, so the read
    # timeout alone (per read) would wait for as long as the server goes on.
    with HeaderTrickle(interval=0.2, max_s=10.0) as trickling:
        client = BulkClient(
            trickling.base_url, settings=Settings(read_timeout_s=1.0), sleep=lambda s: None
        )
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match=r"within 1 s \(read_timeout_s\)"):
            client.start(tmp_path / "out", "system", None)
        assert time.monotonic() - started < 2.0
        stop = time.monotonic() + 1.0
        while trickling.dripping and time.monotonic() < stop:
            time.sleep(0.05)
        assert trickling.dripping == 0
