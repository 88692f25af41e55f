"""The SMART worksheet app over HTTP: launch flow, failures, CSRF, decisions, writes, retries.

The app runs in Flask's test client at ``https://localhost`` (its cookies are Secure); the EHR
(:class:`fake_smart_ehr.FakeSmartEhr`) is a real HTTP server the app calls for discovery, the
token and the FHIR reads and writes. The browser's part (following the authorize redirect) is
done here with ``requests``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from fake_smart_ehr import FHIR_USER, FakeSmartEhr
from flask import Flask
from flask.testing import FlaskClient
from smart_helpers import PATIENT_ID, load_patient, smart_settings

from fhir_trial.app import create_app
from fhir_trial.smart.blueprint import SESSION_COOKIE, smart_app

APP_BASE = "https://localhost"


@pytest.fixture
def ehr() -> Iterator[FakeSmartEhr]:
    with FakeSmartEhr(
        patient_id=PATIENT_ID, redirect_uris=(f"{APP_BASE}/smart/callback",)
    ) as server:
        load_patient(server)
        yield server


def _app(tmp_path: Path, shared_dir: Path, ehr: FakeSmartEhr, **smart: Any) -> Flask:
    return create_app(smart_settings(tmp_path, shared_dir, ehr, APP_BASE, **smart))


@pytest.fixture
def app(tmp_path: Path, shared_dir: Path, ehr: FakeSmartEhr) -> Flask:
    return _app(tmp_path, shared_dir, ehr)


def _client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    return client


def _authorize(location: str) -> str:
    """Follow the app's redirect to the EHR's authorize endpoint; return the callback path."""
    answer = requests.get(location, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    back = answer.headers["Location"]
    assert back.startswith(f"{APP_BASE}/smart/callback?")
    return back.removeprefix(APP_BASE)


def _launch(client: FlaskClient, ehr: FakeSmartEhr, launch: str | None = "xyz-launch") -> Any:
    query: dict[str, str] = {"iss": ehr.base_url}
    if launch:
        query["launch"] = launch
    started = client.get("/smart/launch", query_string=query)
    assert started.status_code == 302, started.text
    callback = _authorize(started.headers["Location"])
    return client.get(callback)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


def _form_key(html: str) -> str:
    found = re.search(r'name="form_key" value="([^"]+)"', html)
    assert found
    return found.group(1)


def _answers(page: str) -> dict[str, str]:
    """Every open item answered in the patient's favour (so the verdict can become eligible)."""
    ids = sorted(set(re.findall(r'name="answer-([a-z0-9-]+)"', page)))
    assert {"inc-consent", "inc-contraception", "exc-investigator-judgement"} <= set(ids)
    form = {f"answer-{cid}": "met" if cid.startswith("inc-") else "not-met" for cid in ids}
    form["comment-inc-consent"] = "consent signed 2026-11-20"
    return form


def _record(client: FlaskClient, decision: str = "refer", **extra: str) -> Any:
    page = client.get("/smart/worksheet").get_data(as_text=True)
    form = {
        "csrf": _csrf(page),
        "form_key": _form_key(page),
        "decision": decision,
        "decision_comment": "refer to Dr Wang",
        **_answers(page),
        **extra,
    }
    return client.post("/smart/worksheet", data=form), form


