"""Helpers for the CDS Hooks tests: tokens signed like the public sandbox, issuer files, apps.

Tokens are built by hand exactly as the CDS Hooks sandbox builds them (jsrsasign
``JWS.sign(null, header, payload, key)`` with ``JSON.stringify`` output): header
``{"alg":"ES384","typ":"JWT","kid":...,"jku":...}``, payload ``{"iss","aud","exp" (now+300),
"iat","jti"}``, compact JSON, ES384 signature as raw r||s. Keys come from ../shared (the sandbox's
deliberately published key pair), never from the project.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from flask import Flask, Response, jsonify

from fhir_trial.canonical import STUDY_ID
from fhir_trial.cds_hooks import create_cds_blueprint
from fhir_trial.cds_hooks.validation import validator
from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import PatientRecord
from fhir_trial.report import CriterionResult, EligibilityReport, Status

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SERVICE_ID = "nct06010472-eligibility"
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
LOCAL_ROOT = "http://localhost"  # Flask's test client URL root
SERVICE_URL = f"{LOCAL_ROOT}{SERVICE_PATH}"
FHIR_BASE = "https://ehr.example.org/fhir"


# ------------------------------------------------------------------------------------------ keys
def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def sandbox_keypair(shared_dir: Path) -> dict[str, Any]:
    """The sandbox's published private JWK (ES384, P-384)."""
    data = json.loads((shared_dir / "fixtures/cds-hooks/sandbox/jwk-keypair.json").read_text())
    key: dict[str, Any] = data["keys"][0]
    return key


def sandbox_jwks(shared_dir: Path) -> dict[str, Any]:
    """The sandbox's public JWK Set."""
    jwks: dict[str, Any] = json.loads(
        (shared_dir / "fixtures/cds-hooks/sandbox/jwks.json").read_text()
    )
    return jwks


def ec_private_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    """A P-384 private key from a JWK with ``d``."""
    return ec.derive_private_key(_b64int(jwk["d"]), ec.SECP384R1())


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key (for RS384 tokens)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK of an RSA key."""
    numbers = key.public_key().public_numbers()
    size = (numbers.n.bit_length() + 7) // 8
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS384",
        "n": b64url(numbers.n.to_bytes(size, "big")),
        "e": b64url(numbers.e.to_bytes(3, "big")),
    }


def ec_public_jwk(key: ec.EllipticCurvePrivateKey, kid: str, alg: str = "ES384") -> dict[str, Any]:
    """The public JWK of an EC key."""
    numbers = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp384r1": "P-384", "secp256r1": "P-256"}[key.curve.name]
    return {
        "kty": "EC",
        "kid": kid,
        "use": "sig",
        "crv": crv,
        "alg": alg,
        "x": b64url(numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.y.to_bytes(size, "big")),
    }


# ------------------------------------------------------------------------------------------ tokens
def sign_jws(header: Mapping[str, Any], payload: Mapping[str, Any], key: Any) -> str:
    """Compact JWS over JSON.stringify-style header and payload, signed per ``header["alg"]``."""
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    ).encode("ascii")
    alg = header.get("alg")
    sha = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
    if alg in ("ES256", "ES384", "ES512"):
        digest = sha[alg[2:]]()
        der = key.sign(signing_input, ec.ECDSA(digest))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg in ("RS256", "RS384", "RS512"):
        signature = key.sign(signing_input, padding.PKCS1v15(), sha[alg[2:]]())
    elif alg and alg.startswith("HS"):
        import hmac

        signature = hmac.new(key, signing_input, "sha" + alg[2:]).digest()
    elif alg == "none":
        signature = b""
    else:
        raise ValueError(alg)
    return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def sandbox_token(
    shared_dir: Path,
    aud: str | list[str] = SERVICE_URL,
    *,
    header: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    now: float | None = None,
    key: Any = None,
) -> str:
    """A token exactly as the sandbox signs it, with optional header/claim overrides or removals."""
    jwk = sandbox_keypair(shared_dir)
    issued = round(now if now is not None else time.time())
    head: dict[str, Any] = {"alg": "ES384", "typ": "JWT", "kid": jwk["kid"], "jku": SANDBOX_JKU}
    body: dict[str, Any] = {
        "iss": SANDBOX_ISS,
        "aud": aud,
        "exp": issued + 300,
        "iat": issued,
        "jti": str(uuid.uuid4()),
    }
    head.update(header or {})
    body.update(claims or {})
    for name in drop:
        head.pop(name, None)
        body.pop(name, None)
    return sign_jws(head, body, key if key is not None else ec_private_key(jwk))


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------ config
def write_issuers(path: Path, issuers: list[dict[str, Any]]) -> str:
    """Write a trusted-issuers file; return its path."""
    path.write_text(json.dumps({"issuers": issuers}), encoding="utf-8")
    return str(path)


def sandbox_issuer(shared_dir: Path, **extra: Any) -> dict[str, Any]:
    """The sandbox as a trusted issuer (inline JWKS), allowed to send FHIR_BASE."""
    entry: dict[str, Any] = {
        "iss": SANDBOX_ISS,
        "jwks": sandbox_jwks(shared_dir),
        "jku": [SANDBOX_JKU],
        "fhir_servers": [FHIR_BASE],
    }
    entry.update(extra)
    return entry


# ------------------------------------------------------------------------------------------ evaluator
def stub_evaluator(record: PatientRecord, settings: Settings) -> EligibilityReport:
    """A deterministic stand-in for evaluate(): the service must not depend on the criteria.

    Patients with ``gender == "male"`` are ineligible (an inclusion not met); everyone else is
    potentially eligible, with a met, an unknown and a needs-review criterion and evidence taken
    from the record. Failed categories become warnings, as in the real evaluator.
    """
    patient = record.patient or {}
    ineligible = patient.get("gender") == "male"
    conditions = [record.reference_to(c) for c in record.resources("Condition")]
    observations = [record.reference_to(o) for o in record.resources("Observation")]
    rows: list[tuple[str, str, Status, str, tuple[str, ...], tuple[str, ...]]] = [
        ("inc-age", "Incl 1", "met", "age 36 <on> *2026*", (record.patient_reference,), ()),
        (
            "inc-sle-diagnosis",
            "Incl 2",
            "not-met" if ineligible else ("met" if conditions else "unknown"),
            "diagnosis by stub",
            tuple(conditions[:3]),
            () if conditions else ("a Condition coded as SLE",),
        ),
        (
            "inc-sledai",
            "Incl 4",
            "needs-review",
            "score needs a person",
            tuple(observations[:2]),
            (),
        ),
    ]
    results = tuple(
        CriterionResult(
            id=cid,
            kind="inclusion",
            ref=ref,
            status=status,
            reason=reason,
            evidence=ev,
            missing=miss,
        )
        for cid, ref, status, reason, ev, miss in rows
    )
    warnings = tuple(record.warnings) + tuple(
        f"{c} could not be obtained: {why}" for c, why in sorted(record.failed.items())
    )
    return EligibilityReport(
        study=STUDY_ID,
        patient=record.patient_reference,
        as_of="2026-11-26",
        verdict="ineligible" if ineligible else "potentially-eligible",
        criteria=results,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------------ apps
def make_app(
    settings: Settings, evaluator: Callable[..., EligibilityReport] | None = stub_evaluator
) -> Flask:
    """A Flask app with only the CDS blueprint (and /healthz), like create_app registers it."""
    app = Flask("cds-test")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.register_blueprint(create_cds_blueprint(settings, evaluator))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app


def base_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Settings for tests: a throwaway database, a fixed secret and screening date."""
    values: dict[str, Any] = {
        "database_path": str(tmp_path / "cds.sqlite3"),
        "secret_key": "test-secret",
        "as_of": dt.date(2026, 11, 26),
        "cds_deadline_s": 1.0,
    }
    values.update(changes)
    return Settings(**values)


