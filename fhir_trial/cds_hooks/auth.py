"""Verifying the CDS client's JWT (CDS Hooks 2.0, "Trusting CDS Clients"), and who may call us.

Every hook and feedback call carries ``Authorization: Bearer <JWT>``. The token is accepted only if:

- its header names ``alg`` ES384 or RS384 (``none`` and every HMAC algorithm are refused before
  any key is touched), ``typ`` JWT and a ``kid``;
- its ``iss`` is on the allowlist (the trusted-issuers file, ``Settings.cds_trusted_issuers_file``);
- the ``kid`` is found in that issuer's JWKS: given inline, fetched from the issuer's ``jwks_url``,
  or fetched from the token's ``jku`` when that URL is on the issuer's ``jku`` allowlist (fetched
  JWK Sets are cached; an unknown ``kid`` triggers at most one refetch per minute);
- the key matches the algorithm (EC P-384 for ES384, RSA >= 2048 bits for RS384) and the
  signature verifies;
- ``aud`` (string or array) contains the URL of the endpoint called: the issuer's ``audience`` base
  (or ``Settings.public_base_url``, or the URL the request arrived at) plus the request path;
- ``exp`` and ``iat`` are present and current (small leeway), the lifetime is bounded, and ``jti``
  was never seen before from this issuer (kept in SQLite until the token expires).

Any failure raises :class:`AuthError`; the HTTP layer answers a bare 401 and logs only the reason
(never the token). The trusted-issuers file (JSON)::

    {"issuers": [{
        "iss": "https://sandbox.cds-hooks.org",
        "jwks": {"keys": [...]},                 // inline public keys, and/or
        "jwks_url": "https://ehr.example/jwks",  // a JWK Set URL fetched by the service
        "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],  // trusted jku values;
                                                 // an entry ending in "/" is a prefix
        "audience": ["https://cds.example.org"], // base URL(s) this issuer calls us at (optional)
        "fhir_servers": ["https://ehr.example/fhir/r4"],  // the only fhirServer values accepted
        "jwks_cache_seconds": 3600
    }]}
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import orjson
import requests
import urllib3
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_trial.cds_hooks.store import Database, ExpiryPurge
from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError
from fhir_trial.fhir_http import origin_of
from fhir_trial.http_watchdog import CutOff, guard_session, within

__all__ = [
    "ACCESS_TOKEN_ALGORITHMS",
    "ALLOWED_ALGORITHMS",
    "AuthError",
    "ClientIdentity",
    "JwksCache",
    "JwtVerifier",
    "ReplayStore",
    "TrustedIssuer",
    "bearer_token",
    "load_trusted_issuers",
    "normalise_base",
]

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS: frozenset[str] = frozenset({"ES384", "RS384"})
# What an issuer may list under "algorithms" for access tokens (fhir_api/access.py): asymmetric
# only, so a public key can never be used as an HMAC secret.
ACCESS_TOKEN_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512"}
)
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
JWKS_MAX_BYTES = 256 * 1024
JWKS_FETCH_TIMEOUT_S = 2.0
REFETCH_INTERVAL_S = 60.0


class AuthError(Exception):
    """The client could not be authenticated. ``reason`` is for the log only (no token in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TrustedIssuer:
    """One CDS client we trust, and what it may ask of us."""

    iss: str
    jwks: Mapping[str, Any] | None = None
    jwks_url: str | None = None
    jku: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()
    jwks_cache_seconds: float = 3600.0
    algorithms: tuple[str, ...] = ()  # access tokens only; CDS Hooks JWTs are ES384/RS384

    def jku_trusted(self, url: str) -> bool:
        """Whether a ``jku`` header value is on this issuer's allowlist (exact, or under a prefix)."""
        for allowed in self.jku:
            if allowed.endswith("/"):
                if url.startswith(allowed) and origin_of(url) == origin_of(allowed):
                    return True
            elif url == allowed:
                return True
        return False

    def fhir_server_allowed(self, url: str) -> bool:
        """Whether a ``fhirServer`` base URL is one this issuer may send (exact base match)."""
        wanted = normalise_base(url)
        return wanted is not None and wanted in {normalise_base(u) for u in self.fhir_servers}


@dataclass(frozen=True)
class ClientIdentity:
    """Who called: the verified issuer (None only in development mode)."""

    issuer: TrustedIssuer | None
    jti: str | None = None
    tenant: str | None = None
    development: bool = False

    @property
    def iss(self) -> str | None:
        """The issuer URI, if verified."""
        return self.issuer.iss if self.issuer else None


def normalise_base(url: str) -> str | None:
    """``scheme://host:port/path`` (lower-case scheme and host, explicit port, no trailing slash)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        return None
    scheme, host, port = origin_of(url.strip())
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


# ---------------------------------------------------------------------------------------- config
def load_trusted_issuers(path: str | None) -> dict[str, TrustedIssuer]:
    """Read the trusted-issuers file; ``{}`` when no file is configured."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the trusted issuers file {path}: {exc.strerror}"
        ) from exc
    except ValueError as exc:
        raise ConfigurationError(f"the trusted issuers file {path} is not JSON: {exc}") from exc
    return parse_trusted_issuers(data, source=str(path))


