"""SMART App Launch 2.x, the app's side: discovery, PKCE, the authorize redirect, the token call.

- Discovery: ``GET [iss]/.well-known/smart-configuration`` (no redirects followed, size-capped);
  the authorization and token endpoints must be http(s) URLs, and ``S256`` must be among
  ``code_challenge_methods_supported`` (SMART 2 requires it; a server without it is refused rather
  than downgraded to ``plain``).
- PKCE: a 43-character random ``code_verifier``; the challenge is ``BASE64URL(SHA256(verifier))``.
- Scopes: the least the worksheet needs (:func:`scopes`): read the record's resource types the
  screening searches, search and create/update the patient's ResearchSubject, create the
  QuestionnaireResponse, and ``openid fhirUser`` to know who decides.
- The token call: ``authorization_code`` with the verifier; a public client sends ``client_id``, a
  confidential asymmetric one a ``private_key_jwt`` client assertion (RS384/ES384, 5 minutes, a
  fresh ``jti``). The ``id_token`` is checked (signature with the server's ``jwks_uri`` when it
  publishes one, ``iss``, ``aud`` = our client id, ``exp``, ``nonce``) before its ``fhirUser`` is
  believed.

No token, code or verifier is ever logged: errors carry a reason and an HTTP status only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import requests
import urllib3

from fhir_trial.http_watchdog import CutOff, within
from fhir_trial.smart.config import Registration

__all__ = [
    "LaunchError",
    "SmartConfiguration",
    "TokenResponse",
    "authorize_url",
    "code_challenge",
    "discover",
    "exchange_code",
    "new_verifier",
    "scopes",
]

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
MAX_BYTES = 256 * 1024
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# What the screening reads (fhir_trial.searches plans these types; Medication is read when a
# request references one) and what the decision writes.
READ_TYPES = (
    "AllergyIntolerance",
    "Condition",
    "Consent",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
)


class LaunchError(Exception):
    """The launch cannot go on. ``reason`` is for the page and the log (never a token)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class SmartConfiguration:
    """What the EHR's authorization server publishes."""

    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None = None
    jwks_uri: str | None = None
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenResponse:
    """The parts of the token answer the app keeps (server-side only)."""

    access_token: str
    expires_at: float
    scope: str
    patient: str | None
    fhir_user: str | None
    encounter: str | None = None


def scopes(registration: Registration, standalone: bool) -> str:
    """The scopes asked for: the least the worksheet needs (see the module docstring)."""
    context = "launch/patient" if standalone else "launch"
    if registration.scope_style == "v1":
        reads = [f"patient/{t}.read" for t in ("Patient", *READ_TYPES, "Medication")]
        writes = ["patient/ResearchSubject.read", "patient/ResearchSubject.write"]
        writes.append("patient/QuestionnaireResponse.write")
    else:
        reads = ["patient/Patient.r", *(f"patient/{t}.rs" for t in READ_TYPES)]
        reads.append("patient/Medication.r")
        writes = ["patient/ResearchSubject.crus", "patient/QuestionnaireResponse.c"]
    return " ".join([context, "openid", "fhirUser", *reads, *writes])


def new_verifier() -> str:
    """A PKCE code verifier (43 characters of base64url, 256 bits)."""
    return secrets.token_urlsafe(32)


