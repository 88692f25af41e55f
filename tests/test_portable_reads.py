"""Reading from real servers: `screen --fhir-server` against the local fake FHIR server.

Type-qualified reference searches (a Medplum-like server matches no bare id on ``individual``),
the study recognised under a server-assigned id, large pages, the overall deadline (a hung
server, one trickling its body or its headers, endless next links), a wrong base URL told apart
from a missing patient, and the exit codes of incomplete and empty screenings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_fhir_server import FakeFhirServer, serve_wsgi
from flask import Flask
from header_trickle import HeaderTrickle

from fhir_trial.cli import main

AS_OF = "2026-11-26"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1990-06-15"}
STUDY_UUID = "6f1c2a3e-8d4b-4f55-9e21-0a7b3c9d1e42"


@pytest.fixture()
def server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer() as running:
        running.add(PATIENT)
        yield running


def _screen(
    server_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    fmt: str = "json",
    **env: Any,
) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(f"FHIR_TRIAL_{name.upper()}", str(value))
    argv = ["screen", "--fhir-server", server_url, "--patient", "p1", "--as-of", AS_OF]
    code = main([*argv, "--format", fmt])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _subject(study: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "ResearchSubject",
        "id": "rs1",
        "status": "on-study",
        "study": study,
        "individual": {"reference": "Patient/p1"},
        "period": {"start": "2026-11-01"},
    }


def test_research_subject_is_searched_type_qualified(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like Medplum, the fake matches individual=Patient/p1 and nothing for a bare id: with a
    # bare id the patient on another study would be "unknown" and get a candidate card.
    server.add(
        {
            "resourceType": "ResearchStudy",
            "id": "other",
            "status": "active",
            "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT09999999"}],
        }
    )
    server.add(_subject({"reference": "ResearchStudy/other"}))
    code, out, _ = _screen(server.base_url, capsys, monkeypatch)
    report = json.loads(out)
    status = {c["id"]: c["status"] for c in report["criteria"]}
    assert status["exc-recent-trial"] == "met"
    assert report["verdict"] == "ineligible"
    batch = next(r for r in server.requests if r.method == "POST")
    urls = [e["request"]["url"] for e in batch.body["entry"]]
    assert any(u.startswith("ResearchSubject?individual=Patient/p1") for u in urls)
    assert all("_count=200" in u for u in urls if "?" in u)
    assert code == 0


def test_this_study_under_a_server_assigned_id_is_not_another_trial(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # publish on a server that assigns ids: ResearchStudy/<uuid> carries the NCT identifier.
    server.add(
        {
            "resourceType": "ResearchStudy",
            "id": STUDY_UUID,
            "status": "active",
            "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT06010472"}],
        }
    )
    server.add(_subject({"reference": f"ResearchStudy/{STUDY_UUID}"}))
    _, out, _ = _screen(server.base_url, capsys, monkeypatch)
    status = {c["id"]: c["status"] for c in json.loads(out)["criteria"]}
    assert status["exc-recent-trial"] == "not-met"
    assert any(r.path == f"ResearchStudy/{STUDY_UUID}" for r in server.requests)  # read


def test_a_study_that_cannot_be_read_is_reviewed_never_met(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.add(_subject({"reference": f"ResearchStudy/{STUDY_UUID}"}))  # not on the server
    code, out, _ = _screen(server.base_url, capsys, monkeypatch)
    report = json.loads(out)
    trial = next(c for c in report["criteria"] if c["id"] == "exc-recent-trial")
    assert trial["status"] == "needs-review"
    assert "could not be read" in trial["reason"]
    assert "ResearchStudy" in report["notObtained"]
    assert code == 7


def test_incomplete_report_says_so_in_the_headline_and_exits_7(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.fail(500, times=None, match="Condition")
    code, out, err = _screen(server.base_url, capsys, monkeypatch, fmt="text", max_retries=0)
    assert code == 7
    headline = next(line for line in out.splitlines() if "screening of" in line)
    assert "INCOMPLETE" in headline and "Condition" in headline
    assert "INCOMPLETE" in err


def test_nothing_beyond_the_patient_exits_5_without_a_report(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database behind the server is down: every search fails, the Patient read works.
    for path in ("Condition", "Observation", "Medication", "Allergy", "Research", "Consent"):
        server.fail(500, times=None, match=path)
    code, out, err = _screen(server.base_url, capsys, monkeypatch, max_retries=0)
    assert code == 5
    assert out == ""  # nothing that looks like a result
    assert "only the Patient could be read" in err


def test_hung_server_fails_within_the_overall_deadline(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.delay(30.0, times=None)  # every request hangs
    started = time.monotonic()
    code, out, err = _screen(
        server.base_url, capsys, monkeypatch, fhir_deadline_s=2.0, read_timeout_s=20
    )
    elapsed = time.monotonic() - started
    assert elapsed < 4.0  # not 20 s per read, not 80 s in all
    assert code == 3 and out == ""
    assert "fhir_deadline_s" in err  # the message names the limit that was hit


def test_trickling_server_is_cut_off_at_the_overall_deadline(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.fail(200, trickle=0.05, times=None)  # every answer a byte every 50 ms
    started = time.monotonic()
    code, out, err = _screen(
        server.base_url, capsys, monkeypatch, fhir_deadline_s=2.0, read_timeout_s=20
    )
    assert time.monotonic() - started < 4.0
    assert code == 3 and out == ""
    assert "fhir_deadline_s" in err


def test_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_overall_deadline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The status line and headers a byte every 0.2 s: each socket read gets a byte well within
    # the read timeout, so only the overall deadline, enforced on the socket, ends the wait.
    with HeaderTrickle(interval=0.2, max_s=15.0) as trickling:
        started = time.monotonic()
        code, out, err = _screen(
            trickling.base_url, capsys, monkeypatch, fhir_deadline_s=2.0, read_timeout_s=5
        )
        assert time.monotonic() - started < 3.5
        assert trickling.dripped >= 1
        stop = time.monotonic() + 1.0
        while trickling.dripping and time.monotonic() < stop:
            time.sleep(0.05)
        assert trickling.dripping == 0  # the connection was closed, not left reading
    assert code == 3 and out == ""
    assert "fhir_deadline_s" in err and "2 s" in err  # names the limit that was hit


def test_endless_next_links_are_cut_off_in_requests(
    server: FakeFhirServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.endless_next = True  # every searchset page has a next link, forever
    code, out, err = _screen(
        server.base_url, capsys, monkeypatch, max_pages=1000, fhir_max_requests=40
    )
    assert len(server.requests) <= 41  # the limit, and not one request more
    assert code in (5, 7)
    assert "fhir_max_requests" in (out + err)


def test_wrong_base_url_is_not_a_missing_patient(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Flask("not-fhir")

    @app.route("/<path:anything>", methods=["GET", "POST"])
    def anything(anything: str) -> tuple[str, int]:
        return "<html>Not Found</html>", 404

    with serve_wsgi(app) as base:
        code, out, err = _screen(f"{base}/wrong/path", capsys, monkeypatch)
    assert code == 5 and out == ""
    assert "not a FHIR server at this URL" in err


def test_missing_patient_on_a_real_fhir_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeFhirServer() as empty:
        code, _, err = _screen(empty.base_url, capsys, monkeypatch)
    assert code == 2
    assert "Patient/p1 was not found" in err
