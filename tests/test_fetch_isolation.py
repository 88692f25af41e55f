"""A slow or trickling FHIR server costs other hospitals' hooks nothing (issue 19).

Two hospitals, two trusted issuers, each allowed its own FHIR server: hospital A's server answers
every request a byte at a time (a body that would take minutes; or, in the second test, its status
line and headers a byte every 0.2 s, which no per-read timeout ever trips), hospital B's is
healthy. Chart opens at A and at B run at the same time, and again afterwards: B's hooks answer
with their cards within the deadline every time; A's are cut off at the deadline ("could not be
completed"), and the threads that read A's server end with the deadline instead of piling up in
the worker (and A's server sees its connections closed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    PATIENT_ID,
    SERVICE_PATH,
    base_settings,
    bearer,
    ec_public_jwk,
    hook_request,
    make_app,
    patient,
    sandbox_issuer,
    sandbox_token,
    sle_condition,
    write_issuers,
)
from cryptography.hazmat.primitives.asymmetric import ec
from fake_fhir_server import FakeFhirServer
from flask import Flask
from header_trickle import HeaderTrickle

from fhir_trial.evaluate import evaluate

DEADLINE_S = 1.0
HOSPITAL_B = "https://ehr.hospital-b.example"
KEY_B = ec.generate_private_key(ec.SECP384R1())


@pytest.fixture()
def servers() -> Iterator[tuple[FakeFhirServer, FakeFhirServer]]:
    with FakeFhirServer() as trickling, FakeFhirServer() as healthy:
        for server in (trickling, healthy):
            server.add(patient())
            server.add(sle_condition())
        trickling.fail(200, trickle=0.05, times=None)  # every answer, a byte every 50 ms
        yield trickling, healthy


def _app(tmp_path: Path, shared_dir: Path, trickling: str, healthy: str) -> Flask:
    issuers = [
        sandbox_issuer(shared_dir, fhir_servers=[trickling]),
        {
            "iss": HOSPITAL_B,
            "jwks": {"keys": [ec_public_jwk(KEY_B, "b-1")]},
            "fhir_servers": [healthy],
        },
    ]
    path = write_issuers(tmp_path / "issuers.json", issuers)
    settings = base_settings(
        tmp_path, cds_trusted_issuers_file=path, cds_deadline_s=DEADLINE_S, read_timeout_s=5.0
    )
    return make_app(settings, evaluator=evaluate)


def _call(app: Flask, shared_dir: Path, fhir_server: str, hospital_b: bool) -> tuple[float, Any]:
    body = hook_request(None, fhirServer=fhir_server)
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer"}
    if hospital_b:
        token = sandbox_token(
            shared_dir, header={"kid": "b-1", "jku": None}, claims={"iss": HOSPITAL_B}, key=KEY_B
        )
    else:
        token = sandbox_token(shared_dir)
    started = time.monotonic()
    response = app.test_client().post(SERVICE_PATH, json=body, headers=bearer(token))
    return time.monotonic() - started, response


def _summary(response: Any) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    return " ".join(card["summary"] for card in cards)


def _fetch_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(("cds-fetch", "cds-screen")))


def test_a_trickling_server_never_costs_the_healthy_hospital_anything(
    tmp_path: Path, shared_dir: Path, servers: tuple[FakeFhirServer, FakeFhirServer]
) -> None:
    trickling, healthy = servers
    _side_by_side(tmp_path, shared_dir, trickling.base_url, healthy.base_url)


def test_a_server_trickling_its_headers_never_costs_the_healthy_hospital_anything(
    tmp_path: Path, shared_dir: Path, servers: tuple[FakeFhirServer, FakeFhirServer]
) -> None:
    _, healthy = servers
    # Every answer's status line and headers a byte every 0.2 s: requests' read timeout (per
    # socket read) never fires, only the deadline enforced on the socket ends the wait.
    with HeaderTrickle(interval=0.2, max_s=15.0) as trickling:
        _side_by_side(tmp_path, shared_dir, trickling.base_url, healthy.base_url)
        assert trickling.dripped >= 8  # every chart open at A asked it
        stop = time.monotonic() + 2.0
        while trickling.dripping and time.monotonic() < stop:
            time.sleep(0.05)
        assert trickling.dripping == 0  # every connection to it was closed at the deadline


def _side_by_side(tmp_path: Path, shared_dir: Path, trickling_url: str, healthy_url: str) -> None:
    """Chart opens at A (trickling) and B (healthy) at once, twice; then one more at B."""
    app = _app(tmp_path, shared_dir, trickling_url, healthy_url)
    before = _fetch_threads()
    results: dict[str, list[tuple[float, Any]]] = {"a": [], "b": []}

    def run(name: str, url: str, hospital_b: bool) -> None:
        results[name].append(_call(app, shared_dir, url, hospital_b))

    for _ in range(2):  # the same worker, twice: no stuck state left behind by the first round
        threads = [
            threading.Thread(target=run, args=("a", trickling_url, False)) for _ in range(4)
        ] + [threading.Thread(target=run, args=("b", healthy_url, True)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(results["a"]) == len(results["b"]) == 8
    for elapsed, response in results["b"]:
        assert elapsed < DEADLINE_S + 1.0
        summary = _summary(response)
        assert "could not be completed" not in summary and PATIENT_ID
    for elapsed, response in results["a"]:
        assert elapsed < DEADLINE_S + 1.0  # cut off at its deadline, not after the trickle
        assert "could not be completed" in _summary(response)
    # The threads that read the trickling server stop with their deadline.
    stop = time.monotonic() + 3.0
    while _fetch_threads() > before and time.monotonic() < stop:
        time.sleep(0.05)
    assert _fetch_threads() <= before
    # And a healthy hospital's next chart open, after all that, is answered as usual.
    elapsed, response = _call(app, shared_dir, healthy_url, True)
    assert elapsed < DEADLINE_S + 1.0
    assert "could not be completed" not in _summary(response)