def code_challenge(verifier: str) -> str:
    """The S256 challenge of a verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _http_url(value: Any) -> bool:
    return (
        isinstance(value, str)
        and urlsplit(value).scheme in ("http", "https")
        and bool(urlsplit(value).hostname)
    )


def _capped_request(
    session: requests.Session,
    method: str,
    url: str,
    unreachable: str,
    data: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """Status and body of a JSON request that follows no redirect.

    The body is read up to one byte past :data:`MAX_BYTES`, so the caller can tell it is too
    large. A failed connection raises :class:`LaunchError` starting with ``unreachable``.
    """
    # TIMEOUT_S bounds each socket read; the watchdog the whole exchange (a server trickling its
    # headers or body would otherwise hold this thread for as long as it goes on).

    def exchange() -> tuple[int, bytes]:
        with session.request(
            method,
            url,
            data=data,
            timeout=TIMEOUT_S,
            allow_redirects=False,
            stream=True,
            headers={"Accept": "application/json"},
        ) as response:
            return response.status_code, response.raw.read(MAX_BYTES + 1, decode_content=True)

    try:
        return within(TIMEOUT_S, exchange)
    except CutOff as exc:
        raise LaunchError(f"{unreachable} ({exc})", 502) from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise LaunchError(f"{unreachable} ({type(exc).__name__})", 502) from exc


def _get_json(session: requests.Session, url: str, what: str) -> Mapping[str, Any]:
    status, body = _capped_request(session, "GET", url, f"{what} could not be fetched")
    if status != 200:
        raise LaunchError(f"{what} answered HTTP {status}", 502)
    if len(body) > MAX_BYTES:
        raise LaunchError(f"{what} is too large", 502)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LaunchError(f"{what} is not JSON", 502) from exc
    if not isinstance(data, Mapping):
        raise LaunchError(f"{what} is not a JSON object", 502)
    return data


def discover(session: requests.Session, fhir_base: str) -> SmartConfiguration:
    """Read ``[fhir_base]/.well-known/smart-configuration`` (raises :class:`LaunchError`)."""
    data = _get_json(
        session,
        f"{fhir_base.rstrip('/')}/.well-known/smart-configuration",
        "the EHR's SMART configuration",
    )
    auth, token = data.get("authorization_endpoint"), data.get("token_endpoint")
    if not _http_url(auth) or not _http_url(token):
        raise LaunchError(
            "the EHR's SMART configuration lacks its authorization or token endpoint", 502
        )
    methods = data.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise LaunchError("the EHR's authorization server does not offer PKCE with S256", 502)
    jwks_uri = data.get("jwks_uri")
    issuer = data.get("issuer")
    caps = data.get("capabilities")
    return SmartConfiguration(
        authorization_endpoint=str(auth),
        token_endpoint=str(token),
        issuer=issuer if isinstance(issuer, str) else None,
        jwks_uri=jwks_uri if _http_url(jwks_uri) else None,
        capabilities=tuple(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else (),
    )


def authorize_url(
    config: SmartConfiguration,
    registration: Registration,
    *,
    redirect_uri: str,
    state: str,
    verifier: str,
    nonce: str,
    launch: str | None,
) -> str:
    """The authorization request (the browser is redirected there)."""
    params = {
        "response_type": "code",
        "client_id": registration.client_id,
        "redirect_uri": redirect_uri,
        "scope": scopes(registration, standalone=launch is None),
        "state": state,
        "aud": registration.fhir_base,
        "code_challenge": code_challenge(verifier),
        "code_challenge_method": "S256",
        "nonce": nonce,
    }
    if launch is not None:
        params["launch"] = launch
    separator = "&" if urlsplit(config.authorization_endpoint).query else "?"
    return f"{config.authorization_endpoint}{separator}{urlencode(params)}"


def client_assertion(registration: Registration, token_endpoint: str) -> str:
    """A ``private_key_jwt`` client assertion (SMART "asymmetric" client authentication)."""
    jwk = dict(registration.private_jwk or {})
    alg = registration.signing_alg
    key = jwt.PyJWK(jwk, algorithm=alg).key
    now = int(time.time())
    claims = {
        "iss": registration.client_id,
        "sub": registration.client_id,
        "aud": token_endpoint,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": jwk["kid"], "typ": "JWT"})


def exchange_code(
    session: requests.Session,
    config: SmartConfiguration,
    registration: Registration,
    *,
    code: str,
    redirect_uri: str,
    verifier: str,
    nonce: str,
) -> TokenResponse:
    """Trade the authorization code for a token (raises :class:`LaunchError`)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    if registration.client_auth == "private_key_jwt":
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = client_assertion(registration, config.token_endpoint)
    else:
        form["client_id"] = registration.client_id
    status, body = _capped_request(
        session, "POST", config.token_endpoint, "the token endpoint could not be reached", form
    )
    try:
        data = json.loads(body) if len(body) <= MAX_BYTES else None
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, Mapping):
        error = data.get("error") if isinstance(data, Mapping) else None
        said = f" ({str(error)[:60]})" if isinstance(error, str) else ""
        raise LaunchError(f"the token endpoint refused the code: HTTP {status}{said}", 502)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise LaunchError("the token endpoint gave no access token", 502)
    if str(data.get("token_type", "")).lower() != "bearer":
        raise LaunchError("the token endpoint gave a token that is not a Bearer token", 502)
    expires_in = data.get("expires_in")
    lifetime = (
        float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 300.0
    )
    patient = data.get("patient")
    fhir_user = _fhir_user(session, config, registration, data.get("id_token"), nonce)
    encounter = data.get("encounter")
    return TokenResponse(
        access_token=token,
        expires_at=time.time() + lifetime,
        scope=str(data.get("scope", "")),
        patient=patient if isinstance(patient, str) and patient else None,
        fhir_user=fhir_user,
        encounter=encounter if isinstance(encounter, str) else None,
    )


def _fhir_user(
    session: requests.Session,
    config: SmartConfiguration,
    registration: Registration,
    id_token: Any,
    nonce: str,
) -> str | None:
    """``fhirUser`` of a checked id_token (None without one; a bad one is refused)."""
    if id_token is None:
        return None
    if not isinstance(id_token, str):
        raise LaunchError("the id_token is not a JWT", 502)
    required = ["iss", "aud", "exp", "iat"]
    try:
        if config.jwks_uri:
            client = jwt.PyJWKClient(config.jwks_uri, timeout=int(TIMEOUT_S))
            key = client.get_signing_key_from_jwt(id_token).key
            claims = jwt.decode(
                id_token,
                key=key,
                algorithms=["RS256", "RS384", "ES256", "ES384"],
                audience=registration.client_id,
                issuer=config.issuer,
                options={"require": required},
                leeway=30,
            )
        else:
            # Received straight from the token endpoint over TLS (OpenID Connect Core 3.1.3.7):
            # the claims are still checked.
            claims = jwt.decode(
                id_token,
                options={"require": required, "verify_signature": False},
                audience=registration.client_id,
                leeway=30,
            )
            if config.issuer and claims.get("iss") != config.issuer:
                raise LaunchError("the id_token comes from another issuer", 502)
    except jwt.PyJWTError as exc:
        raise LaunchError(f"the id_token was refused ({type(exc).__name__})", 502) from exc
    if claims.get("nonce") not in (None, nonce):
        raise LaunchError("the id_token was made for another launch (nonce)", 502)
    user = claims.get("fhirUser")
    return user if isinstance(user, str) and user else None
