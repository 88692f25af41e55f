"""Benchmark: the CDS Hooks hook vs. the health endpoint, under gunicorn on 127.0.0.1.

Run: ``.venv/bin/python benchmarks/bench_cds.py [--resources 300] [--workers 4] [--requests 200]``

Starts ``fhir-trial serve`` (gunicorn, sync workers) on a free local port with a trusted-issuers
file for the public CDS Hooks sandbox (its published key pair in ../shared), then sends
``patient-view`` calls carrying the full prefetch of one synthetic patient of a few hundred
resources, each with a fresh sandbox-signed JWT (minted before timing starts), at concurrency 1
and 8, and the same number of ``GET /healthz`` calls. Prints p50/p95/p99 latency for each.
Without ../shared the tokens cannot be signed and the service runs in development mode (said so).
Target (issue 4): hook p50 <= 3 x health p50 at concurrency 8. The last line is the verdict.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import AS_OF, synthetic_bundle

from fhir_trial.cds_hooks.discovery import SERVICE_ID, prefetch_key
from fhir_trial.record import CATEGORIES

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT.parent / "shared" / "fixtures" / "cds-hooks" / "sandbox"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
TARGET = 3.0
HOOK_PATH = f"/cds-services/{SERVICE_ID}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SandboxSigner:
    """Mints tokens as the CDS Hooks sandbox does (ES384, its published key)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        jwk = json.loads((SANDBOX / "jwk-keypair.json").read_text())["keys"][0]
        d = int.from_bytes(base64.urlsafe_b64decode(jwk["d"] + "=" * (-len(jwk["d"]) % 4)), "big")
        self.key = ec.derive_private_key(d, ec.SECP384R1())
        self.kid = jwk["kid"]

    def token(self, aud: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {
            "alg": "ES384",
            "typ": "JWT",
            "kid": self.kid,
            "jku": "https://sandbox.cds-hooks.org/.well-known/jwks.json",
        }
        payload = {
            "iss": SANDBOX_ISS,
            "aud": aud,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        signing = ".".join(
            _b64(json.dumps(p, separators=(",", ":")).encode()) for p in (header, payload)
        )
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA384())))
        return f"{signing}.{_b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def prefetch_for(bundle: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Patient id and the full prefetch (searchset per category) of a synthetic Bundle."""
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    prefetch: dict[str, Any] = {}
    for category in CATEGORIES:
        if category == "Patient":
            prefetch[prefetch_key(category)] = patient
            continue
        matches = [r for r in resources if r["resourceType"] == category]
        prefetch[prefetch_key(category)] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches],
        }
    return str(patient["id"]), prefetch


def _request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
    finally:
        conn.close()
    return status, time.perf_counter() - started


def run_load(count: int, concurrency: int, one: Callable[[int], tuple[int, float]]) -> list[float]:
    """``count`` calls of ``one(i)`` spread over ``concurrency`` threads; returns latencies."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    counter = iter(range(count))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            status, elapsed = one(i)
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors.append(status)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} calls failed (statuses {sorted(set(errors))})")
    return latencies


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resources", type=int, default=300, help="resources in the patient's record"
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument(
        "--requests", type=int, default=200, help="calls per endpoint and concurrency"
    )
    args = parser.parse_args()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    signed = SANDBOX.is_dir()
    patient_id, prefetch = prefetch_for(synthetic_bundle(1, args.resources))
    n_resources = 1 + sum(len(v.get("entry", [])) for k, v in prefetch.items() if k != "patient")

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            FHIR_TRIAL_DATABASE_PATH=str(Path(tmp) / "bench.sqlite3"),
            FHIR_TRIAL_SECRET_KEY="bench-secret",
            FHIR_TRIAL_AS_OF=AS_OF.isoformat(),
        )
        command = [
            sys.executable,
            "-m",
            "fhir_trial",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ]
        if signed:
            issuers = Path(tmp) / "issuers.json"
            jwks = json.loads((SANDBOX / "jwks.json").read_text())
            issuers.write_text(
                json.dumps({"issuers": [{"iss": SANDBOX_ISS, "jwks": jwks, "audience": [base]}]})
            )
            command += ["--trusted-issuers", str(issuers)]
        else:
            print("../shared not found: development mode (no JWT verification)")
            command.append("--development-mode")
        server = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _wait_until_up(port)
            signer = SandboxSigner() if signed else None
            total_hooks = args.requests * 2 + 10
            tokens = [
                signer.token(f"{base}{HOOK_PATH}") if signer else "" for _ in range(total_hooks)
            ]
            body = json.dumps(
                {
                    "hookInstance": str(uuid.uuid4()),
                    "hook": "patient-view",
                    "context": {"userId": "Practitioner/bench", "patientId": patient_id},
                    "prefetch": prefetch,
                },
                separators=(",", ":"),
            ).encode()
            used = iter(range(total_hooks))

            def hook(_: int) -> tuple[int, float]:
                headers = {"Content-Type": "application/json"}
                token = tokens[next(used)]
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                return _request(port, "POST", HOOK_PATH, body, headers)

            def health(_: int) -> tuple[int, float]:
                return _request(port, "GET", "/healthz", None, {})

            run_load(10, 2, hook)  # warm every worker
            run_load(20, 4, health)
            print(
                f"bench_cds: gunicorn {args.workers} sync workers on 127.0.0.1, patient with "
                f"{n_resources} resources in full prefetch ({len(body) // 1024} KiB), "
                f"{'sandbox-signed ES384 JWTs' if signed else 'development mode'}, {args.requests} calls each"
            )
            results: dict[tuple[str, int], tuple[float, float, float]] = {}
            for concurrency in (1, 8):
                for name, fn in (("hook", hook), ("health", health)):
                    results[(name, concurrency)] = percentiles(
                        run_load(args.requests, concurrency, fn)
                    )
                    p50, p95, p99 = results[(name, concurrency)]
                    print(
                        f"{name:>6} c={concurrency}: p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  p99 {p99:7.2f} ms"
                    )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.communicate(timeout=30)
    ratio = results[("hook", 8)][0] / results[("health", 8)][0]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"hook/health p50 ratio at c=8: {ratio:.2f} (target <= {TARGET}): {verdict}")
    return 0 if verdict == "PASS" else 1


def _wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _request(port, "GET", "/healthz", None, {})[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not start within 60 s")


if __name__ == "__main__":
    sys.exit(main())
