"""Benchmark: does acknowledged CDS feedback survive SIGKILL of the whole server?

Run: ``.venv/bin/python benchmarks/bench_durability.py [--rounds 10] [--per-round 20]``

Starts ``fhir-trial serve`` (gunicorn, two workers) on a free local port with the public CDS
Hooks sandbox as trusted issuer (its published key pair in ../shared). Each round: a hook call
gets a card, then ``--per-round`` feedback calls for it are sent from 4 threads, each with its
own comment, and the moment the last one is acknowledged (HTTP 200) the master and every worker
get SIGKILL, with no chance to flush anything. The server is started again on the same database,
answers ``/healthz``, and the script counts how many of the acknowledged items are in the
database. Target: all of them (the row is committed with ``synchronous=FULL`` before the answer
is sent). The worksheet is read-only (no decisions are recorded there), so feedback is the only
state a client is told has been saved.

SIGKILL tests the process side only: the data has reached the operating system, not necessarily
the disk. A power cut is what ``synchronous=FULL`` is for, and is not something a script can do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cds_helpers import (  # noqa: E402
    SERVICE_PATH,
    bearer,
    free_port,
    full_prefetch,
    hook_request,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)

SHARED = ROOT.parent / "shared"


def _start(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_trial", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit("the server did not start")


def _feedback(base: str, card: str, comment: str) -> bool:
    url = f"{base}{SERVICE_PATH}/feedback"
    body = {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "outcomeTimestamp": "2026-12-07T10:00:00Z",
                "overrideReason": {"userComment": comment},
            }
        ]
    }
    token = sandbox_token(SHARED, aud=url)
    try:
        response = requests.post(url, json=body, headers=bearer(token), timeout=10)
    except requests.RequestException:
        return False
    return response.status_code == 200


def _stored(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT user_comment FROM cds_feedback").fetchall()
    return {row[0] for row in rows}


def main() -> int:
    """Run the rounds; print acknowledged vs survived, and PASS or FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fhir-trial-durability-"))
    database = folder / "db.sqlite3"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        FHIR_TRIAL_DATABASE_PATH=str(database),
        FHIR_TRIAL_CDS_TRUSTED_ISSUERS_FILE=write_issuers(
            folder / "issuers.json", [sandbox_issuer(SHARED)]
        ),
        FHIR_TRIAL_SECRET_KEY="durability",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    acknowledged: set[str] = set()
    kill_gaps: list[float] = []
    process = _start(port, env)
    try:
        for _ in range(args.rounds):
            hook = requests.post(
                f"{base}{SERVICE_PATH}",
                json=hook_request(full_prefetch()),
                headers=bearer(sandbox_token(SHARED, aud=f"{base}{SERVICE_PATH}")),
                timeout=10,
            )
            card: str = hook.json()["cards"][0]["uuid"]
            comments = [f"durability {uuid.uuid4()}" for _ in range(args.per_round)]
            with ThreadPoolExecutor(4) as pool:
                results: list[Any] = list(pool.map(partial(_feedback, base, card), comments))
            acked_at = time.monotonic()
            os.killpg(process.pid, signal.SIGKILL)  # master and workers, at once
            kill_gaps.append(time.monotonic() - acked_at)
            process.wait(timeout=10)
            acknowledged |= {c for c, ok in zip(comments, results, strict=True) if ok}
            process = _start(port, env)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    survived = acknowledged & _stored(database)
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "feedback_sent": args.rounds * args.per_round,
                "acknowledged": len(acknowledged),
                "survived": len(survived),
                "lost": len(acknowledged - survived),
                "max_ms_from_last_ack_to_sigkill": round(max(kill_gaps) * 1000, 2),
            }
        )
    )
    ok = acknowledged and survived == acknowledged
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