# ------------------------------------------------------------------------------ the launch
def test_an_ehr_launch_asks_for_pkce_s256_least_scopes_and_opens_the_worksheet(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    client = _client(app)
    done = _launch(client, ehr)
    assert done.status_code == 303 and done.headers["Location"] == "/smart/worksheet"
    cookie = done.headers.getlist("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith(f"{SESSION_COOKIE}="))
    for flag in ("Secure", "HttpOnly", "SameSite=None", "Partitioned", "Path=/smart"):
        assert flag in session_cookie
    asked = ehr.authorize_requests[0]
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["launch"] == "xyz-launch" and asked["aud"] == ehr.base_url
    scopes = asked["scope"].split()
    assert scopes[:3] == ["launch", "openid", "fhirUser"]
    assert "patient/ResearchSubject.crus" in scopes and "patient/QuestionnaireResponse.c" in scopes
    assert not any(s.startswith(("user/", "system/")) or "*" in s for s in scopes)
    assert ehr.token_requests[0]["client_id"] == "fhir-trial-worksheet"
    page = client.get("/smart/worksheet")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Mei Wang" in html and "36 years, female" in html
    assert 'id="verdict">Potentially eligible' in html
    csp = page.headers["Content-Security-Policy"]
    assert f"frame-ancestors {ehr.origin}" in csp and "script-src" not in csp
    assert "form-action 'self'" in csp and "'unsafe-inline'" not in csp
    assert "<script" not in html
    assert page.headers["Cache-Control"] == "no-store"


def test_a_standalone_launch_asks_for_a_patient_picker(app: Flask, ehr: FakeSmartEhr) -> None:
    client = _client(app)
    assert _launch(client, ehr, launch=None).status_code == 303
    asked = ehr.authorize_requests[0]
    assert "launch" not in asked
    assert asked["scope"].split()[0] == "launch/patient"


def test_an_unknown_iss_gets_a_400_page_and_no_redirect(app: Flask) -> None:
    answer = _client(app).get(
        "/smart/launch", query_string={"iss": "https://evil.example/fhir", "launch": "x"}
    )
    assert answer.status_code == 400
    assert "Location" not in answer.headers
    assert "not registered" in answer.get_data(as_text=True)


def test_a_callback_with_a_foreign_or_reused_state_is_refused(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    client = _client(app)
    started = client.get("/smart/launch", query_string={"iss": ehr.base_url, "launch": "l"})
    callback = _authorize(started.headers["Location"])
    # another browser (no launch cookie) cannot complete it
    assert _client(app).get(callback).status_code == 400
    # and the state is single use
    assert client.get(callback).status_code == 400
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    assert client.get(forged).status_code == 400


def test_a_wrong_pkce_verifier_is_refused_by_the_token_endpoint(
    app: Flask, ehr: FakeSmartEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(app)
    started = client.get("/smart/launch", query_string={"iss": ehr.base_url, "launch": "l"})
    callback = _authorize(started.headers["Location"])
    store = smart_app(app).store
    real = store.take_launch

    def tampered(state: str, binding: str | None) -> Any:
        found = real(state, binding)
        import dataclasses

        return dataclasses.replace(found, verifier="x" * 43) if found else None

    monkeypatch.setattr(store, "take_launch", tampered)
    answer = client.get(callback)
    assert answer.status_code == 502
    assert "invalid_grant" in answer.get_data(as_text=True)
    assert SESSION_COOKIE not in (answer.headers.get("Set-Cookie") or "")


@pytest.mark.parametrize("status", [400, 500])
def test_a_token_endpoint_error_is_a_plain_page(app: Flask, ehr: FakeSmartEhr, status: int) -> None:
    ehr.token_error = status
    answer = _launch(_client(app), ehr)
    assert answer.status_code == 502
    assert f"HTTP {status}" in answer.get_data(as_text=True)


def test_an_id_token_for_another_launch_is_refused(app: Flask, ehr: FakeSmartEhr) -> None:
    ehr.id_token_nonce = "not-ours"
    answer = _launch(_client(app), ehr)
    assert answer.status_code == 502
    assert "nonce" in answer.get_data(as_text=True)


def test_an_authorization_error_is_a_plain_page(app: Flask, ehr: FakeSmartEhr) -> None:
    client = _client(app)
    client.get("/smart/launch", query_string={"iss": ehr.base_url, "launch": "l"})
    answer = client.get("/smart/callback?error=access_denied&state=whatever")
    assert answer.status_code == 400
    assert "did not authorise" in answer.get_data(as_text=True)


def test_private_key_jwt_client_authentication(
    tmp_path: Path, shared_dir: Path, ehr: FakeSmartEhr
) -> None:
    import json

    import jwt as pyjwt

    key = ec.generate_private_key(ec.SECP384R1())
    private = pyjwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    private.update({"kid": "app-key-1", "alg": "ES384"})
    public = {k: v for k, v in private.items() if k != "d"}
    jwks_file = tmp_path / "app-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [private]}), encoding="utf-8")
    ehr.client_jwks = {"keys": [public]}
    app = _app(
        tmp_path,
        shared_dir,
        ehr,
        client_auth="private_key_jwt",
        jwks_file=str(jwks_file),
    )
    assert _launch(_client(app), ehr).status_code == 303
    sent = ehr.token_requests[0]
    assert "client_id" not in sent
    assert sent["client_assertion_type"].endswith("jwt-bearer")


# ------------------------------------------------------------------------------ decisions
def test_csrf_is_required_on_every_post(app: Flask, ehr: FakeSmartEhr) -> None:
    client = _client(app)
    _launch(client, ehr)
    answer, _ = _record(client, csrf="wrong")
    assert answer.status_code == 403
    assert smart_app(app).store.decisions_for(ehr.base_url, f"Patient/{PATIENT_ID}") == []
    good, _ = _record(client)
    decision_url = good.headers["Location"]
    write = client.post(f"{decision_url}/write", data={"csrf": "wrong"})
    assert write.status_code == 403
    assert ehr.resources("ResearchSubject") == []


def test_recording_then_confirming_writes_once_and_a_second_click_writes_nothing(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    client = _client(app)
    _launch(client, ehr)
    answer, form = _record(client)
    assert answer.status_code == 303
    again = client.post("/smart/worksheet", data=form)  # the same form sent twice
    assert again.headers["Location"] == answer.headers["Location"]
    decision_url = answer.headers["Location"]
    decisions = smart_app(app).store.decisions_for(ehr.base_url, f"Patient/{PATIENT_ID}")
    assert len(decisions) == 1
    stored = decisions[0]
    assert stored.author == FHIR_USER and stored.verdict == "eligible"
    assert stored.report["report"]["answers"][0]["criterion"] == "inc-consent"
    assert stored.write_state == "recorded"
    page = client.get(decision_url).get_data(as_text=True)
    assert "Decision recorded" in page and "Write to the EHR" in page
    assert 'id="verdict">Eligible' in page
    csrf = _csrf(page)
    for _ in range(2):
        assert client.post(f"{decision_url}/write", data={"csrf": csrf}).status_code == 303
    subjects = ehr.resources("ResearchSubject")
    responses = ehr.resources("QuestionnaireResponse")
    assert len(subjects) == 1 and len(responses) == 1
    assert subjects[0]["status"] == "candidate"
    assert subjects[0]["study"]["identifier"] == {
        "system": "https://clinicaltrials.gov",
        "value": "NCT06010472",
    }
    assert responses[0]["author"] == {"reference": FHIR_USER}
    posts = [r for r in ehr.requests if r.method in ("POST", "PUT") and r.path]  # not batches
    assert len(posts) == 2  # one write each, the second click wrote nothing
    shown = client.get(decision_url).get_data(as_text=True)
    assert "Written to the EHR" in shown and "HTTP 201" in shown


def test_an_existing_research_subject_is_updated_not_duplicated(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    ehr.add(
        {
            "resourceType": "ResearchSubject",
            "id": "rs-from-card",
            "status": "candidate",
            "study": {
                "identifier": {"system": "https://clinicaltrials.gov", "value": "NCT06010472"}
            },
            "individual": {"reference": f"Patient/{PATIENT_ID}"},
        }
    )
    ehr.add(  # another study's subject of the same patient: left alone
        {
            "resourceType": "ResearchSubject",
            "id": "rs-other",
            "status": "on-study",
            "study": {
                "identifier": {"system": "https://clinicaltrials.gov", "value": "NCT00000001"}
            },
            "individual": {"reference": f"Patient/{PATIENT_ID}"},
        }
    )
    client = _client(app)
    _launch(client, ehr)
    answer, _ = _record(client, decision="not-eligible")
    url = answer.headers["Location"]
    client.post(f"{url}/write", data={"csrf": _csrf(client.get(url).get_data(as_text=True))})
    subjects = {r["id"]: r for r in ehr.resources("ResearchSubject")}
    assert set(subjects) == {"rs-from-card", "rs-other"}
    assert subjects["rs-from-card"]["status"] == "ineligible"
    assert subjects["rs-other"]["status"] == "on-study"


def test_a_failed_write_is_kept_and_retried_and_an_expired_token_asks_for_a_new_launch(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    client = _client(app)
    _launch(client, ehr)
    answer, _ = _record(client, decision="needs-data")
    url = answer.headers["Location"]
    csrf = _csrf(client.get(url).get_data(as_text=True))
    ehr.fail(422, diagnostics="ResearchSubject rejected by a validator", match="ResearchSubject")
    client.post(f"{url}/write", data={"csrf": csrf})
    page = unescape(client.get(url).get_data(as_text=True))
    assert "Writing to the EHR failed" in page and "HTTP 422" in page
    assert "Retry writing to the EHR" in page
    stored = smart_app(app).store.decision(url.rsplit("/", 1)[1])
    assert stored is not None and stored.write_state == "failed"
    # the token stops working: the retry asks for a new launch, and the decision is kept
    ehr.clear_faults()
    ehr.expire_token()
    client.post(f"{url}/write", data={"csrf": csrf})
    page = client.get(url).get_data(as_text=True)
    assert "Open the app again from the patient" in page
    assert ehr.resources("ResearchSubject") == []
    # a new launch, and the retry from the same decision writes it
    ehr.token = ehr.token  # the new launch is issued the current token
    _launch(client, ehr)
    csrf = _csrf(client.get(url).get_data(as_text=True))
    client.post(f"{url}/write", data={"csrf": csrf})
    assert [r["status"] for r in ehr.resources("ResearchSubject")] == ["screening"]
    assert len(ehr.resources("QuestionnaireResponse")) == 1


def test_a_server_that_cannot_write_is_said_plainly(
    tmp_path: Path, shared_dir: Path, ehr: FakeSmartEhr
) -> None:
    ehr.writable = False
    app = _app(tmp_path, shared_dir, ehr)
    client = _client(app)
    _launch(client, ehr)
    answer, _ = _record(client)
    url = answer.headers["Location"]
    client.post(f"{url}/write", data={"csrf": _csrf(client.get(url).get_data(as_text=True))})
    page = client.get(url).get_data(as_text=True)
    assert "This EHR cannot take the decision" in page
    assert "does not say it can" in page
    assert "Retry" not in page
    assert [r for r in ehr.requests if r.method in ("POST", "PUT") and r.path] == []


def test_an_answer_to_a_decided_criterion_is_refused(app: Flask, ehr: FakeSmartEhr) -> None:
    client = _client(app)
    _launch(client, ehr)
    answer, _ = _record(client, **{"answer-inc-sle-diagnosis": "not-met"})
    assert answer.status_code == 409
    assert smart_app(app).store.decisions_for(ehr.base_url, f"Patient/{PATIENT_ID}") == []


def test_no_session_no_worksheet(app: Flask) -> None:
    answer = _client(app).get("/smart/worksheet")
    assert answer.status_code == 401
    assert "needs a launch from the EHR" in answer.get_data(as_text=True)


def test_no_token_reaches_a_log_a_url_or_a_page(
    app: Flask, ehr: FakeSmartEhr, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(app)
    done = _launch(client, ehr)
    answer, _ = _record(client)
    url = answer.headers["Location"]
    page = client.get(url).get_data(as_text=True)
    client.post(f"{url}/write", data={"csrf": _csrf(page)})
    secret = ehr.token
    assert secret not in caplog.text
    urls = [done.headers["Location"], url]
    urls += [r.path + str(r.query) for r in ehr.requests]
    urls += [str(a) for a in ehr.authorize_requests]
    assert not any(secret in u for u in urls)
    for path in ("/smart/worksheet", url):
        answer = client.get(path)
        assert secret not in answer.get_data(as_text=True)
        assert secret not in str(answer.headers)
    # the cookie is an opaque id, not the token; the database keeps only its hash
    cookie = done.headers.getlist("Set-Cookie")[0]
    value = cookie.split(";")[0].split("=", 1)[1]
    assert secret not in cookie
    import sqlite3

    conn = sqlite3.connect(smart_app(app).store.database.path)
    assert (
        conn.execute("SELECT COUNT(*) FROM smart_session WHERE id_hash = ?", (value,)).fetchone()[0]
        == 0
    )
    conn.close()


def test_a_restart_on_the_same_database_loses_nothing(
    tmp_path: Path, shared_dir: Path, ehr: FakeSmartEhr
) -> None:
    first = _app(tmp_path, shared_dir, ehr)
    client = _client(first)
    _launch(client, ehr)
    answer, _ = _record(client)
    url = answer.headers["Location"]
    cookie = client.get_cookie(SESSION_COOKIE, path="/smart")
    assert cookie is not None
    second = _app(tmp_path, shared_dir, ehr)  # a new app object on the same SQLite file
    again = _client(second)
    again.set_cookie(SESSION_COOKIE, cookie.value, path="/smart", secure=True)
    page = again.get(url).get_data(as_text=True)
    assert "Decision recorded" in page and "consent signed 2026-11-20" in page
    again.post(f"{url}/write", data={"csrf": _csrf(page)})
    assert len(ehr.resources("ResearchSubject")) == 1
    qs = parse_qs(urlsplit(ehr.authorize_requests[0]["redirect_uri"]).query)
    assert qs == {}


def test_a_write_after_the_token_ran_out_asks_for_a_new_launch_and_sends_nothing(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    ehr.expires_in = 1
    client = _client(app)
    _launch(client, ehr)
    answer, _ = _record(client)
    url = answer.headers["Location"]
    csrf = _csrf(client.get(url).get_data(as_text=True))
    import time

    time.sleep(1.2)
    client.post(f"{url}/write", data={"csrf": csrf})
    page = client.get(url).get_data(as_text=True)
    assert "has expired" in page and "Open the app again from the patient" in page
    assert [r for r in ehr.requests if r.method in ("POST", "PUT") and r.path] == []
    stored = smart_app(app).store.decision(url.rsplit("/", 1)[1])
    assert stored is not None and stored.write_state == "failed"


def test_two_decisions_written_back_at_once_make_one_research_subject(
    app: Flask, ehr: FakeSmartEhr
) -> None:
    # Two coordinators confirm the write-back of their decisions for one patient at the same
    # moment, while the EHR is slow to answer the ResearchSubject search: both used to find none
    # and create one each.
    pages = []
    for decision in ("refer", "needs-data"):
        client = _client(app)
        _launch(client, ehr)
        answer, _ = _record(client, decision=decision)
        url = answer.headers["Location"]
        pages.append((client, url, _csrf(client.get(url).get_data(as_text=True))))
    ehr.delay(0.5, times=2, match="ResearchSubject")
    writers = [
        threading.Thread(target=client.post, args=(f"{url}/write",), kwargs={"data": {"csrf": c}})
        for client, url, c in pages
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=30)
    assert len(ehr.resources("ResearchSubject")) == 1
    states = {url: smart_app(app).store.decision(url.rsplit("/", 1)[1]) for _, url, _ in pages}
    held = [url for url, d in states.items() if d is not None and d.write_state == "failed"]
    assert len(held) == 1 and [d.write_state for d in states.values()].count("written") == 1
    client, url, csrf = next(p for p in pages if p[1] == held[0])
    page = unescape(client.get(url).get_data(as_text=True))
    assert "another decision for this patient was being written" in page
    # Its retry finds the ResearchSubject the first one made and updates it.
    client.post(f"{url}/write", data={"csrf": csrf})
    subjects = ehr.resources("ResearchSubject")
    assert len(subjects) == 1 and len(ehr.resources("QuestionnaireResponse")) == 2
    expected = (
        "candidate"
        if "refer" in smart_app(app).store.decision(url.rsplit("/", 1)[1]).decision
        else "screening"
    )
    assert subjects[0]["status"] == expected
