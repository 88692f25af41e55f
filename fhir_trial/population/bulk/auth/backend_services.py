"""SMART Backend Services: an access token for a system client, without a user.

The flow (SMART App Launch v2, "Backend Services" and "client-confidential-asymmetric"):

1. discover the token endpoint from ``[base]/.well-known/smart-configuration`` (``token_endpoint``);
2. sign a client assertion, a JWT with header ``alg`` (RS384 or ES384), ``kid`` and ``typ: JWT``,
   and claims ``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint URL, ``exp`` at most
   five minutes ahead (we use 4), ``iat`` and a unique ``jti``;
3. POST ``grant_type=client_credentials``, ``scope``, ``client_assertion_type=
   urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and ``client_assertion`` as a form;
4. use ``access_token`` until shortly before ``expires_in`` runs out (default 300 s), then repeat
   from step 2: a long export renews its token on the way.

The private key comes from a JWKS file (``{"keys": [...]}``, the form in which the public half is
registered with the server) holding the private members (``d``). The key is chosen by ``kid`` when
one is given, else the first private RSA or P-384 EC key. Scopes ask for the least: read access to
the types the export requests, in SMART v2 form (``system/Condition.rs``) when the server
announces ``permission-v2`` or v2 scopes, else v1 (``system/Condition.read``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from fhir_trial.config import Settings
from fhir_trial.errors import (
    AuthenticationError,
    ConfigurationError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.http_watchdog import CutOff, guard_session, within

__all__ = [
    "ASSERTION_TYPE",
    "BackendServicesAuth",
    "SigningKey",
    "load_signing_key",
    "scopes_for",
    "sign_client_assertion",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
ASSERTION_LIFETIME_S = 240  # the spec allows at most 300 s; leave room for clock skew
DEFAULT_TOKEN_LIFETIME_S = 300
RENEW_MARGIN_S = 30  # renew a token this long before it expires


@dataclass(frozen=True)
class SigningKey:
    """A private key from a JWKS file, with the ``kid`` and ``alg`` the assertion header carries."""

    kid: str
    alg: str
    key: Any  # a cryptography private key

    def __repr__(self) -> str:  # never shows key material
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"


def _algorithm_for(jwk: Mapping[str, Any]) -> str | None:
    alg = jwk.get("alg")
    if alg in ALGORITHMS:
        return str(alg)
    if alg is not None:
        return None  # a key registered for another algorithm is not ours to reuse
    if jwk.get("kty") == "RSA":
        return "RS384"
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-384":
        return "ES384"
    return None


def load_signing_key(path: str | Path, kid: str | None = None) -> SigningKey:
    """The signing key from a JWKS file holding private keys (RS384 or ES384 with P-384).

    Raises :class:`ConfigurationError` naming what is wrong (never printing key material).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the JWKS file {path}: {exc.strerror or exc}"
        ) from None
    except ValueError:
        raise ConfigurationError(f"the JWKS file {path} is not JSON") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ConfigurationError(f"the JWKS file {path} has no 'keys' list")
    usable: list[tuple[dict[str, Any], str]] = []
    for jwk in keys:
        if not isinstance(jwk, dict) or "d" not in jwk:
            continue  # public keys cannot sign
        alg = _algorithm_for(jwk)
        if alg is not None and (kid is None or jwk.get("kid") == kid):
            usable.append((jwk, alg))
    if not usable:
        which = f" with kid {kid!r}" if kid else ""
        raise ConfigurationError(
            f"the JWKS file {path} holds no private RSA or P-384 EC key{which} "
            "(SMART Backend Services signs with RS384 or ES384)"
        )
    jwk, alg = usable[0]
    if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        raise ConfigurationError(f"the key in {path} has no 'kid' (the server finds it by kid)")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"the key {jwk['kid']!r} in {path} is not usable: {exc}") from None
    return SigningKey(kid=jwk["kid"], alg=alg, key=key)


