"""The SMART app's registrations (in the trusted-issuers file), scopes and the card's link."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import base_settings, sandbox_issuer, write_issuers

from fhir_trial.errors import ConfigurationError
from fhir_trial.smart.config import load_registrations
from fhir_trial.smart.links import smart_launch_url
from fhir_trial.smart.oauth import code_challenge, scopes

BASE = "https://EHR.example.org:443/fhir/r4/"


def _file(tmp_path: Path, shared_dir: Path, smart: Any) -> str:
    entry = sandbox_issuer(shared_dir, fhir_servers=[BASE], smart=smart)
    return write_issuers(tmp_path / "issuers.json", [entry])


def test_a_public_client_is_registered_under_the_normalised_fhir_base(
    tmp_path: Path, shared_dir: Path
) -> None:
    registrations = load_registrations(_file(tmp_path, shared_dir, {"client_id": "app"}))
    (key,) = registrations
    assert key == "https://ehr.example.org:443/fhir/r4"
    registration = registrations[key]
    assert registration.client_auth == "public" and registration.client_id == "app"
    assert registration.frame_ancestors == ("https://ehr.example.org",)  # default: the EHR origin


def test_issuers_without_smart_have_no_registration(tmp_path: Path, shared_dir: Path) -> None:
    path = write_issuers(tmp_path / "issuers.json", [sandbox_issuer(shared_dir)])
    assert load_registrations(path) == {}
    assert load_registrations(None) == {}


@pytest.mark.parametrize(
    "smart",
    [
        {},
        {"client_id": "app", "client_auth": "client_secret_basic"},
        {"client_id": "app", "client_auth": "private_key_jwt"},  # no jwks_file
        {"client_id": "app", "frame_ancestors": ["*"]},
        {"client_id": "app", "frame_ancestors": ["https://a.example; script-src *"]},
        {"client_id": "app", "redirect_uri": "javascript:alert(1)"},
        {"client_id": "app", "scope_style": "v3"},
    ],
)
def test_bad_registrations_are_refused_at_start(
    tmp_path: Path, shared_dir: Path, smart: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        load_registrations(_file(tmp_path, shared_dir, smart))


def test_a_jwks_file_without_a_private_key_is_refused(tmp_path: Path, shared_dir: Path) -> None:
    jwks = tmp_path / "public.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC", "kid": "k", "x": "a", "y": "b"}]}))
    smart = {"client_id": "app", "client_auth": "private_key_jwt", "jwks_file": str(jwks)}
    with pytest.raises(ConfigurationError, match="no private key"):
        load_registrations(_file(tmp_path, shared_dir, smart))


def test_scopes_are_the_least_the_worksheet_needs(tmp_path: Path, shared_dir: Path) -> None:
    (registration,) = load_registrations(_file(tmp_path, shared_dir, {"client_id": "app"})).values()
    asked = scopes(registration, standalone=False).split()
    assert asked[:3] == ["launch", "openid", "fhirUser"]
    writes = [s for s in asked if s[-2:] != ".r" and not s.endswith(".rs")]
    assert writes == [
        "launch",
        "openid",
        "fhirUser",
        "patient/ResearchSubject.crus",
        "patient/QuestionnaireResponse.c",
    ]
    assert all(s.startswith("patient/") for s in asked[3:])
    assert scopes(registration, standalone=True).split()[0] == "launch/patient"


def test_the_s256_challenge_is_the_rfc_7636_example() -> None:
    # RFC 7636, Appendix B
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_card_link_is_offered_only_to_registered_ehrs(tmp_path: Path, shared_dir: Path) -> None:
    path = _file(tmp_path, shared_dir, {"client_id": "app"})
    settings = base_settings(tmp_path, cds_trusted_issuers_file=path)
    assert smart_launch_url(settings, BASE, "https://svc.example") == (
        "https://svc.example/smart/launch"
    )
    assert smart_launch_url(settings, "https://other.example/fhir", "https://svc.example") is None
    assert smart_launch_url(settings, None, "https://svc.example") is None