def parse_trusted_issuers(data: Any, source: str = "trusted issuers") -> dict[str, TrustedIssuer]:
    """Build the issuer allowlist from the parsed JSON (see the module docstring)."""
    entries = data.get("issuers") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f"{source}: expected an object with an 'issuers' array")
    issuers: dict[str, TrustedIssuer] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{source}: issuer #{number}"
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("iss"), str)
            or not entry["iss"]
        ):
            raise ConfigurationError(f"{where}: 'iss' (a string) is required")
        jwks = entry.get("jwks")
        if jwks is not None and not (
            isinstance(jwks, Mapping) and isinstance(jwks.get("keys"), list)
        ):
            raise ConfigurationError(f"{where}: 'jwks' must be a JWK Set ({{\"keys\": [...]}})")
        if jwks is not None and any("d" in key for key in jwks["keys"] if isinstance(key, Mapping)):
            raise ConfigurationError(f"{where}: 'jwks' holds a private key; give public keys only")
        jwks_url = entry.get("jwks_url")
        if jwks_url is not None and not _is_http_url(jwks_url):
            raise ConfigurationError(f"{where}: 'jwks_url' must be an http(s) URL")
        jku = _strings(entry.get("jku", []), f"{where}: 'jku'")
        if any(not _is_http_url(u) for u in jku):
            raise ConfigurationError(f"{where}: every 'jku' entry must be an http(s) URL")
        if jwks is None and jwks_url is None and not jku:
            raise ConfigurationError(f"{where}: give 'jwks', 'jwks_url' or 'jku' to find its keys")
        audience = _strings(entry.get("audience", []), f"{where}: 'audience'")
        fhir_servers = _strings(entry.get("fhir_servers", []), f"{where}: 'fhir_servers'")
        if any(normalise_base(u) is None for u in (*audience, *fhir_servers)):
            raise ConfigurationError(
                f"{where}: 'audience' and 'fhir_servers' need plain http(s) URLs"
            )
        cache = entry.get("jwks_cache_seconds", 3600)
        if not isinstance(cache, (int, float)) or cache < 0:
            raise ConfigurationError(f"{where}: 'jwks_cache_seconds' must be a number >= 0")
        algorithms = _strings(entry.get("algorithms", []), f"{where}: 'algorithms'")
        if any(a not in ACCESS_TOKEN_ALGORITHMS for a in algorithms):
            raise ConfigurationError(
                f"{where}: 'algorithms' may only list {', '.join(sorted(ACCESS_TOKEN_ALGORITHMS))}"
            )
        issuers[entry["iss"]] = TrustedIssuer(
            iss=entry["iss"],
            jwks=jwks,
            jwks_url=jwks_url,
            jku=jku,
            audience=audience,
            fhir_servers=fhir_servers,
            jwks_cache_seconds=float(cache),
            algorithms=algorithms,
        )
    return issuers


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(f"{where} must be a string or an array of strings")
    return tuple(value)


def _is_http_url(value: Any) -> bool:
    return (
        isinstance(value, str)
        and urlsplit(value).scheme in ("http", "https")
        and bool(urlsplit(value).hostname)
    )


