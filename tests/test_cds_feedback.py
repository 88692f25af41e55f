"""Feedback (stored durably and idempotently) and the worksheet page behind the card's smart link."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    SERVICE_PATH,
    SERVICE_URL,
    base_settings,
    bearer,
    full_prefetch,
    hook_request,
    make_app,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)
from flask.testing import FlaskClient

from fhir_trial.cds_hooks.store import Database
from fhir_trial.cds_hooks.worksheet import WorksheetStore

SPEC = "fixtures/cds-hooks/hl7-cds-hooks/spec-examples-v2.0.1"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"


@pytest.fixture()
def settings_kw(tmp_path: Path, shared_dir: Path) -> dict[str, Any]:
    return {
        "cds_trusted_issuers_file": write_issuers(
            tmp_path / "issuers.json", [sandbox_issuer(shared_dir)]
        )
    }


@pytest.fixture()
def client(tmp_path: Path, settings_kw: dict[str, Any]) -> FlaskClient:
    return make_app(base_settings(tmp_path, **settings_kw)).test_client()


def _send(
    client: FlaskClient, shared_dir: Path, body: Any, aud: str = f"{SERVICE_URL}/feedback"
) -> Any:
    return client.post(FEEDBACK_PATH, json=body, headers=bearer(sandbox_token(shared_dir, aud=aud)))


def _rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "cds.sqlite3") as conn:
        return conn.execute(
            "SELECT card, outcome, accepted_suggestions, override_code, user_comment, client FROM cds_feedback ORDER BY id"
        ).fetchall()


@pytest.mark.parametrize(
    "name",
    [
        "example-suggestion-accepted_L862.json",
        "example-overridden-guidance-with-overridereason_L926.json",
        "example-overridden-guidance-without-overridereason_L894.json",
    ],
)
def test_spec_feedback_examples_are_stored_before_the_answer(
    client: FlaskClient, shared_dir: Path, tmp_path: Path, name: str
) -> None:
    body = json.loads((shared_dir / SPEC / name).read_text())
    response = _send(client, shared_dir, body)
    assert response.status_code == 200
    # The spec's card was never issued by this service: stored, but marked as such.
    assert response.get_json() == {"stored": 1, "duplicates": 0, "unissued": 1}
    (row,) = _rows(tmp_path)  # read through a separate connection: it is committed
    item = body["feedback"][0]
    assert row[0] == item["card"] and row[1] == item["outcome"]
    assert row[5] == "https://sandbox.cds-hooks.org"
    if item["outcome"] == "accepted":
        assert json.loads(row[2]) == [s["id"] for s in item["acceptedSuggestions"]]
    if "overrideReason" in item:
        assert row[3] == "d7ecf885" and row[4] == "A comment entered by the clinician."


def test_feedback_is_idempotent(client: FlaskClient, shared_dir: Path, tmp_path: Path) -> None:
    body = json.loads((shared_dir / SPEC / "example-suggestion-accepted_L862.json").read_text())
    first, again = {"stored": 1, "duplicates": 0}, {"stored": 0, "duplicates": 1}
    assert _send(client, shared_dir, body).get_json() == first | {"unissued": 1}
    assert _send(client, shared_dir, body).get_json() == again | {"unissued": 1}
    later = json.loads(json.dumps(body))
    later["feedback"][0]["outcomeTimestamp"] = "2021-12-12T10:00:00Z"
    assert _send(client, shared_dir, later).get_json() == first | {"unissued": 1}
    assert len(_rows(tmp_path)) == 2


def test_feedback_needs_its_own_url_as_audience(
    client: FlaskClient, shared_dir: Path, tmp_path: Path
) -> None:
    """A token minted for the hook (aud = the service URL) is not accepted by feedback."""
    body = {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        ]
    }
    refused = _send(client, shared_dir, body, aud=SERVICE_URL)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    refused = _send(client, shared_dir, body, aud=[SERVICE_URL, "https://other.example/feedback"])
    assert refused.status_code == 401
    assert _send(client, shared_dir, body).status_code == 200  # aud = .../feedback
    assert len(_rows(tmp_path)) == 1  # only the last one


def _issued_card(client: FlaskClient, shared_dir: Path) -> str:
    token = sandbox_token(shared_dir)
    response = client.post(SERVICE_PATH, json=hook_request(full_prefetch()), headers=bearer(token))
    (card,) = response.get_json()["cards"]
    uuid: str = card["uuid"]
    return uuid


def _issued_flags(tmp_path: Path) -> list[tuple[str, int | None]]:
    with sqlite3.connect(tmp_path / "cds.sqlite3") as conn:
        return conn.execute("SELECT card, card_issued FROM cds_feedback ORDER BY id").fetchall()


def test_feedback_on_an_issued_card_is_marked_issued_and_others_are_not(
    client: FlaskClient, shared_dir: Path, tmp_path: Path
) -> None:
    card = _issued_card(client, shared_dir)
    stamp = "2026-11-26T10:00:00Z"
    body = {
        "feedback": [
            {"card": card, "outcome": "overridden", "outcomeTimestamp": stamp},
            {"card": "never-issued", "outcome": "overridden", "outcomeTimestamp": stamp},
        ]
    }
    response = _send(client, shared_dir, body)
    assert response.get_json() == {"stored": 2, "duplicates": 0, "unissued": 1}
    assert _issued_flags(tmp_path) == [(card, 1), ("never-issued", 0)]


def test_a_card_issued_to_another_client_is_unissued_for_this_one(
    tmp_path: Path, shared_dir: Path
) -> None:
    from cds_helpers import ec_public_jwk
    from cryptography.hazmat.primitives.asymmetric import ec

    other_key = ec.generate_private_key(ec.SECP384R1())
    other = {
        "iss": "https://other-ehr.example",
        "jwks": {"keys": [ec_public_jwk(other_key, "k1")]},
        "fhir_servers": ["https://ehr.example.org/fhir"],
    }
    issuers = write_issuers(tmp_path / "two.json", [sandbox_issuer(shared_dir), other])
    client = make_app(base_settings(tmp_path, cds_trusted_issuers_file=issuers)).test_client()
    card = _issued_card(client, shared_dir)  # issued to the sandbox
    token = sandbox_token(
        shared_dir,
        aud=f"{SERVICE_URL}/feedback",
        header={"kid": "k1"},
        claims={"iss": other["iss"]},
        drop=("jku",),
        key=other_key,
    )
    stamp = "2026-11-26T10:00:00Z"
    body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": stamp}]}
    response = client.post(FEEDBACK_PATH, json=body, headers=bearer(token))
    assert response.status_code == 200 and response.get_json()["unissued"] == 1
    assert _issued_flags(tmp_path) == [(card, 0)]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"feedback": []},
        {
            "feedback": [
                {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
            ]
        },
        {
            "feedback": [
                {"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
            ]
        },
        {"feedback": [{"card": "c", "outcome": "overridden"}]},
    ],
    ids=["empty", "no items", "accepted without suggestions", "bad outcome", "no timestamp"],
)
def test_malformed_feedback_is_400_and_nothing_is_stored(
    client: FlaskClient, shared_dir: Path, tmp_path: Path, body: Any
) -> None:
    response = _send(client, shared_dir, body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid-feedback"
    assert not (tmp_path / "cds.sqlite3").exists() or _rows(tmp_path) == []


def test_feedback_needs_a_valid_jwt(client: FlaskClient, shared_dir: Path) -> None:
    body = {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        ]
    }
    assert client.post(FEEDBACK_PATH, json=body).status_code == 401


def test_feedback_storage_failure_is_503_not_500(
    client: FlaskClient, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhir_trial.cds_hooks import cds_service

    service = cds_service(client.application)

    def broken(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.feedback, "store", broken)
    body = {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        ]
    }
    response = _send(client, shared_dir, body)
    assert response.status_code == 503


# ------------------------------------------------------------------------------------- worksheet
def _worksheet_url(client: FlaskClient, shared_dir: Path) -> str:
    response = client.post(
        SERVICE_PATH, json=hook_request(full_prefetch()), headers=bearer(sandbox_token(shared_dir))
    )
    (card,) = response.get_json()["cards"]
    url: str = card["links"][1]["url"]
    return url.replace("http://localhost", "")


def test_worksheet_link_opens_the_read_only_report(client: FlaskClient, shared_dir: Path) -> None:
    page = client.get(_worksheet_url(client, shared_dir))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "NCT06010472 screening worksheet (read-only)" in html
    assert "Patient/pat-1" in html and "Condition/c1" in html
    assert "age 36 &lt;on&gt; *2026*" in html  # escaped, never raw HTML
    assert "<form" not in html and "<script" not in html
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_worksheet_token_tampered_or_missing(client: FlaskClient, shared_dir: Path) -> None:
    url = _worksheet_url(client, shared_dir)
    assert client.get(url[:-2] + ("AA" if not url.endswith("AA") else "BB")).status_code == 403
    assert client.get(f"{SERVICE_PATH}/worksheet/nothing").status_code == 403


def test_worksheet_token_from_another_secret_is_refused(
    tmp_path: Path, settings_kw: dict[str, Any], shared_dir: Path
) -> None:
    first = make_app(base_settings(tmp_path, **settings_kw)).test_client()
    url = _worksheet_url(first, shared_dir)
    other = make_app(base_settings(tmp_path, secret_key="another", **settings_kw)).test_client()
    assert other.get(url).status_code == 403


def test_worksheet_tokens_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = WorksheetStore(Database(str(tmp_path / "w.sqlite3")), "s", ttl_s=60)
    report = {"patient": "Patient/1", "criteria": []}
    _, token = store.save(report, "card")
    assert store.load(token) == report
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert store.load(token) is None


def test_expired_worksheet_reports_are_purged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(str(tmp_path / "w.sqlite3"))
    store = WorksheetStore(database, "s", ttl_s=60, purge_every=3)
    for _ in range(3):
        store.save({"patient": "Patient/1", "criteria": []}, "card")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the three have expired
    store.save({"patient": "Patient/1", "criteria": []}, "card")  # 4th save: purge runs
    rows = database.connection().execute("SELECT COUNT(*) FROM cds_worksheet").fetchone()[0]
    assert rows == 1
