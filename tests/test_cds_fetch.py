"""Fetching what prefetch lacks from a real (local) FHIR server that behaves, or does not."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    PATIENT_ID,
    SERVICE_PATH,
    assert_valid,
    base_settings,
    bearer,
    hook_request,
    make_app,
    patient,
    sandbox_issuer,
    sandbox_token,
    searchset,
    sle_condition,
    write_issuers,
)
from fake_fhir_server import FakeFhirServer
from flask.testing import FlaskClient

from fhir_trial.config import Settings
from fhir_trial.searches import plan_searches
from fhir_trial.terminology import load_terminology

TOKEN = "fhir-access-token"
# The prefetch keys of Observation searches as planned (long code lists are split over several).
OBSERVATION_KEYS = [
    planned.key
    for planned in plan_searches(load_terminology(Settings().resources_dir))
    if planned.spec.category == "Observation"
]


@pytest.fixture()
def server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer(token=TOKEN) as running:
        running.add(patient())
        running.add(sle_condition())
        for n in range(3):
            running.add(
                {
                    "resourceType": "Observation",
                    "id": f"o{n}",
                    "status": "final",
                    "subject": {"reference": f"Patient/{PATIENT_ID}"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                }
            )
        yield running


def _client(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, **settings: Any
) -> FlaskClient:
    path = write_issuers(
        tmp_path / "issuers.json", [sandbox_issuer(shared_dir, fhir_servers=[server.base_url])]
    )
    # A generous deadline unless a test is about the deadline (those pass their own): on a loaded
    # 2-core CI machine a cold first fetch-and-screen has taken more than 1 s.
    kw: dict[str, Any] = {"cds_trusted_issuers_file": path, "cds_deadline_s": 10.0}
    kw.update(settings)
    return make_app(base_settings(tmp_path, **kw)).test_client()


def _hook(server: FakeFhirServer, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    body = hook_request(prefetch, fhirServer=server.base_url)
    body["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/*.read",
        "subject": "cds-service",
    }
    return body


def _post(client: FlaskClient, shared_dir: Path, body: Any) -> Any:
    response = client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)))
    assert response.status_code != 500
    if response.status_code == 200:
        assert_valid("response", response.get_json())
    return response


def _only_card(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = response.get_json()["cards"]
    return card  # type: ignore[no-any-return]


def test_prefetch_absent_fetches_every_category_with_the_token(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "Possible candidate" in card["summary"]
    # Everything was fetched: nothing is missing, and the SLE diagnosis (Condition) counts.
    assert "could not be obtained" not in card["detail"]
    assert "**Criteria:** 0 of" not in card["detail"]
    paths = {r.path.split("/")[0] for r in server.searched()}
    assert {
        "Patient",
        "Condition",
        "Observation",
        "MedicationRequest",
        "Consent",
        "ResearchSubject",
    } <= paths
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in server.requests)
    assert all(
        (r.query.get("patient") or r.query.get("individual")) == [f"Patient/{PATIENT_ID}"]
        for r in server.searched()
        if "?" not in r.path and r.query and r.path != "metadata"
    )
    # One batch for every search, the Patient read beside it: two round trips.
    assert [(r.method, r.path) for r in server.requests if r.method == "POST"] == [("POST", "")]
    assert len(server.requests) == 2
    # Observations are asked for by code (their own or a component's) and by NYHA value, never
    # all of them.
    observation = [r.query for r in server.searched() if r.path == "Observation"]
    assert len(observation) >= len(OBSERVATION_KEYS)
    assert all(
        {"combo-code", "value-concept", "component-value-concept", "code:text"} & set(q)
        for q in observation
    )
    # The result codes are split over several searches as the ValueSets grow.
    assert sum(1 for q in observation if "combo-code" in q) >= 2
    assert sum(1 for q in observation if "value-concept" in q) == 1
    assert sum(1 for q in observation if "component-value-concept" in q) == 1


def test_partial_prefetch_fetches_only_what_is_missing(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    prefetch = {"patient": patient(), "condition": searchset(sle_condition())}
    _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server, prefetch)))
    paths = {r.path.split("/")[0] for r in server.searched()}
    assert "Patient" not in paths and "Condition" not in paths
    assert "Observation" in paths


def test_prefetch_next_link_is_continued_on_the_fhir_server(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    for n in range(3, 8):
        server.add(
            {
                "resourceType": "Observation",
                "id": f"o{n}",
                "status": "final",
                "subject": {"reference": f"Patient/{PATIENT_ID}"},
            }
        )
    prefetch = {"patient": patient(), "condition": searchset(sle_condition())}
    prefetch["observation"] = searchset(
        next_url=f"{server.base_url}/Observation?patient={PATIENT_ID}&_count=2&_offset=2"
    )
    card = _only_card(
        _post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server, prefetch))
    )
    assert "could not" not in card["summary"]
    assert any(r.query.get("_offset") == ["2"] for r in server.requests)


def test_slow_fhir_server_answers_within_the_deadline(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.batch = False  # one search per category: only the slow one times out
    server.delay(10.0, times=None, match="Observation")
    client = _client(tmp_path, shared_dir, server, cds_deadline_s=0.5)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="fhir_trial.cds_hooks"):
        response = _post(client, shared_dir, _hook(server))
    elapsed = time.monotonic() - started
    assert elapsed < 5.0  # the server would have taken 10 s
    card = _only_card(response)
    assert "could not be completed" in card["summary"]
    assert "Observation (timed out at the hook's time budget, cds\\_deadline\\_s)" in card["detail"]
    assert "timed out" in caplog.text
    assert PATIENT_ID not in caplog.text and TOKEN not in caplog.text


def test_slow_server_without_incomplete_cards_gives_no_card(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.delay(10.0, times=None)
    client = _client(tmp_path, shared_dir, server, cds_deadline_s=0.4, cds_incomplete_card=False)
    response = _post(client, shared_dir, _hook(server))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_server_500_on_one_category(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.fail(500, times=None, match="Observation")
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "could not be completed" in card["summary"]
    assert "Observation (the FHIR server answered HTTP 500)" in card["detail"]


def test_server_500_everywhere_is_412(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.fail(500, times=None)
    response = _post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server))
    assert response.status_code == 412


def test_server_429_once_is_retried(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.fail(429, retry_after="0", times=1, match="Condition")
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "could not be completed" not in card["summary"]
    # In the batch, then once more alone.
    assert sum(1 for r in server.searched() if r.path == "Condition") == 2


def test_server_429_forever(tmp_path: Path, shared_dir: Path, server: FakeFhirServer) -> None:
    server.fail(429, retry_after="30", times=None, match="Condition")
    client = _client(tmp_path, shared_dir, server, cds_deadline_s=0.8)
    card = _only_card(_post(client, shared_dir, _hook(server)))
    assert "could not be completed" in card["summary"]
    assert "Condition" in card["detail"]


def test_server_garbage(tmp_path: Path, shared_dir: Path, server: FakeFhirServer) -> None:
    server.fail(
        200,
        body="<html>please log in</html>",
        content_type="text/html",
        times=None,
        match="Observation",
    )
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "did not answer with FHIR JSON" in card["detail"]


def test_server_garbage_for_the_patient_is_412(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.fail(
        200, body="not json", content_type="application/fhir+json", times=None, match="Patient"
    )
    assert (
        _post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)).status_code == 412
    )


def test_server_looping_next_links_are_cut_off(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    loop = f"{server.base_url}/Observation?patient={PATIENT_ID}&page=again"
    server.fail(200, body=searchset(next_url=loop), times=None, match="Observation")
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "next links loop" in card["detail"]
    # Each Observation search: its first page, then the looping link once.
    assert sum(1 for r in server.searched() if r.path == "Observation") == 2 * len(OBSERVATION_KEYS)


def test_next_links_to_another_origin_are_not_followed(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    for n in range(3, 60):
        server.add(
            {
                "resourceType": "Observation",
                "id": f"o{n}",
                "status": "final",
                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            }
        )
    server.next_link_base = "http://127.0.0.2:9/fhir"
    client = _client(tmp_path, shared_dir, server, search_page_size=50)
    card = _only_card(_post(client, shared_dir, _hook(server)))
    assert "outside the FHIR server" in card["detail"]


def test_fhir_server_refusing_the_token(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    body = _hook(server)
    body["fhirAuthorization"]["access_token"] = "wrong"
    response = _post(_client(tmp_path, shared_dir, server), shared_dir, body)
    assert response.status_code == 412
    assert "access refused" in response.get_json()["message"]


@pytest.mark.parametrize(
    "suffix", ["x", "/../other", "/sub"], ids=["longer path", "dot-dot", "sub path"]
)
def test_fhir_servers_not_on_the_allowlist_are_never_contacted(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, suffix: str
) -> None:
    body = _hook(server)
    body["fhirServer"] = server.base_url + suffix
    response = _post(_client(tmp_path, shared_dir, server), shared_dir, body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "fhir-server-not-allowed"
    assert server.requests == []


def test_development_mode_does_not_open_the_server_allowlist(
    tmp_path: Path, server: FakeFhirServer
) -> None:
    client = make_app(base_settings(tmp_path, cds_development_mode=True)).test_client()
    response = client.post(SERVICE_PATH, json=_hook(server))
    assert response.status_code == 400
    assert server.requests == []
    allowed = make_app(
        base_settings(tmp_path, cds_development_mode=True, cds_dev_fhir_servers=(server.base_url,))
    ).test_client()
    assert allowed.post(SERVICE_PATH, json=_hook(server)).status_code == 200


def test_server_bundle_that_cannot_be_read_makes_its_category_unknown(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    # A searchset whose entry is not a list must not read as "no Observations".
    server.fail(
        200,
        body='{"resourceType": "Bundle", "type": "searchset", "entry": 3}',
        content_type="application/fhir+json",
        times=None,
        match="Observation",
    )
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "could not be completed" in card["summary"]
    assert "Observation (the FHIR server sent a Bundle that cannot be read" in card["detail"]
    assert "('entry' is not a list)" in card["detail"]


# ------------------------------------------------------------------- referenced Medications
RITUXIMAB_ORDER = {
    "resourceType": "MedicationRequest",
    "id": "mr-rtx",
    "status": "active",
    "intent": "order",
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "medicationReference": {"reference": "Medication/rtx"},
    "authoredOn": "2026-11-16",
}
RITUXIMAB = {
    "resourceType": "Medication",
    "id": "rtx",
    "code": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "121191"}],
        "text": "rituximab",
    },
}


def _prefetch_with(order: dict[str, Any]) -> dict[str, Any]:
    from cds_helpers import full_prefetch

    prefetch = full_prefetch()
    prefetch["medicationRequest"] = searchset(order)
    return prefetch


def _screening_client(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, reports: list[Any]
) -> FlaskClient:
    """The service with the real evaluator, keeping each report for the test to read."""
    from fhir_trial.evaluate import evaluate

    def screen(record: Any, settings: Any) -> Any:
        reports.append(evaluate(record, settings))
        return reports[-1]

    path = write_issuers(
        tmp_path / "issuers.json", [sandbox_issuer(shared_dir, fhir_servers=[server.base_url])]
    )
    settings = base_settings(tmp_path, cds_trusted_issuers_file=path, cds_deadline_s=10.0)
    return make_app(settings, evaluator=screen).test_client()


def _status(report: Any, criterion: str) -> str:
    return next(r.status for r in report.criteria if r.id == criterion)


def test_a_referenced_medication_missing_from_prefetch_is_read_from_the_fhir_server(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.add(RITUXIMAB)
    reports: list[Any] = []
    client = _screening_client(tmp_path, shared_dir, server, reports)
    response = _post(client, shared_dir, _hook(server, _prefetch_with(RITUXIMAB_ORDER)))
    assert response.status_code == 200
    # Complete prefetch: the only request is the Medication read, with the EHR's token.
    (read,) = server.requests
    assert read.method == "GET" and read.path == "Medication/rtx"
    assert read.headers.get("Authorization") == f"Bearer {TOKEN}"
    # Identified as rituximab ten days ago: excluded, so no card by default.
    assert _status(reports[0], "exc-b-cell-therapy") == "met"
    assert response.get_json()["cards"] == []


def test_a_referenced_medication_the_server_cannot_give_is_reviewed_not_read_as_absent(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    reports: list[Any] = []  # the server does not hold Medication/rtx: 404
    client = _screening_client(tmp_path, shared_dir, server, reports)
    response = _post(client, shared_dir, _hook(server, _prefetch_with(RITUXIMAB_ORDER)))
    assert response.status_code == 200
    assert [r.path for r in server.requests] == ["Medication/rtx"]
    (report,) = reports
    assert _status(report, "exc-b-cell-therapy") == "needs-review"
    assert any("1 referenced Medication resources could not be read" in w for w in report.warnings)


def test_medications_referenced_on_another_server_are_not_fetched(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    elsewhere = dict(
        RITUXIMAB_ORDER,
        medicationReference={"reference": "https://elsewhere.example.org/fhir/Medication/rtx"},
    )
    server.add(RITUXIMAB)
    reports: list[Any] = []
    client = _screening_client(tmp_path, shared_dir, server, reports)
    response = _post(client, shared_dir, _hook(server, _prefetch_with(elsewhere)))
    assert response.status_code == 200
    assert server.requests == []  # and no other server runs: nothing else could be asked
    (report,) = reports
    assert _status(report, "exc-b-cell-therapy") == "needs-review"
    assert any("could not be read" in w for w in report.warnings)


def test_a_slow_medication_read_is_cut_off_at_the_deadline(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.add(RITUXIMAB)
    server.delay(10.0, times=None, match="Medication")
    client = _client(tmp_path, shared_dir, server, cds_deadline_s=0.5)
    started = time.monotonic()
    response = _post(client, shared_dir, _hook(server, _prefetch_with(RITUXIMAB_ORDER)))
    assert time.monotonic() - started < 5.0  # the server would have taken 10 s
    # The medication reads stop short of the deadline so the rest of the screening can answer:
    # the unread drug stays unidentified (the criteria review it) and the card says so. On a
    # machine too slow for that reserve the answer is the "could not be completed" card instead;
    # either is safe, a hang or an error is not.
    card = _only_card(response)
    assert (
        "1 referenced Medication resources could not be read" in card["detail"]
        or "could not be completed" in card["summary"]
    )


def test_server_without_combo_code_is_searched_by_code_in_one_more_round_trip(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer
) -> None:
    server.unsupported = {"combo-code"}
    card = _only_card(_post(_client(tmp_path, shared_dir, server), shared_dir, _hook(server)))
    assert "could not be completed" not in card["summary"]
    assert "Observation/o0" in card["detail"]  # found by code
    assert "cannot search inside panels (combo-code)" in card["detail"]
    # The Patient read and the batch, then each refused search once by code (in parallel).
    combo = [r for r in server.searched() if "combo-code" in r.query]
    by_code = [r for r in server.searched() if "code" in r.query]
    assert len(combo) == len(by_code) >= 2
    assert all(r.method == "GET" for r in server.requests[2:])
    assert [r.method for r in server.requests].count("POST") == 1