# ---------------------------------------------------------------------------------------- JWKS
class JwksCache:
    """JWK Sets fetched from URLs, kept ``ttl`` seconds; unknown kids refetch at most once a minute."""

    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session or requests.Session()
        if isinstance(self._session, requests.Session):
            guard_session(self._session)  # see _fetch
        self._lock = threading.Lock()
        self._sets: dict[str, tuple[float, list[Mapping[str, Any]]]] = {}
        self._last_fetch: dict[str, float] = {}

    def find(self, url: str, kid: str, ttl: float, timeout: float) -> Mapping[str, Any] | None:
        """The JWK with ``kid`` from the set at ``url`` (fetching when stale or when kid is new)."""
        now = time.monotonic()
        with self._lock:
            cached = self._sets.get(url)
        if cached and now - cached[0] < ttl:
            key = _key_by_kid(cached[1], kid)
            if key is not None:
                return key
            if now - self._last_fetch.get(url, 0.0) < REFETCH_INTERVAL_S:
                return None
        keys = self._fetch(url, timeout)
        with self._lock:
            self._sets[url] = (time.monotonic(), keys)
            self._last_fetch[url] = time.monotonic()
        return _key_by_kid(keys, kid)

    def _fetch(self, url: str, timeout: float) -> list[Mapping[str, Any]]:
        # ``timeout`` bounds each socket read; the watchdog the whole fetch (a JWK Set URL that
        # trickles its answer would otherwise hold the hook call's thread as long as it goes on).

        def exchange() -> bytes:
            with self._session.get(
                url,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise AuthError(f"JWK Set URL answered HTTP {response.status_code}")
                return response.raw.read(JWKS_MAX_BYTES + 1, decode_content=True)

        try:
            body = within(timeout, exchange)
        except CutOff as exc:
            raise AuthError(f"JWK Set URL sent {exc}") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise AuthError(f"JWK Set URL could not be fetched ({type(exc).__name__})") from exc
        if len(body) > JWKS_MAX_BYTES:
            raise AuthError("JWK Set too large")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise AuthError("JWK Set URL did not return JSON") from exc
        keys = data.get("keys") if isinstance(data, Mapping) else None
        if not isinstance(keys, list):
            raise AuthError("JWK Set URL did not return a JWK Set")
        return [k for k in keys if isinstance(k, Mapping)]


def _key_by_kid(keys: Iterable[Mapping[str, Any]], kid: str) -> Mapping[str, Any] | None:
    for key in keys:
        if key.get("kid") == kid:
            return key
    return None


# ---------------------------------------------------------------------------------------- replay
class ReplayStore:
    """``jti`` values seen per issuer, kept in SQLite (shared by every worker) until they expire."""

    def __init__(self, database: Database, purge_every: int = 500) -> None:
        self.database = database
        self._purge = ExpiryPurge("cds_jwt_seen", purge_every)

    def first_use(self, iss: str, jti: str, expires: float) -> bool:
        """Record ``(iss, jti)``; False when it was already there (a replay)."""
        conn = self.database.connection()
        self._purge.on_write(conn, time.time())
        try:
            conn.execute(
                "INSERT INTO cds_jwt_seen (iss, jti, expires) VALUES (?, ?, ?)", (iss, jti, expires)
            )
        except sqlite3.IntegrityError:  # (iss, jti) already present
            return False
        return True


# ---------------------------------------------------------------------------------------- verifier
class JwtVerifier:
    """Checks ``Authorization`` headers against the trusted issuers (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        issuers: Mapping[str, TrustedIssuer],
        replay: ReplayStore | None,
        jwks_cache: JwksCache | None = None,
    ) -> None:
        self.settings = settings
        self.issuers = dict(issuers)
        self.replay = replay
        self.jwks_cache = jwks_cache or JwksCache()
        self.leeway = settings.cds_jwt_leeway_s
        self.max_lifetime = settings.cds_jwt_max_lifetime_s
        self._keys = _PublicKeyCache()

    def expected_audiences(
        self, issuer: TrustedIssuer, path: str, request_root: str, extra_paths: Sequence[str] = ()
    ) -> list[str]:
        """The ``aud`` values accepted for a call to ``path``."""
        bases = issuer.audience or (self.settings.public_base_url or request_root,)
        return [f"{base.rstrip('/')}{p}" for base in bases for p in (path, *extra_paths)]

    def verify(
        self,
        authorization: str | None,
        path: str,
        request_root: str,
        extra_paths: Sequence[str] = (),
        budget_s: float = JWKS_FETCH_TIMEOUT_S,
    ) -> ClientIdentity:
        """Verify the bearer JWT of a call to ``path``; raise :class:`AuthError` if it fails."""
        token = _bearer(authorization)
        issuer, claims = self.decode(
            token,
            algorithms=ALLOWED_ALGORITHMS,
            typ=frozenset({"JWT"}),
            audiences=lambda issuer: self.expected_audiences(
                issuer, path, request_root, extra_paths
            ),
            require=("iss", "aud", "exp", "iat", "jti"),
            budget_s=budget_s,
        )
        jti = claims["jti"]
        if self.replay is None:  # a verifier built for access tokens only
            raise AuthError("this verifier keeps no replay list")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise AuthError("JWT jti is not a usable string")
        if not self.replay.first_use(issuer.iss, jti, float(claims["exp"]) + self.leeway):
            raise AuthError("JWT jti was already used (replay)")
        tenant = claims.get("tenant")
        return ClientIdentity(
            issuer=issuer, jti=jti, tenant=tenant if isinstance(tenant, str) else None
        )

    def decode(
        self,
        token: str,
        *,
        algorithms: Callable[[TrustedIssuer], Iterable[str]] | frozenset[str],
        typ: frozenset[str | None],
        audiences: Callable[[TrustedIssuer], list[str]],
        require: Sequence[str],
        budget_s: float = JWKS_FETCH_TIMEOUT_S,
    ) -> tuple[TrustedIssuer, dict[str, Any]]:
        """Check a compact JWT against the trusted issuers; its issuer and verified claims.

        Shared by the CDS Hooks JWTs (:meth:`verify`) and the registry's access tokens
        (:mod:`fhir_trial.fhir_api.access`): the algorithm allowlist (checked before any key is
        touched, so ``none`` and HMAC never reach PyJWT), the issuer allowlist, the key lookup,
        the signature, ``aud``, ``exp``/``iat``/``nbf`` with leeway and the lifetime bound.
        """
        # Peek at header and payload only to pick the key; PyJWT then checks everything itself.
        header, unverified = _peek(token)
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError("JWT issuer is not trusted")
        allowed = algorithms if isinstance(algorithms, frozenset) else frozenset(algorithms(issuer))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in allowed:
            raise AuthError(f"JWT algorithm {str(alg)[:20]!r} is not allowed")
        head_typ = header.get("typ")
        if (str(head_typ).upper() if head_typ is not None else None) not in typ:
            raise AuthError(f"JWT header typ {str(head_typ)[:20]!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("JWT header has no kid")
        jwk = self._find_key(issuer, kid, header.get("jku"), budget_s)
        key = self._keys.get(jwk, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audiences(issuer),
                issuer=issuer.iss,
                leeway=self.leeway,
                options={"require": list(require)},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"JWT rejected: {type(exc).__name__}") from exc
        exp, iat = claims.get("exp"), claims.get("iat")
        if exp is not None and iat is not None and float(exp) - float(iat) > self.max_lifetime:
            raise AuthError("JWT lifetime is longer than allowed")
        return issuer, claims

    def _find_key(
        self, issuer: TrustedIssuer, kid: str, jku: Any, budget_s: float
    ) -> Mapping[str, Any]:
        if issuer.jwks is not None:
            key = _key_by_kid((k for k in issuer.jwks["keys"] if isinstance(k, Mapping)), kid)
            if key is not None:
                return key
        timeout = max(0.1, min(JWKS_FETCH_TIMEOUT_S, budget_s))
        if isinstance(jku, str) and jku:
            if issuer.jku_trusted(jku):
                key = self.jwks_cache.find(jku, kid, issuer.jwks_cache_seconds, timeout)
                if key is not None:
                    return key
            elif issuer.jwks_url is None:
                raise AuthError("JWT jku is not on the issuer's allowlist")
        if issuer.jwks_url:
            key = self.jwks_cache.find(issuer.jwks_url, kid, issuer.jwks_cache_seconds, timeout)
            if key is not None:
                return key
        raise AuthError("JWT kid not found in the issuer's keys")


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header (raises :class:`AuthError`)."""
    return _bearer(authorization)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError("Authorization is not a Bearer token")
    if len(token) > 16384:
        raise AuthError("JWT too long")
    return token


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, unverified (raises :class:`AuthError` if malformed)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed JWT")
    decoded: list[dict[str, Any]] = []
    for part, what in ((parts[0], "header"), (parts[1], "payload")):
        try:
            value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (ValueError, binascii.Error):
            raise AuthError(f"malformed JWT {what}") from None
        if not isinstance(value, dict):
            raise AuthError(f"malformed JWT {what}")
        decoded.append(value)
    return decoded[0], decoded[1]


class _PublicKeyCache:
    """Key objects built from JWKs, kept by the JWK's content (parsing a JWK costs per call)."""

    _MAX = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, bytes], Any] = {}

    def get(self, jwk: Mapping[str, Any], alg: str) -> Any:
        """The checked public key of ``jwk`` for ``alg`` (raises :class:`AuthError`)."""
        try:
            cache_key = (alg, orjson.dumps(dict(jwk), option=orjson.OPT_SORT_KEYS))
        except TypeError as exc:
            raise AuthError("JWK unusable for the JWT algorithm") from exc
        key = self._keys.get(cache_key)
        if key is None:
            key = _public_key(jwk, alg)
            with self._lock:
                if len(self._keys) >= self._MAX:
                    self._keys.clear()
                self._keys[cache_key] = key
        return key


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    """The public key of a JWK, checked against the algorithm of the token."""
    if jwk.get("use") not in (None, "sig"):
        raise AuthError("JWK is not a signing key")
    if jwk.get("alg") not in (None, alg):
        raise AuthError("JWK algorithm differs from the JWT algorithm")
    public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    try:
        key = jwt.PyJWK(dict(public), algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise AuthError("JWK unusable for the JWT algorithm") from exc
    curve = _EC_CURVES.get(alg)
    if curve is not None:
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
            raise AuthError(f"{alg} needs an EC {curve} key")
    elif not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise AuthError(f"{alg} needs an RSA key of at least 2048 bits")
    return key
