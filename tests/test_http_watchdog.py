"""The socket watchdog behind the overall deadline (fhir_trial.http_watchdog, issue 19).

A server that trickles its status line and headers is cut off at the deadline over plain HTTP and
over TLS (the socket is shut down under the SSL layer); a healthy exchange leaves no timer behind; a session
keeps its adapter's settings, and an adapter of its own is left alone. The SMART app's own calls to
the EHR (discovery, token, write-back) and the CDS service's JWK Set fetches are bounded in total
the same way.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_fhir_server import FakeFhirServer
from header_trickle import HeaderTrickle

from fhir_trial.cds_hooks.auth import AuthError, JwksCache
from fhir_trial.config import Settings
from fhir_trial.deadline import Deadline
from fhir_trial.errors import ScreeningLimitError
from fhir_trial.fhir_http import FhirHttp
from fhir_trial.http_watchdog import WatchedAdapter, guard_session
from fhir_trial.smart import oauth, writes
from fhir_trial.smart.blueprint import SmartApp

DEADLINE_S = 1.0


def _watchdogs() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fhir-http-watchdog")


def _http(base_url: str, session: requests.Session | None = None) -> FhirHttp:
    deadline = Deadline(DEADLINE_S, limit="fhir_deadline_s")
    settings = Settings(read_timeout_s=5.0, max_retries=0)
    return FhirHttp(base_url, settings=settings, session=session, deadline=deadline)


def test_trickled_headers_are_cut_off_at_the_deadline() -> None:
    with HeaderTrickle(interval=0.2, max_s=10.0) as trickling:
        started = time.monotonic()
        with pytest.raises(ScreeningLimitError, match=r"1 s \(fhir_deadline_s\)"):
            _http(trickling.base_url).get_json("metadata")
        assert time.monotonic() - started < DEADLINE_S + 0.5
    assert _watchdogs() == 0


@pytest.fixture()
def tls_files(tmp_path: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@pytest.fixture()
def tls_trickle(tls_files: tuple[str, str]) -> Iterator[tuple[str, threading.Event]]:
    """An https server whose answer's headers drip a byte every 0.2 s; the Event: it hung up."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    listener = socket.create_server(("127.0.0.1", 0))
    stop, hung_up = threading.Event(), threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 1000:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    hung_up.set()
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/fhir", hung_up
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_trickled_headers_over_tls_are_cut_off_at_the_deadline(
    tls_trickle: tuple[str, threading.Event],
) -> None:
    base_url, hung_up = tls_trickle
    session = requests.Session()
    session.verify = False  # a throwaway self-signed certificate
    session.trust_env = False
    started = time.monotonic()
    with pytest.warns(Warning), pytest.raises(ScreeningLimitError, match="fhir_deadline_s"):
        _http(base_url, session).get_json("metadata")
    assert time.monotonic() - started < DEADLINE_S + 0.5
    assert hung_up.wait(1.0)  # the connection was closed, not left reading


def test_a_healthy_exchange_leaves_no_timer() -> None:
    with FakeFhirServer() as server:
        server.add({"resourceType": "Patient", "id": "p1"})
        http = _http(server.base_url)
        for _ in range(3):
            assert http.get_json("Patient/p1")["id"] == "p1"
    stop = time.monotonic() + 1.0
    while _watchdogs() and time.monotonic() < stop:  # cancelled timers end at once
        time.sleep(0.01)
    assert _watchdogs() == 0


def test_a_session_keeps_its_adapters_settings_and_a_custom_adapter() -> None:
    session = requests.Session()

    class Custom(requests.adapters.HTTPAdapter):
        pass

    session.mount("https://", Custom())
    session.mount("http://", requests.adapters.HTTPAdapter(max_retries=2, pool_maxsize=3))
    guard_session(session)
    assert type(session.get_adapter("https://x.example/")) is Custom  # left alone
    watched = session.get_adapter("http://x.example/")
    assert isinstance(watched, WatchedAdapter)
    assert watched.max_retries.total == 2 and watched._pool_maxsize == 3


# ------------------------------------------------------------------------------ the SMART app's EHR calls
def test_the_smart_app_bounds_its_ehr_calls_in_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discovery, the token call and the write-back: a trickling EHR is given up on in time."""
    monkeypatch.setattr(oauth, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(writes, "TIMEOUT_S", 1.0)
    session = SmartApp(Settings(database_path=str(tmp_path / "db.sqlite3"))).http
    assert isinstance(session.get_adapter("https://ehr.example/"), WatchedAdapter)
    with HeaderTrickle(interval=0.2, max_s=10.0) as trickling:
        started = time.monotonic()
        with pytest.raises(oauth.LaunchError, match=r"no complete answer within 1 s"):
            oauth.discover(session, trickling.base_url)
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        outcome = writes.write_decision(
            session,
            trickling.base_url,
            "token",
            patient="Patient/p1",
            subject_status="candidate",
            identifier="urn:uuid:0f0e2b8c-7d1a-4a52-9a36-5d5b8a1f2c11",
            response={"resourceType": "QuestionnaireResponse", "status": "completed"},
        )
        assert time.monotonic() - started < 1.5
        assert outcome.error is not None and "no complete answer within 1 s" in outcome.error
        assert not outcome.relaunch  # kept for retry, not a refused token


def test_a_jwk_set_url_trickling_its_answer_is_given_up_on_in_time() -> None:
    cache = JwksCache()
    with HeaderTrickle(interval=0.2, max_s=10.0) as trickling:
        started = time.monotonic()
        with pytest.raises(AuthError, match=r"no complete answer within 1 s"):
            cache.find(f"{trickling.base_url}/jwks.json", "kid-1", ttl=300, timeout=1.0)
        assert time.monotonic() - started < 1.5