# ------------------------------------------------------------------------------------------ data
PATIENT_ID = "pat-1"


def patient(patient_id: str = PATIENT_ID, gender: str = "female") -> dict[str, Any]:
    """A Patient resource."""
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": gender,
        "birthDate": "1990-06-15",
    }


def searchset(*resources: Mapping[str, Any], next_url: str | None = None) -> dict[str, Any]:
    """A searchset Bundle."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": dict(r), "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def sle_condition(cid: str = "c1", patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """An SLE Condition."""
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55464009"}]},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
    }


def full_prefetch(patient_id: str = PATIENT_ID, gender: str = "female") -> dict[str, Any]:
    """Every prefetch key of the service, filled (empty searchsets except Patient and Condition).

    The keys are those of the search plan, so a code list split over several searches for its
    length (``observation2``, ...) is prefetched too.
    """
    from fhir_trial.config import Settings
    from fhir_trial.searches import plan_searches
    from fhir_trial.terminology import load_terminology

    prefetch: dict[str, Any] = {}
    for key in (s.key for s in plan_searches(load_terminology(Settings().resources_dir))):
        if key == "patient":
            prefetch[key] = patient(patient_id, gender)
        elif key == "condition":
            prefetch[key] = searchset(sle_condition(patient_id=patient_id))
        else:
            prefetch[key] = searchset()
    return prefetch


def hook_request(prefetch: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A patient-view request for this service."""
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID},
    }
    if prefetch is not None:
        body["prefetch"] = dict(prefetch)
    body.update(fields)
    return body


# ------------------------------------------------------------------------------------------ checks
def assert_valid(schema_name: str, instance: Any) -> None:
    """Fail with every schema error listed."""
    errors = sorted(
        validator(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path)
    )
    assert not errors, "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


@contextmanager
def jwks_server(jwks: Mapping[str, Any]) -> Iterator[tuple[str, list[int]]]:
    """Serve a JWK Set at ``<base>/jwks.json`` on 127.0.0.1; yields (url, hit counter list)."""
    from fake_fhir_server import serve_wsgi

    hits: list[int] = []
    app = Flask("jwks")

    @app.get("/jwks.json")
    def keys() -> Response:
        hits.append(1)
        return jsonify(jwks)

    with serve_wsgi(app) as base:
        yield f"{base}/jwks.json", hits


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a server a test starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Recorder:
    """The real evaluator, remembering the record and report of the last call (give it to
    :func:`make_app` as ``evaluator``)."""

    def __init__(self) -> None:
        self.record: PatientRecord | None = None
        self.report: EligibilityReport | None = None

    def __call__(self, record: PatientRecord, settings: Settings) -> EligibilityReport:
        self.record = record
        self.report = evaluate(record, settings)
        return self.report

    def status(self, criterion: str) -> str:
        """The status of one criterion in the last report."""
        assert self.report is not None
        return next(r.status for r in self.report.criteria if r.id == criterion)
