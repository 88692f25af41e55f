"""Benchmark: a CDS hook without prefetch against a FHIR server 100 ms away, per request.

Run: ``.venv/bin/python benchmarks/bench_cds_fetch.py [--resources 450] [--latency 0.1] [--hooks 5]``

The local fake FHIR server of the tests (``tests/fake_fhir_server.py``, a real HTTP server on
127.0.0.1) holds one synthetic patient (``benchmarks/synthetic.py``) plus ``--resources``
Conditions (issue 16 measured 45 requests for a patient with 450 Conditions), and answers every
request ``--latency`` seconds late, as a hospital's server across a network would. The CDS
service (development mode, the server on its allowlist) is called as the EHR would call it with
no prefetch at all, so it fetches every category itself. Printed per hook: HTTP requests the
FHIR server received and the time to the answer; first with a server that takes ``batch`` (one
batch Bundle, the Patient read beside it), then with one that refuses batch (parallel GETs).

Budget: ``Settings.cds_deadline_s`` (1.5 s by default): the time an EHR waits for the cards at
chart open. Target: the hook answers with its cards, not "could not be completed", within the
budget, in one or two round trips when the server takes batch. The last line is the verdict.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from fake_fhir_server import FakeFhirServer  # noqa: E402
from synthetic import AS_OF, synthetic_bundle  # noqa: E402

from fhir_trial.cds_hooks.fetch import forget_batch_refusals  # noqa: E402
from fhir_trial.cds_hooks.service import CdsService, HookRequest  # noqa: E402
from fhir_trial.config import Settings  # noqa: E402


def _load(server: FakeFhirServer, resources: int) -> str:
    bundle = synthetic_bundle(1, 300)
    patient_id = ""
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            patient_id = resource["id"]
        server.add(resource)
    for n in range(resources):
        server.add(
            {
                "resourceType": "Condition",
                "id": f"bench-c{n}",
                "subject": {"reference": f"Patient/{patient_id}"},
                "code": {"text": f"problem list entry {n}"},
            }
        )
    return patient_id


def _hooks(
    service: CdsService, server: FakeFhirServer, patient_id: str, hooks: int
) -> list[tuple[int, float, str]]:
    """(requests, seconds, outcome kind) per hook call."""
    out = []
    for n in range(hooks):
        server.requests.clear()
        hook = HookRequest(f"bench-{n}", patient_id, None, server.base_url, None)
        started = time.monotonic()
        outcome = service.run(hook, started)
        elapsed = time.monotonic() - started
        out.append((len(server.requests), elapsed, outcome.kind))
    return out


def _print(label: str, rows: list[tuple[int, float, str]], budget: float) -> bool:
    times = [t for _, t, _ in rows]
    print(f"{label}:")
    for requests, elapsed, kind in rows:
        print(f"  {requests:3d} requests  {elapsed * 1000:7.0f} ms  {kind}")
    median = statistics.median(times)
    ok = median <= budget and all(kind == "report" for _, _, kind in rows)
    print(
        f"  median {median * 1000:.0f} ms (budget {budget * 1000:.0f} ms): {'ok' if ok else 'OVER'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--resources", type=int, default=450, help="extra Conditions")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per request")
    parser.add_argument("--hooks", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeFhirServer() as server:
        patient_id = _load(server, args.resources)
        settings = Settings(
            as_of=AS_OF,
            cds_development_mode=True,
            cds_dev_fhir_servers=(server.base_url,),
            database_path=str(Path(tmp) / "bench.sqlite3"),
            secret_key="bench",
        )
        service = CdsService(settings)
        budget = settings.cds_deadline_s
        print(
            f"patient with {len(server.resources())} resources on a FHIR server answering "
            f"{args.latency * 1000:.0f} ms late; CDS budget {budget:g} s (cds_deadline_s)"
        )
        server.latency = args.latency
        batch_ok = _print(
            "server takes batch", _hooks(service, server, patient_id, args.hooks), budget
        )
        server.batch = False
        forget_batch_refusals()
        rows = _hooks(service, server, patient_id, args.hooks)
        parallel_ok = _print("server refuses batch (parallel GETs)", rows, budget)
        service.close()
    print("PASS" if batch_ok and parallel_ok else "FAIL")
    return 0 if batch_ok and parallel_ok else 1


if __name__ == "__main__":
    sys.exit(main())