def sign_client_assertion(
    key: SigningKey, client_id: str, token_endpoint: str, *, now: float | None = None
) -> str:
    """A signed client assertion for ``token_endpoint`` (claims as in the module docstring)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_S,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})


def scopes_for(types: Iterable[str], smart_configuration: Mapping[str, Any]) -> str:
    """Read scopes for ``types``: SMART v2 (``.rs``) when the server speaks it, else v1."""
    capabilities = smart_configuration.get("capabilities") or []
    supported = smart_configuration.get("scopes_supported") or []
    v2 = "permission-v2" in capabilities or any(
        isinstance(s, str) and s.startswith("system/") and s.endswith(".rs") for s in supported
    )
    suffix = "rs" if v2 else "read"
    return " ".join(f"system/{rtype}.{suffix}" for rtype in sorted(set(types)))


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1")


class BackendServicesAuth:
    """A :class:`~fhir_trial.population.bulk.auth.TokenProvider` for SMART Backend Services.

    ``base_url``: the FHIR base (the smart-configuration is read from it); ``types``: what the
    export reads (the scopes asked for); ``scope`` overrides them (e.g. ``system/*.rs`` for a
    server that grants only wildcards). ``clock`` and ``session`` are injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        key: SigningKey,
        *,
        types: Iterable[str] = (),
        scope: str | None = None,
        token_endpoint: str | None = None,
        settings: Settings | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_id:
            raise ConfigurationError("SMART Backend Services needs a client id (--client-id)")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.key = key
        self.types = tuple(types)
        self.scope = scope
        self.token_endpoint = token_endpoint
        self.settings = settings or Settings()
        self.session = session or requests.Session()
        if isinstance(self.session, requests.Session):
            guard_session(self.session)  # lets _exchange bound the wait for a whole answer
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self.granted_scope: str | None = None
        self.requests_made = 0  # token requests, for tests and the log

    def __repr__(self) -> str:
        return f"BackendServicesAuth({self.base_url!r}, client_id={self.client_id!r})"

    @property
    def _timeout(self) -> tuple[float, float]:
        return (self.settings.connect_timeout_s, self.settings.read_timeout_s)

    def _exchange(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """One call, its whole answer within ``read_timeout_s`` (the read timeout alone applies
        per socket read: a server trickling its headers a byte at a time would never trip it)."""

        def exchange() -> requests.Response:
            response = self.session.request(method, url, timeout=self._timeout, **kwargs)
            _ = response.content  # the (small) body too, inside the watch
            return response

        try:
            return within(self.settings.read_timeout_s, exchange)
        except CutOff as exc:
            raise ServerUnreachableError(f"{what}: {exc} (read_timeout_s)", url=url) from exc
        except requests.RequestException as exc:
            raise ServerUnreachableError(f"{what} ({type(exc).__name__})", url=url) from exc

    def discover(self) -> dict[str, Any]:
        """``[base]/.well-known/smart-configuration`` as a dict (token endpoint required)."""
        url = f"{self.base_url}/.well-known/smart-configuration"
        response = self._exchange(
            "GET", url, f"cannot read {url}", headers={"Accept": "application/json"}
        )
        try:
            config = response.json() if response.status_code == 200 else None
        except ValueError:
            config = None
        if not isinstance(config, dict) or not isinstance(config.get("token_endpoint"), str):
            raise ServerResponseError(
                f"{url} answered HTTP {response.status_code} without a token_endpoint: the server "
                "does not announce SMART Backend Services (give --token instead)",
                url=url,
                status=response.status_code,
            )
        algs = config.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algs, list) and algs and self.key.alg not in algs:
            raise ConfigurationError(
                f"the server's token endpoint accepts {', '.join(map(str, algs))}, "
                f"not {self.key.alg} (the key in the JWKS file)"
            )
        return config

    def _endpoint_and_scope(self) -> tuple[str, str]:
        config: Mapping[str, Any] = {}
        if self.token_endpoint is None or self.scope is None:
            config = self.discover()
        endpoint = self.token_endpoint or str(config["token_endpoint"])
        if urlsplit(endpoint).scheme != "https" and not _is_loopback(endpoint):
            raise ConfigurationError(
                f"the token endpoint {endpoint} is not https: refusing to send a client assertion"
            )
        self.token_endpoint = endpoint
        if self.scope is None:
            self.scope = scopes_for(self.types or ("Patient",), config)
        return endpoint, self.scope

    def _fetch(self) -> None:
        endpoint, scope = self._endpoint_and_scope()
        assertion = sign_client_assertion(self.key, self.client_id, endpoint, now=self._clock())
        form = {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        self.requests_made += 1
        response = self._exchange(
            "POST",
            endpoint,
            f"cannot reach the token endpoint {endpoint}",
            data=form,
            headers={"Accept": "application/json"},
        )
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            error = body.get("error") or f"HTTP {response.status_code}"
            detail = body.get("error_description")
            raise AuthenticationError(
                f"the token endpoint {endpoint} refused the client {self.client_id!r}: {error}"
                + (f" ({detail})" if isinstance(detail, str) else ""),
                url=endpoint,
                status=response.status_code,
            )
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME_S
        self._token = body["access_token"]
        self._expires_at = self._clock() + float(lifetime)
        granted = body.get("scope")
        self.granted_scope = granted if isinstance(granted, str) else None

    def token(self) -> str | None:
        """A valid access token, fetched or renewed when it expires within RENEW_MARGIN_S."""
        if self._token is None or self._clock() >= self._expires_at - RENEW_MARGIN_S:
            self._fetch()
        return self._token

    def invalidate(self) -> bool:
        """Drop the token after a 401; the next :meth:`token` asks for a new one."""
        self._token = None
        return True
