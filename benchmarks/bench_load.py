"""Benchmark: the CDS hook at saturating concurrency for minutes: errors and memory growth.

Run: ``.venv/bin/python benchmarks/bench_load.py [--seconds 180] [--workers 2] [--resources 300]``

Starts the real server (``fhir-trial serve``: gunicorn, threaded workers, on 127.0.0.1 and a
free port) with a trusted-issuers file for the public CDS Hooks sandbox, exactly as
``bench_cds.py`` does (its set-up is imported, not copied: the synthetic patient with a card, the
prefetch a conformant EHR builds from the discovery templates, the sandbox signer). Every call is
a ``patient-view`` hook with that prefetch and its own sandbox-signed ES384 JWT (own ``jti``),
which the server verifies as deployed. Tokens are minted by each client process just before its
call (a run of several minutes needs tens of thousands; minting is outside the timed request but
inside the wall time, so on a small machine it takes a little CPU from the server).

1. Saturation: concurrency 1, 2, 4, 8 and 16 (one client process per caller, each with its own
   connection) for ``--step-seconds`` each; the concurrency with the best throughput is kept.
2. Warm-up at that concurrency for ``--warmup-seconds``; then the resident memory (VmRSS from
   /proc/<pid>/status) of every gunicorn worker (the children of the master) is read.
3. The run: ``--seconds`` at that concurrency; throughput, p50/p95/p99 latency and errors (any
   answer other than HTTP 200, and connection failures) are printed, then each worker's memory
   at the end and its growth since the warm-up. A worker that was replaced during the run (new
   pid) is reported as such and counts as a failure of the memory target.

Targets (issue 19): 0 errors; memory growth under 10% after warm-up (the largest growth of any
worker). The last two lines are ``errors: <n> (target 0): PASS|FAIL`` and
``memory growth: <x>% (target < 10%): PASS|FAIL``. Needs ../shared (the sandbox key) and Linux
(/proc).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cds import (
    HOOK_PATH,
    SANDBOX,
    SandboxSigner,
    hook_body,
    patient_with_card,
    percentiles,
    prefetch_resources,
    serving,
)

STEPS = (1, 2, 4, 8, 16)
ERROR_TARGET = 0
GROWTH_TARGET = 10.0  # percent

# Set before the client processes fork (they inherit it; nothing large is pickled per call).
_CALL: dict[str, Any] = {}


def _client(port: int, seconds: float, barrier: Any, results: Any) -> None:
    """One concurrent caller: hook calls for ``seconds``; sends latencies and failures."""
    body: bytes = _CALL["body"]
    aud = f"http://127.0.0.1:{port}{HOOK_PATH}"
    signer = SandboxSigner()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    failures: list[str] = []
    barrier.wait()  # every caller and the parent start together; set-up is not part of the run
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {signer.token(aud)}",
        }
        started = time.perf_counter()
        try:
            conn.request("POST", HOOK_PATH, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                failures.append(f"HTTP {response.status}: {answer[:120]!r}")
            elif not json.loads(answer).get("cards"):
                failures.append("HTTP 200 without the card")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            failures.append(type(exc).__name__)
        latencies.append(time.perf_counter() - started)
    conn.close()
    results.put((latencies, failures))


def load(port: int, concurrency: int, seconds: float) -> tuple[list[float], list[str], float]:
    """Hook calls from ``concurrency`` client processes for ``seconds``: latencies, failures, wall."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(concurrency + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(port, seconds, barrier, results))
        for _ in range(concurrency)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.monotonic()
    latencies: list[float] = []
    failures: list[str] = []
    for _ in procs:
        got, failed = results.get(timeout=seconds + 120)
        latencies += got
        failures += failed
    wall = time.monotonic() - started
    for proc in procs:
        proc.join()
    return latencies, failures, wall


def worker_rss_kib(master_pid: int) -> dict[int, int]:
    """VmRSS (KiB) of each gunicorn worker: the master's children, from /proc."""
    rss: dict[int, int] = {}
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    for pid in children:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[int(pid)] = int(line.split()[1])
        except OSError:
            continue
    return rss


