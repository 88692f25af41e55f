"""Bearer access tokens on the registry operations (``$apply``, ``$screen-population``).

These operations take patient data, so unlike the public study resources under ``/fhir`` they
need ``Authorization: Bearer <access token>``: a JWT access token as a SMART Backend Services
authorization server issues it (RFC 9068 shape), verified with the trusted-issuer machinery of
the CDS Hooks service (:class:`fhir_trial.cds_hooks.auth.JwtVerifier`). A token is accepted
only if:

- its issuer (``iss``) is in the trusted-issuers file (``Settings.operations_trusted_issuers_file``,
  else the CDS Hooks one: same format, see :mod:`fhir_trial.cds_hooks.auth`);
- its ``alg`` is one the issuer lists under ``"algorithms"`` (asymmetric only; ES384/RS384 when
  not listed), ``typ`` is absent, ``JWT`` or ``at+jwt``, and the signature verifies with the
  issuer's key for ``kid``;
- ``aud`` names this service: its base URL or its FHIR base (``<base>/fhir``), the base being the
  issuer's ``audience`` entries, else ``Settings.public_base_url``, else the URL called;
- ``exp`` and ``iat`` are present and current (``nbf`` too, when given), within the leeway and
  the maximum lifetime of the CDS settings;
- its ``scope`` (space-separated, or an ``scp`` array) grants read access to the operation's
  resource type: ``$apply`` needs ``system/PlanDefinition.read``, ``$screen-population`` needs
  ``system/ResearchStudy.read``; ``system/*.read``, the ``.*`` wildcard and SMART v2 permissions
  that include ``r`` (``system/PlanDefinition.rs``) grant them too.

``jti`` is not tracked: an access token is a bearer credential meant to be reused until it
expires (a CDS Hooks JWT, by contrast, is signed per call and replay-checked).

Failures answer 401 (no token, or a token that fails a check; ``WWW-Authenticate: Bearer
error="invalid_token"``) or 403 (a valid token without the scope; ``error="insufficient_scope"``),
each with an OperationOutcome; the reason goes to the log only, never the token. Development
mode (``serve --development-mode``) turns the check off, with a warning at start and an
``X-Fhir-Trial-Development-Mode`` header on every operation response.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from flask import Response, request

from fhir_trial.cds_hooks.auth import (
    ALLOWED_ALGORITHMS,
    AuthError,
    JwksCache,
    JwtVerifier,
    TrustedIssuer,
    bearer_token,
    load_trusted_issuers,
)
from fhir_trial.config import Settings
from fhir_trial.fhir_api.requests_io import operation_outcome

__all__ = ["DEVELOPMENT_HEADER", "OperationAccess", "grants_read", "required_scope"]

log = logging.getLogger(__name__)

DEVELOPMENT_HEADER = "X-Fhir-Trial-Development-Mode"
REALM = "fhir-trial"
ACCESS_TOKEN_TYPES: frozenset[str | None] = frozenset({None, "JWT", "AT+JWT", "APPLICATION/AT+JWT"})
# system/<type or *>.<v1 read|write|*, or v2 c?r?u?d?s?>, no query part (a narrowed v2 scope
# such as system/Observation.rs?category=... grants less than a whole type, so it never matches).
_SCOPE = re.compile(r"system/(\*|[A-Z][A-Za-z]*)\.(read|write|\*|c?r?u?d?s?)")


def required_scope(resource_type: str) -> str:
    """The scope named in ``WWW-Authenticate`` and the docs for an operation on ``resource_type``."""
    return f"system/{resource_type}.read"


def grants_read(scopes: Iterable[str], resource_type: str) -> bool:
    """Whether any of ``scopes`` grants system-level read access to ``resource_type``."""
    for scope in scopes:
        match = _SCOPE.fullmatch(scope)
        if not match or match.group(1) not in ("*", resource_type):
            continue
        permission = match.group(2)
        if permission in ("read", "*") or (permission not in ("write", "") and "r" in permission):
            return True
    return False


def _scopes(claims: dict[str, Any]) -> list[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")
    if isinstance(scp, str):
        return scp.split()
    if isinstance(scp, list):
        return [s for s in scp if isinstance(s, str)]
    return []


class OperationAccess:
    """Who may call the registry operations: verification of access tokens, or development mode."""

    def __init__(self, settings: Settings, jwks_cache: JwksCache | None = None) -> None:
        self.settings = settings
        self.development = settings.cds_development_mode
        path = settings.operations_trusted_issuers_file or settings.cds_trusted_issuers_file
        self.issuers = load_trusted_issuers(path)
        self.verifier = JwtVerifier(settings, self.issuers, None, jwks_cache or JwksCache())
        if self.development:
            log.warning(
                "DEVELOPMENT MODE: $apply and $screen-population accept calls without an access "
                "token; anyone can send patient data. Never run this in production."
            )
        elif not self.issuers:
            log.warning(
                "no trusted token issuers configured (operations_trusted_issuers_file): every "
                "$apply and $screen-population call gets 401"
            )

    def audiences(self, issuer: TrustedIssuer) -> list[str]:
        """The ``aud`` values accepted: each base URL and its ``/fhir`` endpoint."""
        bases = issuer.audience or (self.settings.public_base_url or request.url_root,)
        return [v for base in bases for v in (base.rstrip("/"), f"{base.rstrip('/')}/fhir")]

    def refusal(self, resource_type: str) -> Response | None:
        """None when the current request may run the operation on ``resource_type``; else the 401/403."""
        if self.development:
            return None
        scope = required_scope(resource_type)
        header = request.headers.get("Authorization")
        try:
            token = bearer_token(header)
            _, claims = self.verifier.decode(
                token,
                algorithms=lambda issuer: issuer.algorithms or ALLOWED_ALGORITHMS,
                typ=ACCESS_TOKEN_TYPES,
                audiences=self.audiences,
                require=("iss", "aud", "exp", "iat"),
            )
        except AuthError as exc:
            log.info("%s %s: 401 (%s)", request.method, request.endpoint, exc.reason)
            if not header:
                challenge = f'Bearer realm="{REALM}", scope="{scope}"'
                message = f"this operation needs an access token with the scope {scope}"
            else:
                challenge = f'Bearer realm="{REALM}", error="invalid_token", scope="{scope}"'
                message = "the access token is not valid for this service"
            return _refuse(401, "login", message, challenge)
        if not grants_read(_scopes(claims), resource_type):
            log.info("%s %s: 403 (scope lacks %s)", request.method, request.endpoint, scope)
            return _refuse(
                403,
                "forbidden",
                f"the access token does not grant {scope}",
                f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"',
            )
        return None

    def mark(self, response: Response) -> Response:
        """Say on the response that token checks are off (development mode)."""
        if self.development:
            response.headers[DEVELOPMENT_HEADER] = "access token verification is off"
        return response


def _refuse(status: int, code: str, message: str, challenge: str) -> Response:
    response = operation_outcome("error", code, message, status=status)
    response.headers["WWW-Authenticate"] = challenge
    return response
