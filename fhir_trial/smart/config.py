"""The SMART app's registrations, one per EHR, read from the CDS trusted-issuers file.

The FHIR servers a SMART launch may name (``iss``) are the allowlist the CDS service already uses:
the ``fhir_servers`` of each trusted issuer. An issuer whose EHR also launches the worksheet app
carries the app's registration with that EHR in a ``smart`` object::

    {"issuers": [{
        "iss": "https://ehr.example/cds-client",
        "jwks_url": "https://ehr.example/jwks",
        "fhir_servers": ["https://ehr.example/fhir/r4"],
        "smart": {
            "client_id": "fhir-trial-worksheet",     // given by the EHR at registration
            "client_auth": "public",                 // or "private_key_jwt" (confidential)
            "jwks_file": "/etc/fhir-trial/smart-jwks.json",  // private_key_jwt: our private JWK Set
            "kid": "key-2026",                        // which key signs (default: the first)
            "scope_style": "v2",                      // "v2" (.rs/.cu) or "v1" (.read/.write)
            "redirect_uri": "https://trial.example.org/smart/callback",  // default: ours
            "frame_ancestors": ["https://ehr.example"]  // who may frame the app (default: the
        }                                             // origins of fhir_servers)
    }]}

Nothing here comes from a request: the redirect URI is fixed by configuration (or the service's own
``public_base_url``), and ``iss`` must match a configured FHIR base exactly (normalised).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fhir_trial.cds_hooks.auth import load_trusted_issuers, normalise_base
from fhir_trial.errors import ConfigurationError
from fhir_trial.fhir_http import origin_of

__all__ = ["Registration", "load_registrations"]

ClientAuth = Literal["public", "private_key_jwt"]
_SIGNING_ALGS = ("RS384", "ES384")


@dataclass(frozen=True)
class Registration:
    """The app's registration with one EHR (for one FHIR base)."""

    fhir_base: str
    client_id: str
    client_auth: ClientAuth = "public"
    private_jwk: Mapping[str, Any] | None = None
    scope_style: Literal["v1", "v2"] = "v2"
    redirect_uri: str | None = None
    frame_ancestors: tuple[str, ...] = ()

    @property
    def signing_alg(self) -> str:
        """The JWS algorithm of the client assertion (from the key: RSA -> RS384, EC -> ES384)."""
        jwk = self.private_jwk or {}
        alg = jwk.get("alg")
        if alg in _SIGNING_ALGS:
            return str(alg)
        return "ES384" if jwk.get("kty") == "EC" else "RS384"


def _origin(url: str) -> str:
    scheme, host, port = origin_of(url)
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def _private_jwk(entry: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    path = entry.get("jwks_file")
    if not isinstance(path, str) or not path:
        raise ConfigurationError(
            f"{where}: private_key_jwt needs 'jwks_file' (our private JWK Set)"
        )
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot read the JWK Set {path}") from exc
    keys = [k for k in data.get("keys", []) if isinstance(k, Mapping) and "d" in k]
    kid = entry.get("kid")
    if kid is not None:
        keys = [k for k in keys if k.get("kid") == kid]
    if not keys:
        raise ConfigurationError(f"{where}: no private key{f' {kid!r}' if kid else ''} in {path}")
    key = keys[0]
    if key.get("kty") not in ("RSA", "EC") or not key.get("kid"):
        raise ConfigurationError(f"{where}: the signing key needs kty RSA or EC and a kid")
    return key


def load_registrations(trusted_issuers_file: str | None) -> dict[str, Registration]:
    """``{normalised FHIR base: Registration}`` for every issuer with a ``smart`` object."""
    if not trusted_issuers_file:
        return {}
    issuers = load_trusted_issuers(trusted_issuers_file)  # the allowlist, checked as the CDS does
    data = json.loads(Path(trusted_issuers_file).read_text(encoding="utf-8"))
    out: dict[str, Registration] = {}
    for number, entry in enumerate(data.get("issuers", []), start=1):
        smart = entry.get("smart") if isinstance(entry, Mapping) else None
        if smart is None:
            continue
        where = f"{trusted_issuers_file}: issuer #{number} 'smart'"
        if not isinstance(smart, Mapping) or not isinstance(smart.get("client_id"), str):
            raise ConfigurationError(f"{where}: 'client_id' (a string) is required")
        auth = smart.get("client_auth", "public")
        if auth not in ("public", "private_key_jwt"):
            raise ConfigurationError(f"{where}: 'client_auth' is public or private_key_jwt")
        style = smart.get("scope_style", "v2")
        if style not in ("v1", "v2"):
            raise ConfigurationError(f"{where}: 'scope_style' is v1 or v2")
        issuer = issuers[entry["iss"]]
        if not issuer.fhir_servers:
            raise ConfigurationError(f"{where}: the issuer lists no 'fhir_servers' to launch from")
        frames = smart.get("frame_ancestors") or sorted({_origin(u) for u in issuer.fhir_servers})
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise ConfigurationError(f"{where}: 'frame_ancestors' must be an array of origins")
        if any(
            not f.startswith(("https://", "http://")) or any(c in f for c in " ;,'") for f in frames
        ):
            raise ConfigurationError(f"{where}: 'frame_ancestors' entries must be http(s) origins")
        redirect = smart.get("redirect_uri")
        if redirect is not None and normalise_base(redirect) is None:
            raise ConfigurationError(f"{where}: 'redirect_uri' must be a plain http(s) URL")
        key = _private_jwk(smart, where) if auth == "private_key_jwt" else None
        for base in issuer.fhir_servers:
            normal = normalise_base(base)
            assert normal is not None  # checked by load_trusted_issuers
            out[normal] = Registration(
                fhir_base=base.rstrip("/"),
                client_id=smart["client_id"],
                client_auth=auth,
                private_jwk=key,
                scope_style=style,
                redirect_uri=redirect,
                frame_ancestors=tuple(frames),
            )
    return out
