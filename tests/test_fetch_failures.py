"""Every failed fetch is `unknown`, never `not-met`: each data category x each kind of failure.

One patient whose record holds positive evidence in every category (epilepsy, a NYHA class IV
finding, a hemoglobin inside a blood count panel, rituximab given 10 days ago, a cyclophosphamide
allergy, another trial, a research consent) lives on the local fake FHIR server. The baseline
screening finds all of it. Then one category's searches fail (HTTP 500, HTTP 400, an
OperationOutcome in a 200, no answer in time, malformed JSON, a truncated body, next links that
never end) and the screening must not turn anything into `not-met` that was not `not-met` with
the data, must say the report is incomplete, and must name the category.

Both paths run: the CLI (``fhir-trial screen --fhir-server``, exit code 7 and the JSON report) and
the CDS Hooks service (no prefetch: the service fetches everything; the evaluator's report is
recorded). The population path is another helper's work and is not covered here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    SERVICE_PATH,
    Recorder,
    base_settings,
    bearer,
    hook_request,
    make_app,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)
from clinical_cases import CASES_DIR, PATIENT_ID, load_case
from fake_fhir_server import FakeFhirServer, operation_outcome
from header_trickle import HeaderTrickle

from fhir_trial.cli import main
from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import NYHA_FINDINGS

AS_OF = "2026-11-26"
TOKEN = "fhir-access-token"
# One case per category, each holding evidence that decides a criterion reading it.
EVIDENCE = (
    "exc-cns-disease/epilepsy.yaml",  # Condition -> exc-cns-disease met
    "exc-heart-failure/nyha-class-iv-observation.yaml",  # Observation (NYHA by value)
    "inc-hemoglobin/cbc-panel-component-11-5-g-per-decilitre-meets.yaml",  # Observation (panel)
    "exc-b-cell-therapy/rituximab-infusion-10-days-ago.yaml",  # MedicationAdministration
    "exc-b-cell-therapy/belimumab-active-request.yaml",  # MedicationRequest
    "exc-drug-allergy/cyclophosphamide-allergy.yaml",  # AllergyIntolerance
    "exc-recent-trial/on-another-study-now.yaml",  # ResearchSubject
    "inc-consent/active-research-consent-naming-the-study-meets.yaml",  # Consent
)
# The searched resource type (the fault's path) -> the category the report must name.
CATEGORIES = {
    "Condition": "Condition",
    "Observation": "Observation",
    "MedicationAdministration": "MedicationAdministration",
    "MedicationRequest": "MedicationRequest",
    "MedicationStatement": "MedicationStatement",
    "MedicationDispense": "MedicationDispense",
    "AllergyIntolerance": "AllergyIntolerance",
    "ResearchSubject": "ResearchSubject",
    "Consent": "Consent",
}


def _fail_500(server: FakeFhirServer, path: str) -> None:
    server.fail(500, times=None, match=path)


def _fail_400(server: FakeFhirServer, path: str) -> None:
    server.fail(400, times=None, match=path, diagnostics="unknown search parameter")


def _outcome_in_200(server: FakeFhirServer, path: str) -> None:
    server.fail(200, body=operation_outcome("database unavailable"), times=None, match=path)


def _malformed(server: FakeFhirServer, path: str) -> None:
    server.fail(
        200, body='{"resourceType": "Bundle", "entry": [', content_type="application/fhir+json",
        times=None, match=path,
    )  # fmt: skip


def _truncated(server: FakeFhirServer, path: str) -> None:
    server.fail(200, truncate=True, times=None, match=path)


def _timeout(server: FakeFhirServer, path: str) -> None:
    server.delay(5.0, times=None, match=path)


def _endless_pages(server: FakeFhirServer, path: str) -> None:
    server.endless_next = path


FAILURES: dict[str, Callable[[FakeFhirServer, str], None]] = {
    "http-500": _fail_500,
    "http-400": _fail_400,
    "operation-outcome-200": _outcome_in_200,
    "malformed-json": _malformed,
    "truncated-body": _truncated,
    "timeout": _timeout,
    "endless-paging": _endless_pages,
}
# Short limits so that timeouts and paging caps are reached quickly.
LIMITS = {"read_timeout_s": 0.6, "max_pages": 3, "max_retries": 0, "fhir_deadline_s": 20.0}


# The other trial's ResearchStudy, which the ResearchSubject references (read to tell it apart
# from this study).
OTHER_STUDY = {
    "resourceType": "ResearchStudy",
    "id": "other-trial",
    "status": "active",
    "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT09999999"}],
}


def _resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [OTHER_STUDY]
    for index, name in enumerate(EVIDENCE):
        for resource in load_case(CASES_DIR / name).resources:
            if resource["resourceType"] == "Patient":
                if index == 0:
                    out.append(resource)
                continue
            resource = dict(resource, id=f"e{index}-{resource['id']}")
            out.append(resource)
    return out


@pytest.fixture()
def server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer() as running:
        for resource in _resources():
            running.add(resource)
        yield running


def _screen_cli(
    server: FakeFhirServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    for name, value in LIMITS.items():
        monkeypatch.setenv(f"FHIR_TRIAL_{name.upper()}", str(value))
    argv = ["screen", "--fhir-server", server.base_url, "--patient", PATIENT_ID]
    code = main([*argv, "--as-of", AS_OF, "--format", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def _statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["criteria"]}


def _check_no_new_not_met(baseline: dict[str, str], faulty: dict[str, str]) -> None:
    wrong = {c: s for c, s in faulty.items() if s == "not-met" and baseline[c] != "not-met"}
    assert not wrong, f"a failed fetch turned into not-met: {wrong}"


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    """The statuses with every category read (the evidence decides its criteria)."""
    with FakeFhirServer() as running:
        for resource in _resources():
            running.add(resource)
        settings = Settings(as_of=dt.date.fromisoformat(AS_OF), **LIMITS)  # type: ignore[arg-type]
        from fhir_trial.sources.fhir_client import FhirClient

        with FhirClient(running.base_url, settings=settings) as client:
            record = client.fetch_patient_record(PATIENT_ID)
        assert not record.failed, record.failed
        statuses = evaluate(record, settings).statuses()
    # The evidence decides what it should: every category holds something that counts.
    assert statuses["exc-cns-disease"] == "met"
    assert statuses["exc-heart-failure"] == "met"
    assert statuses["inc-hemoglobin"] == "met"
    assert statuses["exc-b-cell-therapy"] == "met"
    assert statuses["exc-drug-allergy"] == "met"
    assert statuses["exc-recent-trial"] == "met"
    assert statuses["inc-consent"] == "met"
    return statuses


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("path", sorted(CATEGORIES))
def test_cli_failed_category_is_never_not_met(
    server: FakeFhirServer,
    baseline: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    path: str,
    failure: str,
) -> None:
    FAILURES[failure](server, path)
    code, report = _screen_cli(server, monkeypatch, capsys)
    assert code == 7, report  # a report, marked incomplete
    assert report["complete"] is False
    assert CATEGORIES[path] in report["notObtained"]
    _check_no_new_not_met(baseline, _statuses(report))


@pytest.mark.parametrize("failure", ["http-500", "http-400"])
def test_cli_nyha_search_failing_alone_makes_heart_failure_unknown(
    server: FakeFhirServer,
    baseline: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    # Only the NYHA searches (by value, by component value, by words) fail: the NYHA class IV
    # Observation is not found, and nothing else says the patient has no heart failure. (A 400 to
    # the words search alone would be a server without code:text: a warning, see below.)
    status = 500 if failure == "http-500" else 400
    server.fail(status, times=None, match="Observation", query="value-concept")
    server.fail(status, times=None, match="Observation", query="code:text")
    code, report = _screen_cli(server, monkeypatch, capsys)
    assert code == 7
    assert report["notObtained"] == [NYHA_FINDINGS]
    statuses = _statuses(report)
    assert statuses["exc-heart-failure"] == "unknown"
    assert statuses["inc-hemoglobin"] == "met"  # every other Observation was read
    _check_no_new_not_met(baseline, statuses)


# ------------------------------------------------------------------------------ CDS Hooks
def _post_hook(
    tmp_path: Path, shared_dir: Path, base_url: str, recorder: Recorder, **settings_kw: Any
) -> Any:
    """A hook without prefetch, the service fetching from ``base_url``; the Flask response."""
    issuer = sandbox_issuer(shared_dir, fhir_servers=[base_url])
    path = write_issuers(tmp_path / "issuers.json", [issuer])
    settings = base_settings(tmp_path, cds_trusted_issuers_file=path, **settings_kw)
    client = make_app(settings, evaluator=recorder).test_client()
    body = hook_request(None, fhirServer=base_url)
    body["context"]["patientId"] = PATIENT_ID
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer"}
    return client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)))


def _hook(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, recorder: Recorder
) -> dict[str, Any]:
    response = _post_hook(
        tmp_path,
        shared_dir,
        server.base_url,
        recorder,
        cds_deadline_s=3.0,
        read_timeout_s=0.6,
        max_pages=3,
        max_retries=0,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("path", sorted(CATEGORIES))
def test_cds_failed_category_is_never_not_met(
    tmp_path: Path,
    shared_dir: Path,
    server: FakeFhirServer,
    baseline: dict[str, str],
    path: str,
    failure: str,
) -> None:
    FAILURES[failure](server, path)
    recorder = Recorder()
    answer = _hook(tmp_path, shared_dir, server, recorder)
    assert recorder.report is not None, answer
    report = recorder.report.to_json()
    assert report["complete"] is False
    assert CATEGORIES[path] in report["notObtained"]
    _check_no_new_not_met(baseline, _statuses(report))


@pytest.mark.parametrize("status", [500, 400])
def test_cds_nyha_search_failing_alone_makes_heart_failure_unknown(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, baseline: dict[str, str], status: int
) -> None:
    server.fail(status, times=None, match="Observation", query="value-concept")
    server.fail(status, times=None, match="Observation", query="code:text")
    recorder = Recorder()
    _hook(tmp_path, shared_dir, server, recorder)
    assert recorder.report is not None
    report = recorder.report.to_json()
    assert report["notObtained"] == [NYHA_FINDINGS]
    assert recorder.report.criterion("exc-heart-failure").status == "unknown"
    _check_no_new_not_met(baseline, _statuses(report))


def test_cds_server_without_code_text_search_only_warns(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, baseline: dict[str, str]
) -> None:
    # A server that does not support code:text (400): the NYHA class finding is still found by
    # value-concept, the report stays complete, and the record says what was not searched.
    server.unsupported = {"code:text"}
    recorder = Recorder()
    _hook(tmp_path, shared_dir, server, recorder)
    assert recorder.report is not None and recorder.record is not None
    assert recorder.report.complete and "complete" not in recorder.report.to_json()
    assert any("code:text" in w for w in recorder.record.warnings)
    assert _statuses(recorder.report.to_json()) == baseline


# ------------------------------------------------------------------------------ trickled headers
# One category's answers send their status line and headers a byte every 0.2 s (requests' read
# timeout, per socket read, never fires): the overall deadline cuts them off on the socket, the
# category is not obtained, the report says which limit was hit, and nothing becomes not-met.
TRICKLE_DEADLINE_S = 2.0


def _wait_until_closed(trickling: HeaderTrickle, seconds: float = 1.0) -> None:
    stop = time.monotonic() + seconds
    while trickling.dripping and time.monotonic() < stop:
        time.sleep(0.05)
    assert trickling.dripping == 0  # the client closed its connection: nothing left reading


@pytest.mark.parametrize("path", ["Condition", "MedicationRequest"])
def test_cli_headers_trickled_for_one_category_stop_at_the_deadline(
    server: FakeFhirServer,
    baseline: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    path: str,
) -> None:
    server.batch = False  # one GET per search, so that only this category's answer trickles
    limits = {**LIMITS, "fhir_deadline_s": TRICKLE_DEADLINE_S, "read_timeout_s": 5.0}
    for name, value in limits.items():
        monkeypatch.setenv(f"FHIR_TRIAL_{name.upper()}", str(value))
    with HeaderTrickle(server.base_url, match=f"GET /fhir/{path}?", max_s=15.0) as trickling:
        started = time.monotonic()
        argv = ["screen", "--fhir-server", trickling.base_url, "--patient", PATIENT_ID]
        code = main([*argv, "--as-of", AS_OF, "--format", "json"])
        elapsed = time.monotonic() - started
        assert trickling.dripped >= 1
        _wait_until_closed(trickling)
    captured = capsys.readouterr()
    assert elapsed < TRICKLE_DEADLINE_S + 1.5
    assert code == 7, captured.err  # a report, marked incomplete
    report = json.loads(captured.out)
    assert report["complete"] is False and CATEGORIES[path] in report["notObtained"]
    assert f"{CATEGORIES[path]} (the overall limit of 2 s (fhir_deadline_s)" in captured.err
    _check_no_new_not_met(baseline, _statuses(report))


def test_cds_headers_trickled_for_one_category_stop_at_the_deadline(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, baseline: dict[str, str]
) -> None:
    server.batch = False
    with HeaderTrickle(server.base_url, match="GET /fhir/Condition?", max_s=15.0) as trickling:
        recorder = Recorder()
        started = time.monotonic()
        response = _post_hook(
            tmp_path,
            shared_dir,
            trickling.base_url,
            recorder,
            cds_deadline_s=1.5,
            read_timeout_s=5.0,
            max_retries=0,
        )
        elapsed = time.monotonic() - started
        assert trickling.dripped >= 1
        _wait_until_closed(trickling)
    assert response.status_code == 200 and elapsed < 1.5 + 1.0
    summaries = " ".join(card["summary"] for card in response.get_json()["cards"])
    if recorder.report is not None:  # evaluated with what arrived in time
        report = recorder.report.to_json()
        assert "Condition" in report["notObtained"]
        _check_no_new_not_met(baseline, _statuses(report))
    else:  # or cut off before the evaluation: "could not be completed"
        assert "could not be completed" in summaries


def test_cds_endless_next_links_are_cut_off_in_requests(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, baseline: dict[str, str]
) -> None:
    # Every searchset page links to another, forever; the page cap is out of reach, so only the
    # request cap of the hook (fhir_max_requests, shared by all its fetches) stops the paging.
    server.endless_next = True
    recorder = Recorder()
    response = _post_hook(
        tmp_path,
        shared_dir,
        server.base_url,
        recorder,
        cds_deadline_s=5.0,
        max_pages=1000,
        fhir_max_requests=40,
        max_retries=0,
    )
    assert response.status_code == 200
    assert len(server.requests) <= 40  # the cap, and not one request more
    assert recorder.report is not None and recorder.record is not None
    report = recorder.report.to_json()
    assert report["complete"] is False
    # The reason names the limit that was hit (not "timed out": the time budget was not).
    reasons = set(recorder.record.failed.values())
    assert "the limit of 40 requests per screening (fhir_max_requests) was reached" in reasons
    assert "timed out" not in reasons
    _check_no_new_not_met(baseline, _statuses(report))