def _print_rss(label: str, rss: dict[int, int]) -> None:
    listed = ", ".join(f"pid {pid} {kib / 1024:.1f} MiB" for pid, kib in sorted(rss.items()))
    print(f"worker memory (VmRSS) {label}: {listed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the measured run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers")
    parser.add_argument("--resources", type=int, default=300, help="resources in the record")
    parser.add_argument("--step-seconds", type=float, default=5.0, help="per saturation step")
    parser.add_argument("--warmup-seconds", type=float, default=15.0)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="skip the saturation steps and use this"
    )
    args = parser.parse_args()
    if not SANDBOX.is_dir():
        raise SystemExit("bench_load needs ../shared (the CDS Hooks sandbox key pair)")

    seed, patient_id, prefetch, verdict, n_record = patient_with_card(args.resources)
    _CALL["body"] = body = hook_body(patient_id, prefetch)
    with (
        tempfile.TemporaryDirectory() as tmp,
        serving(Path(tmp) / "service", args.workers, True) as (
            server,
            port,
        ),
    ):
        load_avg = os.getloadavg()[0]
        print(
            f"bench_load: load average {load_avg:.2f} on {os.cpu_count()} CPUs; gunicorn "
            f"{args.workers} workers on 127.0.0.1; synthetic patient (seed {seed}, {verdict}): "
            f"{n_record} resources, {prefetch_resources(prefetch)} in the prefetch "
            f"({len(body) // 1024} KiB); sandbox-signed ES384 JWTs, verified"
        )
        concurrency = args.concurrency
        if not concurrency:
            best = 0.0
            for step in STEPS:
                latencies, failures, wall = load(port, step, args.step_seconds)
                rate = len(latencies) / wall
                p50 = percentiles(latencies)[0] if len(latencies) > 1 else float("nan")
                print(
                    f"  step c={step:2d}: {rate:6.1f} calls/s, p50 {p50:7.2f} ms, "
                    f"{len(failures)} errors"
                )
                if rate > best:
                    best, concurrency = rate, step
            print(f"saturating concurrency: {concurrency} (best throughput {best:.1f} calls/s)")
        load(port, concurrency, args.warmup_seconds)
        before = worker_rss_kib(server.pid)
        _print_rss(f"after {args.warmup_seconds:g} s warm-up", before)
        latencies, failures, wall = load(port, concurrency, args.seconds)
        after = worker_rss_kib(server.pid)
        _print_rss(f"after the {args.seconds:g} s run", after)

    p50, p95, p99 = percentiles(latencies)
    print(
        f"run c={concurrency}, {wall:.1f} s: {len(latencies)} calls, "
        f"{len(latencies) / wall:.1f} calls/s; p50 {p50:.2f} ms, p95 {p95:.2f} ms, "
        f"p99 {p99:.2f} ms"
    )
    for kind in sorted(set(failures))[:5]:
        print(f"  error x{failures.count(kind)}: {kind}")
    growths = [
        (after[pid] - kib) / kib * 100 for pid, kib in before.items() if pid in after and kib
    ]
    for pid, kib in sorted(before.items()):
        if pid in after:
            print(f"  worker {pid}: {kib / 1024:.1f} -> {after[pid] / 1024:.1f} MiB")
    replaced = set(before) != set(after)
    if replaced:
        print(f"workers replaced during the run: {sorted(before)} -> {sorted(after)}")
    growth = max(growths) if growths and not replaced else float("inf")
    errors_ok = len(failures) <= ERROR_TARGET
    growth_ok = growth < GROWTH_TARGET
    print(f"errors: {len(failures)} (target {ERROR_TARGET}): {'PASS' if errors_ok else 'FAIL'}")
    print(
        f"memory growth: {growth:.1f}% (target < {GROWTH_TARGET:g}%): "
        f"{'PASS' if growth_ok else 'FAIL'}"
    )
    return 0 if errors_ok and growth_ok else 1


if __name__ == "__main__":
    sys.exit(main())
