"""SMART Backend Services (client_credentials + private_key_jwt) against the fake bulk server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fake_bulk_server import FakeBulkServer, make_jwks
from header_trickle import HeaderTrickle

from fhir_trial.config import Settings
from fhir_trial.errors import AuthenticationError, ConfigurationError, ServerUnreachableError
from fhir_trial.population.bulk.auth.backend_services import (
    ASSERTION_TYPE,
    BackendServicesAuth,
    load_signing_key,
    scopes_for,
    sign_client_assertion,
)
from fhir_trial.population.bulk.client import EXPORT_TYPES, BulkClient

PATIENTS = [json.dumps({"resourceType": "Patient", "id": "p1"})]


@pytest.fixture()
def server() -> Iterator[FakeBulkServer]:
    with FakeBulkServer({"Patient": PATIENTS}) as s:
        yield s


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_export(server: FakeBulkServer, tmp_path: Path, alg: str):
    private, public = make_jwks(alg, f"key-{alg}")
    server.smart_clients = {"registry-app": public}
    server.files_require_token = True
    key = load_signing_key(write(tmp_path / "jwks.json", private))
    assert key.alg == alg and key.kid == f"key-{alg}"
    auth = BackendServicesAuth(server.base_url, "registry-app", key, types=EXPORT_TYPES)
    export = BulkClient(server.base_url, auth, sleep=lambda s: None).run(
        tmp_path / "out", "group", "g"
    )
    assert len(export.output_files) == 1
    assert len(server.token_requests) == 1
    claims = server.token_requests[0]
    assert claims["iss"] == claims["sub"] == "registry-app"
    assert claims["aud"] == server.token_url
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["alg"] == alg and claims["kid"] == f"key-{alg}"
    # the least scopes: read access to the types exported, SMART v2 form
    assert claims["scope"].split() == sorted(f"system/{t}.rs" for t in EXPORT_TYPES)
    assert server.token_rejections == []


def test_bad_signature_is_refused(server: FakeBulkServer, tmp_path: Path):
    private, _ = make_jwks("RS384", "k1")
    _, other_public = make_jwks("RS384", "k1")  # registered key is not the signing key
    server.smart_clients = {"app": other_public}
    auth = BackendServicesAuth(
        server.base_url, "app", load_signing_key(write(tmp_path / "j", private))
    )
    with pytest.raises(AuthenticationError, match="invalid_client"):
        auth.token()
    assert "InvalidSignatureError" in server.token_rejections[0]


def test_expired_assertion_is_refused(server: FakeBulkServer, tmp_path: Path):
    private, public = make_jwks("ES384", "k1")
    server.smart_clients = {"app": public}
    key = load_signing_key(write(tmp_path / "j", private))
    auth = BackendServicesAuth(
        server.base_url,
        "app",
        key,
        clock=lambda: 1_000_000_000.0,  # 2001: long expired
    )
    with pytest.raises(AuthenticationError, match="refused the client 'app'"):
        auth.token()
    assert "ExpiredSignatureError" in server.token_rejections[0]


def test_token_is_renewed_during_a_long_export(server: FakeBulkServer, tmp_path: Path):
    private, public = make_jwks("RS384", "k1")
    server.smart_clients = {"app": public}
    # Tokens that live 30 s: within the renewal margin at once, so every request needs a new one,
    # as every request of a long export would once its token runs out.
    server.token_lifetime = 30
    server.polls = 3
    server.files_require_token = True
    auth = BackendServicesAuth(
        server.base_url, "app", load_signing_key(write(tmp_path / "j", private))
    )
    BulkClient(server.base_url, auth, sleep=lambda s: None).run(tmp_path / "out", "group", "g")
    authorised = [r for r in server.requests if "Authorization" in r["headers"]]
    assert len(server.token_requests) == len(authorised) >= 6
    assert len({r["headers"]["Authorization"] for r in authorised}) == len(authorised)
    assert len({c["jti"] for c in server.token_requests}) == len(server.token_requests)
    assert server.token_rejections == []


def test_401_renews_the_token_once(server: FakeBulkServer, tmp_path: Path):
    private, public = make_jwks("RS384", "k1")
    server.smart_clients = {"app": public}
    auth = BackendServicesAuth(
        server.base_url, "app", load_signing_key(write(tmp_path / "j", private))
    )
    auth.token()
    server._issued.clear()  # the server forgets every token it gave
    BulkClient(server.base_url, auth, sleep=lambda s: None).run(tmp_path / "out", "group", "g")
    assert len(server.token_requests) == 2


def test_assertion_claims_and_header(tmp_path: Path):
    private, public = make_jwks("ES384", "kid-9")
    key = load_signing_key(write(tmp_path / "j", private))
    token = sign_client_assertion(key, "c1", "https://auth.example/token", now=1_700_000_000)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES384", "kid": "kid-9", "typ": "JWT"}
    verify_key = jwt.PyJWK(public["keys"][0]).key
    claims = jwt.decode(
        token,
        verify_key,
        algorithms=["ES384"],
        audience="https://auth.example/token",
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "c1"
    assert 0 < claims["exp"] - 1_700_000_000 <= 300
    assert (
        claims["jti"]
        != jwt.decode(
            sign_client_assertion(key, "c1", "https://auth.example/token"),
            options={"verify_signature": False},
        )["jti"]
    )
    assert ASSERTION_TYPE.endswith("jwt-bearer")


def test_scopes_v1_and_v2():
    assert scopes_for(["Patient", "Condition"], {"capabilities": ["permission-v2"]}) == (
        "system/Condition.rs system/Patient.rs"
    )
    assert scopes_for(["Patient"], {"scopes_supported": ["system/*.read"]}) == "system/Patient.read"


def test_explicit_scope_is_sent(server: FakeBulkServer, tmp_path: Path):
    private, public = make_jwks("RS384", "k1")
    server.smart_clients = {"app": public}
    auth = BackendServicesAuth(
        server.base_url,
        "app",
        load_signing_key(write(tmp_path / "j", private)),
        scope="system/*.rs",
    )
    auth.token()
    assert server.token_requests[0]["scope"] == "system/*.rs"


def test_jwks_problems_are_configuration_errors(tmp_path: Path):
    private, public = make_jwks("RS384", "k1")
    with pytest.raises(ConfigurationError, match="no private"):
        load_signing_key(write(tmp_path / "pub.json", public))
    with pytest.raises(ConfigurationError, match="kid 'other'"):
        load_signing_key(write(tmp_path / "priv.json", private), kid="other")
    ec256 = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1())))
    ec256["kid"] = "k"
    with pytest.raises(ConfigurationError, match="P-384"):
        load_signing_key(write(tmp_path / "ec256.json", {"keys": [ec256]}))
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_signing_key(tmp_path / "missing.json")
    with pytest.raises(ConfigurationError, match="no 'keys' list"):
        load_signing_key(write(tmp_path / "empty.json", {}))
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ConfigurationError, match="not JSON"):
        load_signing_key(tmp_path / "text.json")
    assert private["keys"][0]["d"][:12] not in repr(load_signing_key(tmp_path / "priv.json"))


def test_server_without_smart_configuration(tmp_path: Path):
    private, _ = make_jwks("RS384", "k1")
    with FakeBulkServer({}) as bare:
        auth = BackendServicesAuth(
            bare.base_url, "app", load_signing_key(write(tmp_path / "j", private))
        )
        with pytest.raises(Exception, match="does not announce SMART Backend Services"):
            auth.token()


def test_client_assertion_is_not_sent_over_plain_http_elsewhere(tmp_path: Path):
    private, _ = make_jwks("RS384", "k1")
    auth = BackendServicesAuth(
        "https://ehr.example/fhir",
        "app",
        load_signing_key(write(tmp_path / "j", private)),
        token_endpoint="http://auth.example/token",
        scope="system/*.rs",
    )
    with pytest.raises(ConfigurationError, match="not https"):
        auth.token()


def test_server_refusing_our_algorithm(server: FakeBulkServer, tmp_path: Path, monkeypatch):
    private, public = make_jwks("ES384", "k1")
    server.smart_clients = {"app": public}
    auth = BackendServicesAuth(
        server.base_url, "app", load_signing_key(write(tmp_path / "j", private))
    )
    real = auth.session.request

    def only_rs384(method: str, url: str, **kwargs: Any) -> Any:
        response = real(method, url, **kwargs)
        if url.endswith("/.well-known/smart-configuration"):
            config = response.json()
            config["token_endpoint_auth_signing_alg_values_supported"] = ["RS384"]
            response._content = json.dumps(config).encode()
        return response

    monkeypatch.setattr(auth.session, "request", only_rs384)
    with pytest.raises(ConfigurationError, match="accepts RS384, not ES384"):
        auth.token()


@pytest.mark.parametrize("step", ["discovery", "token"])
def test_a_trickling_auth_server_is_given_up_on_within_the_read_timeout(tmp_path: Path, step: str):
    # The SMART configuration or the token endpoint sends its status line and headers a byte every
    # 0.2 s: the per-read timeout alone would wait for as long as the server goes on.
    private, _ = make_jwks("RS384", "k1")
    key = load_signing_key(write(tmp_path / "j", private))
    with HeaderTrickle(interval=0.2, max_s=10.0) as trickling:
        endpoint = {} if step == "discovery" else {"token_endpoint": f"{trickling.base_url}/token"}
        auth = BackendServicesAuth(
            trickling.base_url,
            "app",
            key,
            scope="system/*.rs",
            settings=Settings(read_timeout_s=1.0),
            **endpoint,
        )
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match=r"within 1 s \(read_timeout_s\)"):
            auth.token()
        assert time.monotonic() - started < 2.5
