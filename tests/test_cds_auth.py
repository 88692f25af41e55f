"""The CDS client JWT failure matrix (CDS Hooks 2.0, "Trusting CDS Clients"), end to end over HTTP."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cds_helpers import (
    SANDBOX_ISS,
    SANDBOX_JKU,
    SERVICE_PATH,
    SERVICE_URL,
    assert_valid,
    b64url,
    base_settings,
    bearer,
    ec_private_key,
    ec_public_jwk,
    full_prefetch,
    hook_request,
    jwks_server,
    make_app,
    new_rsa_key,
    rsa_public_jwk,
    sandbox_issuer,
    sandbox_jwks,
    sandbox_token,
    sign_jws,
    write_issuers,
)
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from fhir_trial.cds_hooks.auth import load_trusted_issuers, parse_trusted_issuers
from fhir_trial.errors import ConfigurationError

SPEC = "fixtures/cds-hooks/hl7-cds-hooks/spec-examples-v2.0.1"


def _client(tmp_path: Path, issuers: list[dict[str, Any]], **settings: Any) -> FlaskClient:
    path = write_issuers(tmp_path / "issuers.json", issuers)
    return make_app(
        base_settings(tmp_path, cds_trusted_issuers_file=path, **settings)
    ).test_client()


@pytest.fixture()
def client(tmp_path: Path, shared_dir: Path) -> FlaskClient:
    return _client(tmp_path, [sandbox_issuer(shared_dir)])


def _call(client: FlaskClient, headers: dict[str, str] | None) -> Any:
    return client.post(SERVICE_PATH, json=hook_request(full_prefetch()), headers=headers or {})


def _assert_401(response: Any) -> None:
    assert response.status_code == 401
    assert response.get_data() == b""
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# ------------------------------------------------------------------------------------- accepted
def test_sandbox_signed_token_is_accepted(client: FlaskClient, shared_dir: Path) -> None:
    response = _call(client, bearer(sandbox_token(shared_dir)))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid("response", response.get_json())
    assert len(response.get_json()["cards"]) == 1


def test_the_token_really_is_signed_like_the_sandbox(shared_dir: Path) -> None:
    token = sandbox_token(shared_dir)
    head, body, _ = token.split(".")
    assert json.loads(jwt.utils.base64url_decode(head)) == {
        "alg": "ES384",
        "typ": "JWT",
        "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
        "jku": SANDBOX_JKU,
    }
    assert list(json.loads(jwt.utils.base64url_decode(body))) == ["iss", "aud", "exp", "iat", "jti"]
    key = jwt.PyJWK(sandbox_jwks(shared_dir)["keys"][0]).key
    claims = jwt.decode(token, key, algorithms=["ES384"], audience=SERVICE_URL, leeway=5)
    assert claims["exp"] - claims["iat"] == 300


def test_aud_as_array_is_accepted(client: FlaskClient, shared_dir: Path) -> None:
    token = sandbox_token(shared_dir, aud=["https://other.example/x", SERVICE_URL])
    assert _call(client, bearer(token)).status_code == 200


def test_small_clock_skew_is_tolerated(client: FlaskClient, shared_dir: Path) -> None:
    token = sandbox_token(shared_dir, now=time.time() - 310)  # expired 10 s ago, leeway 30 s
    assert _call(client, bearer(token)).status_code == 200


def test_rs384_with_a_configured_rsa_key(tmp_path: Path) -> None:
    key = new_rsa_key()
    client = _client(
        tmp_path, [{"iss": "https://ehr.example", "jwks": {"keys": [rsa_public_jwk(key, "r1")]}}]
    )
    now = int(time.time())
    token = sign_jws(
        {"alg": "RS384", "typ": "JWT", "kid": "r1"},
        {
            "iss": "https://ehr.example",
            "aud": SERVICE_URL,
            "exp": now + 60,
            "iat": now,
            "jti": "j-rs",
        },
        key,
    )
    assert _call(client, bearer(token)).status_code == 200


def test_audience_configured_per_issuer(tmp_path: Path, shared_dir: Path) -> None:
    client = _client(
        tmp_path, [sandbox_issuer(shared_dir, audience=["https://cds.example.org/base"])]
    )
    good = sandbox_token(shared_dir, aud=f"https://cds.example.org/base{SERVICE_PATH}")
    assert _call(client, bearer(good)).status_code == 200
    _assert_401(_call(client, bearer(sandbox_token(shared_dir))))  # the local URL is not it


def test_jku_on_the_allowlist_is_fetched_once_and_cached(tmp_path: Path, shared_dir: Path) -> None:
    with jwks_server(sandbox_jwks(shared_dir)) as (url, hits):
        client = _client(tmp_path, [{"iss": SANDBOX_ISS, "jku": [url.rsplit("/", 1)[0] + "/"]}])
        for _ in range(3):
            token = sandbox_token(shared_dir, header={"jku": url})
            assert _call(client, bearer(token)).status_code == 200
        assert len(hits) == 1


def test_jku_not_on_the_allowlist_is_never_fetched(tmp_path: Path, shared_dir: Path) -> None:
    with jwks_server(sandbox_jwks(shared_dir)) as (url, hits):
        client = _client(
            tmp_path, [{"iss": SANDBOX_ISS, "jku": ["https://sandbox.cds-hooks.org/"]}]
        )
        _assert_401(_call(client, bearer(sandbox_token(shared_dir, header={"jku": url}))))
        assert hits == []


def test_jwks_url_configured_out_of_band(tmp_path: Path, shared_dir: Path) -> None:
    with jwks_server(sandbox_jwks(shared_dir)) as (url, hits):
        client = _client(tmp_path, [{"iss": SANDBOX_ISS, "jwks_url": url}])
        assert _call(client, bearer(sandbox_token(shared_dir, drop=("jku",)))).status_code == 200
        assert len(hits) == 1


# ------------------------------------------------------------------------------------- refused
def test_spec_example_jwt_good_signature_but_expired_is_401(
    tmp_path: Path, shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (shared_dir / SPEC / "example_L1091_authorization-header-jwt.txt").read_text().strip()
    header_value = text.split(":", 1)[1].strip()
    token = header_value.split(" ", 1)[1]
    spec_jwks = json.loads((shared_dir / SPEC / "example_L1058.json").read_text())
    # The signature is good (checked without the time and audience rules) ...
    key = jwt.PyJWK(spec_jwks["keys"][0]).key
    claims = jwt.decode(
        token, key, algorithms=["ES384"], options={"verify_exp": False, "verify_aud": False}
    )
    assert claims["iss"] == "https://fhir-ehr.example.com/"
    # ... and the service, trusting that issuer at the spec's audience, still refuses it: expired.
    client = _client(
        tmp_path,
        [{"iss": claims["iss"], "jwks": spec_jwks, "audience": ["https://cds.example.org"]}],
    )
    with caplog.at_level(logging.INFO, logger="fhir_trial.cds_hooks"):
        response = client.post(
            SERVICE_PATH,
            json=hook_request(full_prefetch()),
            headers={"Authorization": header_value},
        )
    _assert_401(response)
    assert "ExpiredSignatureError" in caplog.text
    assert token not in caplog.text


def _forged(shared_dir: Path, header: dict[str, Any], key: Any) -> str:
    now = int(time.time())
    body = {
        "iss": SANDBOX_ISS,
        "aud": SERVICE_URL,
        "exp": now + 300,
        "iat": now,
        "jti": f"j-{now}-{id(key)}",
    }
    return sign_jws(header, body, key)


def _public_key_json(shared_dir: Path) -> bytes:
    return json.dumps(sandbox_jwks(shared_dir)["keys"][0]).encode()


KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"

CASES: dict[str, Any] = {
    "alg none": lambda d: _forged(d, {"alg": "none", "typ": "JWT", "kid": KID}, None),
    "HS256 with the public key as secret": lambda d: _forged(
        d, {"alg": "HS256", "typ": "JWT", "kid": KID}, _public_key_json(d)
    ),
    "HS384 with the public key as secret": lambda d: _forged(
        d, {"alg": "HS384", "typ": "JWT", "kid": KID}, _public_key_json(d)
    ),
    "ES256 (not allowed)": lambda d: _forged(
        d, {"alg": "ES256", "typ": "JWT", "kid": KID}, ec.generate_private_key(ec.SECP256R1())
    ),
    "RS384 header with the EC key's kid": lambda d: _forged(
        d, {"alg": "RS384", "typ": "JWT", "kid": KID}, new_rsa_key()
    ),
    "another key with the sandbox kid": lambda d: _forged(
        d, {"alg": "ES384", "typ": "JWT", "kid": KID}, ec.generate_private_key(ec.SECP384R1())
    ),
    "unknown kid": lambda d: sandbox_token(d, header={"kid": "nope"}),
    "no kid": lambda d: sandbox_token(d, drop=("kid",)),
    "typ not JWT": lambda d: sandbox_token(d, header={"typ": "at+jwt"}),
    "no typ": lambda d: sandbox_token(d, drop=("typ",)),
    "unknown issuer": lambda d: sandbox_token(d, claims={"iss": "https://evil.example"}),
    "aud is the discovery URL": lambda d: sandbox_token(d, aud="http://localhost/cds-services"),
    "aud another host": lambda d: sandbox_token(d, aud=f"https://evil.example{SERVICE_PATH}"),
    "expired": lambda d: sandbox_token(d, now=time.time() - 400),
    "issued in the future": lambda d: sandbox_token(d, now=time.time() + 600),
    "lifetime of two days": lambda d: sandbox_token(d, claims={"exp": int(time.time()) + 172800}),
    "no exp": lambda d: sandbox_token(d, drop=("exp",)),
    "no iat": lambda d: sandbox_token(d, drop=("iat",)),
    "no jti": lambda d: sandbox_token(d, drop=("jti",)),
    "no aud": lambda d: sandbox_token(d, drop=("aud",)),
    "no iss": lambda d: sandbox_token(d, drop=("iss",)),
    "tampered payload": lambda d: _tamper(sandbox_token(d)),
    "signature stripped": lambda d: sandbox_token(d).rsplit(".", 1)[0] + ".",
    "not a JWT": lambda d: "not-a-jwt",
}


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["tenant"] = "someone-else"
    return ".".join((head, b64url(json.dumps(claims, separators=(",", ":")).encode()), sig))


@pytest.mark.parametrize("case", sorted(CASES))
def test_jwt_failure_matrix(client: FlaskClient, shared_dir: Path, case: str) -> None:
    _assert_401(_call(client, bearer(CASES[case](shared_dir))))


@pytest.mark.parametrize(
    "header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer"], ids=str
)
def test_missing_or_non_bearer_authorization(client: FlaskClient, header: str | None) -> None:
    _assert_401(_call(client, {"Authorization": header} if header else None))


def test_replayed_jti_is_refused_even_by_another_worker(tmp_path: Path, shared_dir: Path) -> None:
    path = write_issuers(tmp_path / "issuers.json", [sandbox_issuer(shared_dir)])
    settings = base_settings(tmp_path, cds_trusted_issuers_file=path)
    first, second = make_app(settings).test_client(), make_app(settings).test_client()
    token = sandbox_token(shared_dir)
    assert _call(first, bearer(token)).status_code == 200
    _assert_401(_call(first, bearer(token)))
    _assert_401(_call(second, bearer(token)))  # same SQLite file: another gunicorn worker


def test_rsa_key_too_small_is_refused(tmp_path: Path) -> None:
    key = new_rsa_key(1024)
    client = _client(
        tmp_path, [{"iss": "https://ehr.example", "jwks": {"keys": [rsa_public_jwk(key, "r1")]}}]
    )
    now = int(time.time())
    token = sign_jws(
        {"alg": "RS384", "typ": "JWT", "kid": "r1"},
        {
            "iss": "https://ehr.example",
            "aud": SERVICE_URL,
            "exp": now + 60,
            "iat": now,
            "jti": "j1",
        },
        key,
    )
    _assert_401(_call(client, bearer(token)))


def test_no_trusted_issuers_means_401(tmp_path: Path, shared_dir: Path) -> None:
    client = make_app(base_settings(tmp_path)).test_client()
    _assert_401(_call(client, bearer(sandbox_token(shared_dir))))


def test_tokens_never_reach_the_log(
    client: FlaskClient, shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = sandbox_token(shared_dir, claims={"iss": "https://evil.example"})
    body = hook_request(full_prefetch(), fhirServer="https://ehr.example.org/fhir")
    body["fhirAuthorization"] = {"access_token": "SECRET-FHIR-TOKEN", "token_type": "Bearer"}
    with caplog.at_level(logging.DEBUG):
        client.post(SERVICE_PATH, json=body, headers=bearer(token))
        client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)))
    assert token not in caplog.text
    assert "SECRET-FHIR-TOKEN" not in caplog.text


def test_development_mode_needs_no_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        client = make_app(base_settings(tmp_path, cds_development_mode=True)).test_client()
    assert "DEVELOPMENT MODE" in caplog.text
    response = _call(client, None)
    assert response.status_code == 200
    assert "X-Fhir-Trial-Development-Mode" in response.headers


def test_development_mode_is_not_the_default() -> None:
    from fhir_trial.config import Settings

    assert Settings().cds_development_mode is False


# ------------------------------------------------------------------------------------- config
def test_issuer_file_errors_are_one_line(tmp_path: Path, shared_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="not JSON"):
        bad = tmp_path / "bad.json"
        bad.write_text("{")
        load_trusted_issuers(str(bad))
    with pytest.raises(ConfigurationError, match="private key"):
        keypair = json.loads(
            (shared_dir / "fixtures/cds-hooks/sandbox/jwk-keypair.json").read_text()
        )
        parse_trusted_issuers({"issuers": [{"iss": SANDBOX_ISS, "jwks": keypair}]})
    with pytest.raises(ConfigurationError, match="'iss'"):
        parse_trusted_issuers({"issuers": [{"jwks": {"keys": []}}]})
    with pytest.raises(ConfigurationError, match="jwks"):
        parse_trusted_issuers({"issuers": [{"iss": SANDBOX_ISS}]})
    with pytest.raises(ConfigurationError, match="fhir_servers"):
        parse_trusted_issuers(
            {"issuers": [{"iss": SANDBOX_ISS, "jku": [SANDBOX_JKU], "fhir_servers": ["ftp://x"]}]}
        )


def test_ec_public_jwk_helper_round_trips() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = ec_public_jwk(key, "k")
    assert jwt.PyJWK(jwk).key.public_numbers() == key.public_key().public_numbers()
    assert (
        ec_private_key(
            {"d": b64url(key.private_numbers().private_value.to_bytes(48, "big"))}
        ).private_numbers()
        == key.private_numbers()
    )
