"""A worked CDS Hooks call: mint a client JWT as the CDS Hooks sandbox does and post a patient-view.

The JWT is signed like the public sandbox's (https://sandbox.cds-hooks.org): ES384 with the
sandbox's P-384 key, ``iss`` https://sandbox.cds-hooks.org, ``aud`` the exact service URL called,
a fresh ``jti``, ``iat`` now and ``exp`` five minutes later, and ``kid`` in the header. The service
accepts it only if its trusted-issuers file lists that issuer with the public key (see README,
"The trusted-issuers file").

Prefetch comes from a FHIR Bundle (``--bundle``): the service's discovery document names its
prefetch keys and templates; each key gets the Bundle's resources of the template's type (the
service merges keys of one type, so a resource in several keys counts once). Without
``--bundle``, ``--fhir-server`` is sent instead and the service fetches the record itself (that
URL must be one of the issuer's ``fhir_servers``).

Usage::

    python examples/cds_hooks_call.py --service http://127.0.0.1:8080/cds-services/nct06010472-eligibility \\
        --key ../shared/fixtures/cds-hooks/sandbox/jwk-keypair.json --bundle patient.json

It prints the cards (summary, then detail) and exits 0 when the service answered 200.
Only the standard library, PyJWT and requests are used (both are dependencies of fhir-trial).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests

SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
LIFETIME_S = 300


def private_jwk(path: Path, kid: str | None = None) -> dict[str, Any]:
    """The private EC key (a JWK with ``d``) from a JWK or JWK Set file, by ``kid`` if given."""
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = data.get("keys", [data]) if isinstance(data, dict) else []
    for key in keys:
        if isinstance(key, dict) and "d" in key and (kid is None or key.get("kid") == kid):
            return key
    raise SystemExit(f"{path}: no private key{f' with kid {kid}' if kid else ''}")


def client_jwt(service_url: str, jwk: Mapping[str, Any], issuer: str = SANDBOX_ISSUER) -> str:
    """A CDS Hooks client token for one call of ``service_url`` (its ``aud``)."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "cds-hooks-example",
        "aud": service_url,
        "iat": now,
        "exp": now + LIFETIME_S,
        "jti": str(uuid.uuid4()),
    }
    key = jwt.PyJWK.from_dict(dict(jwk), algorithm="ES384")
    return jwt.encode(claims, key.key, algorithm="ES384", headers={"kid": jwk["kid"], "typ": "JWT"})


def discovery_url(service_url: str) -> str:
    """``.../cds-services/<id>`` -> ``.../cds-services``."""
    parts = urlsplit(service_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/").rsplit("/", 1)[0]))


def prefetch_templates(service_url: str) -> dict[str, str]:
    """The service's prefetch templates, from its discovery document."""
    service_id = urlsplit(service_url).path.rstrip("/").rsplit("/", 1)[1]
    response = requests.get(discovery_url(service_url), timeout=10)
    response.raise_for_status()
    for service in response.json().get("services", []):
        if service.get("id") == service_id:
            return dict(service.get("prefetch") or {})
    raise SystemExit(f"the discovery document lists no service {service_id!r}")


def prefetch_from_bundle(
    bundle: Mapping[str, Any], templates: Mapping[str, str], patient_id: str
) -> dict[str, Any]:
    """Each prefetch key filled with the Bundle's resources of its template's type."""
    resources = [
        e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)
    ]
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        resource_type = template.split("?", 1)[0].split("/", 1)[0]
        if resource_type == "Patient":
            matches = [
                r for r in resources if r["resourceType"] == "Patient" and r.get("id") == patient_id
            ]
            prefetch[key] = matches[0] if matches else None
            continue
        entries = [{"resource": r} for r in resources if r.get("resourceType") == resource_type]
        prefetch[key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
    return prefetch


def patient_of(bundle: Mapping[str, Any]) -> str:
    """The id of the Bundle's (first) Patient."""
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient" and resource.get("id"):
            return str(resource["id"])
    raise SystemExit("the Bundle holds no Patient with an id")


def hook_request(
    patient_id: str, prefetch: Mapping[str, Any] | None, fhir_server: str | None
) -> dict[str, Any]:
    """A patient-view request (CDS Hooks 2.0)."""
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
    }
    if prefetch is not None:
        body["prefetch"] = dict(prefetch)
    if fhir_server:
        body["fhirServer"] = fhir_server
    return body


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, call the service and print its cards."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", required=True, help="the exact service URL (the JWT's aud)")
    parser.add_argument("--key", required=True, type=Path, help="private JWK (Set) file, ES384")
    parser.add_argument("--kid", help="which key of the JWK Set (default: the first private one)")
    parser.add_argument("--issuer", default=SANDBOX_ISSUER, help="the JWT's iss")
    parser.add_argument("--bundle", type=Path, help="a FHIR Bundle to build the prefetch from")
    parser.add_argument("--patient", help="patient id (default: the Bundle's Patient)")
    parser.add_argument("--fhir-server", help="fhirServer to send (the service fetches from it)")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    args = parser.parse_args(argv)
    if args.bundle is None and not (args.fhir_server and args.patient):
        parser.error("give --bundle, or --fhir-server with --patient")

    prefetch = None
    patient_id = args.patient
    if args.bundle is not None:
        bundle = json.loads(args.bundle.read_text(encoding="utf-8"))
        patient_id = patient_id or patient_of(bundle)
        prefetch = prefetch_from_bundle(bundle, prefetch_templates(args.service), patient_id)
    token = client_jwt(args.service, private_jwk(args.key, args.kid), args.issuer)
    response = requests.post(
        args.service,
        json=hook_request(patient_id, prefetch, args.fhir_server),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if response.status_code != 200:
        print(f"HTTP {response.status_code}: {response.text[:500]}", file=sys.stderr)
        return 1
    answer = response.json()
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    cards = answer.get("cards", [])
    print(f"{len(cards)} card(s)")
    for card in cards:
        print(f"\n== {card.get('summary')}\n\n{card.get('detail', '')}")
        for link in card.get("links", []):
            print(f"\n[{link.get('type')}] {link.get('label')}: {link.get('url')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
