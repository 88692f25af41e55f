"""Access tokens on $apply and $screen-population: the whole failure matrix, and the good token.

The operations take patient data: without a valid SMART Backend Services style access token
(a JWT from a trusted issuer, ``aud`` = this service, a scope granting read on the operation's
resource type) they answer 401 or 403 with an OperationOutcome and ``WWW-Authenticate``. The
public study resources under /fhir stay open.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    b64url,
    bearer,
    ec_private_key,
    ec_public_jwk,
    new_rsa_key,
    rsa_public_jwk,
    sandbox_jwks,
    sandbox_keypair,
    sign_jws,
    write_issuers,
)
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from fhir_trial.app import create_app
from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.config import Settings
from fhir_trial.demo import demo_bundle_paths
from fhir_trial.fhir_api.access import grants_read
from fhir_trial.outputs.fhir import PLAN_DEFINITION_URL

AUTH_SERVER = "https://auth.hospital.example"
RSA_SERVER = "https://login.registry.example"
ROOT = "http://localhost"  # the test client's URL root
APPLY = f"/fhir/PlanDefinition/{STUDY_RESOURCE_ID}-eligibility/$apply"
APPLY_TYPE = "/fhir/PlanDefinition/$apply"
SCREEN = f"/fhir/ResearchStudy/{STUDY_RESOURCE_ID}/$screen-population"
SCOPES = {APPLY: "system/PlanDefinition.read", APPLY_TYPE: "system/PlanDefinition.read"}
SCOPES[SCREEN] = "system/ResearchStudy.read"
RSA_KEY = new_rsa_key()


def demo_bundle() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(demo_bundle_paths()[0].read_text(encoding="utf-8"))
    return data


def body_for(path: str) -> dict[str, Any]:
    bundle = demo_bundle()
    if path == SCREEN:
        return bundle
    params: list[dict[str, Any]] = [{"name": "data", "resource": bundle}]
    if path == APPLY_TYPE:
        params.append({"name": "url", "valueUri": PLAN_DEFINITION_URL})
    return {"resourceType": "Parameters", "parameter": params}


@pytest.fixture()
def client(tmp_path: Path, shared_dir: Path) -> FlaskClient:
    issuers = write_issuers(
        tmp_path / "issuers.json",
        [
            {"iss": AUTH_SERVER, "jwks": sandbox_jwks(shared_dir)},
            {
                "iss": RSA_SERVER,
                "jwks": {"keys": [rsa_public_jwk(RSA_KEY, "rsa-1") | {"alg": "RS256"}]},
                "algorithms": ["RS256"],
            },
        ],
    )
    settings = Settings(
        database_path=str(tmp_path / "db.sqlite3"), operations_trusted_issuers_file=issuers
    )
    return create_app(settings).test_client()


def access_token(
    shared_dir: Path,
    *,
    scope: str | None = "system/PlanDefinition.read system/ResearchStudy.read",
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    key: Any = None,
) -> str:
    """An access token as an authorization server signs it (ES384, the sandbox's test key)."""
    jwk = sandbox_keypair(shared_dir)
    now = round(time.time())
    head: dict[str, Any] = {"alg": "ES384", "typ": "at+jwt", "kid": jwk["kid"]}
    body: dict[str, Any] = {
        "iss": AUTH_SERVER,
        "sub": "registry-client",
        "client_id": "registry-client",
        "aud": f"{ROOT}/fhir",
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    if scope is not None:
        body["scope"] = scope
    head.update(header or {})
    body.update(claims or {})
    for name in drop:
        head.pop(name, None)
        body.pop(name, None)
    return sign_jws(head, body, key if key is not None else ec_private_key(jwk))


def post(client: FlaskClient, path: str, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        path, json=body_for(path), headers=headers or {}, content_type="application/fhir+json"
    )


def assert_refused(response: Any, status: int, error: str | None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == ("login" if status == 401 else "forbidden")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="fhir-trial"')
    if error:
        assert f'error="{error}"' in challenge
    else:
        assert "error=" not in challenge
    assert "scope=" in challenge


ROUTES = [APPLY, APPLY_TYPE, SCREEN]


def _forged(shared_dir: Path) -> str:
    good = access_token(shared_dir)
    head, payload, sig = good.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=="))
    claims["scope"] = "system/*.read"
    claims["sub"] = "someone-else"
    return f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"


def _bad_tokens(shared_dir: Path) -> dict[str, tuple[str, int, str | None]]:
    now = round(time.time())
    other_ec = ec.generate_private_key(ec.SECP384R1())
    hmac_key = json.dumps(sandbox_jwks(shared_dir)["keys"][0]).encode()  # key confusion
    return {
        "missing": ("", 401, None),
        "not bearer": ("Basic dXNlcjpwYXNz", 401, "invalid_token"),
        "malformed": ("Bearer not.a-jwt", 401, "invalid_token"),
        "two parts": ("Bearer abc.def", 401, "invalid_token"),
        "bad signature": (
            "Bearer " + access_token(shared_dir, key=other_ec),
            401,
            "invalid_token",
        ),
        "forged claims": ("Bearer " + _forged(shared_dir), 401, "invalid_token"),
        "alg none": (
            "Bearer " + access_token(shared_dir, header={"alg": "none"}),
            401,
            "invalid_token",
        ),
        "alg HS384 with the public key": (
            "Bearer " + access_token(shared_dir, header={"alg": "HS384"}, key=hmac_key),
            401,
            "invalid_token",
        ),
        "alg not listed for the issuer (RS256 from the ES384 issuer)": (
            "Bearer " + access_token(shared_dir, header={"alg": "RS256"}, key=RSA_KEY),
            401,
            "invalid_token",
        ),
        "unknown issuer": (
            "Bearer " + access_token(shared_dir, claims={"iss": "https://evil.example"}),
            401,
            "invalid_token",
        ),
        "unknown kid": (
            "Bearer " + access_token(shared_dir, header={"kid": "nope"}),
            401,
            "invalid_token",
        ),
        "expired": (
            "Bearer " + access_token(shared_dir, claims={"iat": now - 900, "exp": now - 600}),
            401,
            "invalid_token",
        ),
        "not yet valid": (
            "Bearer " + access_token(shared_dir, claims={"nbf": now + 600, "exp": now + 900}),
            401,
            "invalid_token",
        ),
        "no exp": ("Bearer " + access_token(shared_dir, drop=("exp",)), 401, "invalid_token"),
        "lifetime too long": (
            "Bearer " + access_token(shared_dir, claims={"exp": now + 86400}),
            401,
            "invalid_token",
        ),
        "wrong aud": (
            "Bearer " + access_token(shared_dir, claims={"aud": "https://other.example/fhir"}),
            401,
            "invalid_token",
        ),
        "aud of the CDS hook": (
            "Bearer "
            + access_token(
                shared_dir, claims={"aud": f"{ROOT}/cds-services/nct06010472-eligibility"}
            ),
            401,
            "invalid_token",
        ),
        "no aud": ("Bearer " + access_token(shared_dir, drop=("aud",)), 401, "invalid_token"),
        "typ not a JWT": (
            "Bearer " + access_token(shared_dir, header={"typ": "dpop+jwt"}),
            401,
            "invalid_token",
        ),
        "no scope": (
            "Bearer " + access_token(shared_dir, scope=None),
            403,
            "insufficient_scope",
        ),
        "write-only scope": (
            "Bearer " + access_token(shared_dir, scope="system/PlanDefinition.write system/*.cud"),
            403,
            "insufficient_scope",
        ),
        "patient scope": (
            "Bearer " + access_token(shared_dir, scope="patient/*.read user/*.read"),
            403,
            "insufficient_scope",
        ),
        "narrowed v2 scope": (
            "Bearer "
            + access_token(
                shared_dir,
                scope="system/PlanDefinition.rs?status=active system/ResearchStudy.rs?_id=x",
            ),
            403,
            "insufficient_scope",
        ),
    }


@pytest.mark.parametrize("path", ROUTES)
def test_every_bad_token_is_refused(client: FlaskClient, shared_dir: Path, path: str) -> None:
    for name, (authorization, status, error) in _bad_tokens(shared_dir).items():
        headers = {"Authorization": authorization} if authorization else {}
        response = post(client, path, headers)
        try:
            assert_refused(response, status, error)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_scope_of_another_type_is_403(client: FlaskClient, shared_dir: Path) -> None:
    token = access_token(shared_dir, scope="system/ResearchStudy.read")
    assert_refused(post(client, APPLY, bearer(token)), 403, "insufficient_scope")
    assert post(client, SCREEN, bearer(token)).status_code == 200
    token = access_token(shared_dir, scope="system/PlanDefinition.read")
    assert_refused(post(client, SCREEN, bearer(token)), 403, "insufficient_scope")
    assert post(client, APPLY, bearer(token)).status_code == 200


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "scope",
    [
        None,  # the default: both .read scopes
        "system/*.read",
        "system/*.*",
        "launch system/*.rs",
        "system/PlanDefinition.cruds system/ResearchStudy.r",
    ],
)
def test_a_good_token_is_served(
    client: FlaskClient, shared_dir: Path, path: str, scope: str | None
) -> None:
    token = access_token(shared_dir) if scope is None else access_token(shared_dir, scope=scope)
    response = post(client, path, bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert "X-Fhir-Trial-Development-Mode" not in response.headers
    # An access token is reusable until it expires (no jti replay list for access tokens).
    assert post(client, path, bearer(token)).status_code == 200


def test_rs256_issuer_and_audience_forms(client: FlaskClient, shared_dir: Path) -> None:
    now = round(time.time())
    claims = {"iss": RSA_SERVER, "aud": [ROOT], "exp": now + 120, "iat": now}
    claims["scp"] = ["system/PlanDefinition.read"]  # scp array (RFC 9068 variants)
    token = sign_jws({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}, claims, RSA_KEY)
    assert post(client, APPLY, bearer(token)).status_code == 200
    # RS384 is not on this issuer's list, though the key would verify it.
    token = sign_jws({"alg": "RS384", "typ": "JWT", "kid": "rsa-1"}, claims, RSA_KEY)
    assert_refused(post(client, APPLY, bearer(token)), 401, "invalid_token")


def test_the_reason_is_logged_and_the_token_is_not(
    client: FlaskClient, shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = access_token(shared_dir, claims={"aud": "https://other.example/fhir"})
    with caplog.at_level(logging.INFO, logger="fhir_trial"):
        assert_refused(post(client, APPLY, bearer(token)), 401, "invalid_token")
    assert "InvalidAudienceError" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


def test_reads_stay_open_and_405_needs_no_more_than_401(client: FlaskClient) -> None:
    assert client.get("/fhir/metadata").status_code == 200
    assert client.get(f"/fhir/ResearchStudy/{STUDY_RESOURCE_ID}").status_code == 200
    assert client.get("/fhir/PlanDefinition?_count=1").status_code == 200
    # The operations reveal nothing to an anonymous caller, not even which methods they take.
    assert_refused(client.get(APPLY), 401, None)


def test_no_issuers_configured_means_every_call_is_refused(tmp_path: Path) -> None:
    client = create_app(Settings(database_path=str(tmp_path / "db.sqlite3"))).test_client()
    assert_refused(post(client, APPLY), 401, None)


def test_development_mode_is_open_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fhir_trial"):
        app = create_app(
            Settings(database_path=str(tmp_path / "db.sqlite3"), cds_development_mode=True)
        )
    assert "$apply and $screen-population accept calls without an access token" in caplog.text
    response = post(app.test_client(), APPLY)
    assert response.status_code == 200
    assert response.headers["X-Fhir-Trial-Development-Mode"]


def test_cds_issuers_file_is_the_fallback(tmp_path: Path, shared_dir: Path) -> None:
    issuers = write_issuers(
        tmp_path / "cds.json", [{"iss": AUTH_SERVER, "jwks": sandbox_jwks(shared_dir)}]
    )
    app = create_app(
        Settings(database_path=str(tmp_path / "db.sqlite3"), cds_trusted_issuers_file=issuers)
    )
    assert post(app.test_client(), APPLY, bearer(access_token(shared_dir))).status_code == 200


def test_scope_grammar() -> None:
    assert grants_read(["system/PlanDefinition.read"], "PlanDefinition")
    assert grants_read(["system/*.rs"], "PlanDefinition")
    assert not grants_read(["system/PlanDefinition.read"], "ResearchStudy")
    assert not grants_read(["system/PlanDefinition.cud"], "PlanDefinition")
    assert not grants_read(["system/PlanDefinition."], "PlanDefinition")
    assert not grants_read(["system/PlanDefinition.rs?x=1"], "PlanDefinition")
    assert not grants_read(["user/PlanDefinition.read"], "PlanDefinition")
    assert not grants_read(["system/plandefinition.read"], "PlanDefinition")


def test_an_ec_key_of_the_wrong_curve_is_refused(tmp_path: Path, shared_dir: Path) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    jwk = ec_public_jwk(p256, "p256", alg="ES384")  # claims ES384 but is a P-256 key
    issuers = write_issuers(
        tmp_path / "issuers.json", [{"iss": AUTH_SERVER, "jwks": {"keys": [jwk]}}]
    )
    app = create_app(
        Settings(
            database_path=str(tmp_path / "db.sqlite3"), operations_trusted_issuers_file=issuers
        )
    )
    token = access_token(shared_dir, header={"kid": "p256", "alg": "ES256"}, key=p256)
    assert_refused(post(app.test_client(), APPLY, bearer(token)), 401, "invalid_token")
