"""Benchmark: the CDS Hooks hook vs. the health endpoint, under gunicorn on 127.0.0.1.

Run: ``.venv/bin/python benchmarks/bench_cds.py [--resources 300] [--workers 4] [--requests 200]``

Starts ``fhir-trial serve`` (gunicorn, threaded workers) on a free local port with a trusted-issuers
file for the public CDS Hooks sandbox (its published key pair in ../shared), then sends
``patient-view`` calls for one synthetic patient whose record holds a few hundred resources (the
first synthetic patient the screening answers with a card, so card rendering and the worksheet row
are part of every call). The prefetch is what a conformant EHR would send: every prefetch template
of the service's discovery document executed against the patient's whole record (a small matcher
below runs the ``patient``/``individual`` reference and ``code``/``value-concept`` token filters
the templates use, and ``combo-code``/``component-value-concept`` over components), so it carries
what the templates ask for and nothing else. Both counts are printed. Each call has its own sandbox-signed JWT with its own ``jti``, all minted before timing
starts (the EHR's signing is not the service's latency; the server still verifies each one, as
deployed), at concurrency 1 and 8, and the same number of ``GET /healthz`` calls, measured the
same way in the same run.

Fairness: the load comes from separate client processes (one per concurrent caller, each with its
own connection, reopened when the sync worker closes it), not from threads sharing the GIL with
each other; health and hook calls alternate in several rounds so background load on the machine
hits both alike; warm-up calls are not counted; the run stops itself after about two minutes.
Besides latency it prints the server's CPU time per call (gunicorn workers, from /proc), which
depends less on other load than latency does (not entirely: on a shared VM it rises under load),
and the load average at the start, so a run on a busy machine can be recognised.

Then the floor: the same calls at concurrency 8 to a second server, started by this script, that
runs the service with screening and cards switched off (``serve_floor``): the JWT is verified and
its jti recorded, the body read, parsed and checked exactly as deployed, and the answer has no
cards. Its ratio is what no screening code, however fast, can go below on this machine; it is
printed for that reason and does not decide the verdict.

Without ../shared the tokens cannot be signed and the service runs in development mode (said so).
Target (issue 4): hook p50 <= 3 x health p50 at concurrency 8. The last line is the verdict.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import AS_OF, synthetic_bundle

from fhir_trial.cds_hooks.discovery import PATIENT_TOKEN, SERVICE_ID, prefetch_templates
from fhir_trial.config import Settings
from fhir_trial.searches import PlannedSearch, plan_searches
from fhir_trial.terminology import load_terminology

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT.parent / "shared" / "fixtures" / "cds-hooks" / "sandbox"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
TARGET = 3.0
HOOK_PATH = f"/cds-services/{SERVICE_ID}"
CONCURRENCIES = (1, 8)
TIME_LIMIT_S = 110.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hook_body(patient_id: str, prefetch: dict[str, Any]) -> bytes:
    """The patient-view request every benchmark call sends (compact JSON)."""
    return json.dumps(
        {
            "hookInstance": str(uuid.uuid4()),
            "hook": "patient-view",
            "context": {"userId": "Practitioner/bench", "patientId": patient_id},
            "prefetch": prefetch,
        },
        separators=(",", ":"),
    ).encode()


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


# ------------------------------------------------------------------------------- the EHR's side
# Where each search parameter the templates use looks in a resource (FHIR R4 search definitions).
_REFERENCE_PARAMS: Mapping[str, tuple[str, ...]] = {
    "patient": ("subject", "patient"),
    "individual": ("individual",),
}
_TOKEN_PARAMS: Mapping[str, str] = {"code": "code", "value-concept": "valueCodeableConcept"}
_COMPONENT_PARAMS: Mapping[str, str] = {
    "combo-code": "code",
    "component-value-concept": "valueCodeableConcept",
}
_TEXT_PARAMS: Mapping[str, str] = {"code:text": "code"}
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_BAR = re.compile(r"(?<!\\)\|")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _token_matches(concept: Any, token: str) -> bool:
    """FHIR token semantics: ``system|code``, ``|code`` (no system) or ``code`` (any system)."""
    parts = _UNESCAPED_BAR.split(token, maxsplit=1)
    system, code = (None, parts[0]) if len(parts) == 1 else (_unescape(parts[0]), parts[1])
    code = _unescape(code)
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings or []:
        if coding.get("code") != code:
            continue
        if system is None or (coding.get("system") or "") == system:
            return True
    return False


def _param_matches(resource: Mapping[str, Any], name: str, value: str) -> bool:
    alternatives = _UNESCAPED_COMMA.split(value)
    if name in _REFERENCE_PARAMS:
        refs = {
            (resource.get(element) or {}).get("reference") for element in _REFERENCE_PARAMS[name]
        }
        return any(f"Patient/{alt}" in refs or alt in refs for alt in alternatives)
    if name in _TOKEN_PARAMS:
        concept = resource.get(_TOKEN_PARAMS[name])
        return any(_token_matches(concept, alt) for alt in alternatives)
    if name in _COMPONENT_PARAMS:
        # combo-code: Observation.code | Observation.component.code; component-value-concept:
        # Observation.component.valueCodeableConcept (FHIR R4 search parameters).
        element = _COMPONENT_PARAMS[name]
        concepts = [c.get(element) for c in resource.get("component") or []]
        if name == "combo-code":
            concepts.append(resource.get("code"))
        return any(_token_matches(c, alt) for c in concepts for alt in alternatives)
    if name in _TEXT_PARAMS:
        # :text on a token: the concept's text or a coding's display holds the words (servers
        # differ; this matches as Medplum does: anywhere, ignoring case).
        concept = resource.get(_TEXT_PARAMS[name])
        if not isinstance(concept, dict):
            return False
        texts = [concept.get("text")] + [c.get("display") for c in concept.get("coding") or []]
        words = [str(t).lower() for t in texts if t]
        return any(alt.lower() in w for alt in map(_unescape, alternatives) for w in words)
    raise SystemExit(f"bench_cds: no matcher for search parameter {name!r}; add one")


def execute_template(
    template: str, patient_id: str, resources: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """What an EHR's FHIR server answers for one prefetch template: a read, or a searchset."""
    query = template.replace(PATIENT_TOKEN, patient_id)
    path, _, query_string = query.partition("?")
    if not query_string:  # a read: Type/id
        rtype, _, rid = path.partition("/")
        return next(r for r in resources if r["resourceType"] == rtype and r.get("id") == rid)
    params = [part.split("=", 1) for part in query_string.split("&")]
    matches = [
        r
        for r in resources
        if r["resourceType"] == path
        and all(_param_matches(r, name, unquote(value)) for name, value in params)
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "entry": [
            {"fullUrl": f"{path}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in matches
        ],
    }


def prefetch_for(
    bundle: dict[str, Any], plan: Sequence[PlannedSearch]
) -> tuple[str, dict[str, Any], int]:
    """Patient id, the prefetch an EHR builds from the templates, and the record's size."""
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    patient_id = str(patient["id"])
    prefetch = {
        key: execute_template(template, patient_id, resources)
        for key, template in prefetch_templates(plan).items()
    }
    return patient_id, prefetch, len(resources)


def prefetch_resources(prefetch: Mapping[str, Any]) -> int:
    """Distinct resources the prefetch carries."""
    seen: set[str] = set()
    for value in prefetch.values():
        if value.get("resourceType") == "Bundle":
            seen.update(
                f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in value["entry"]
            )
        else:
            seen.add(f"{value['resourceType']}/{value['id']}")
    return len(seen)


def patient_with_card(
    size: int,
) -> tuple[int, str, dict[str, Any], str, int]:
    """The first synthetic patient (seed) the screening answers with a card.

    Returns the seed, patient id, prefetch, verdict and the number of resources in the record.
    """
    from fhir_trial.cds_hooks.prefetch import apply_prefetch
    from fhir_trial.evaluate import evaluate
    from fhir_trial.record import PatientRecord

    settings = Settings.from_env(as_of=AS_OF)
    plan = plan_searches(load_terminology(settings.resources_dir))
    verdict = ""
    for seed in range(1, 60):
        patient_id, prefetch, total = prefetch_for(synthetic_bundle(seed, size), plan)
        record = PatientRecord()
        apply_prefetch(record, prefetch, patient_id, plan)
        verdict = evaluate(record, settings).verdict
        if verdict != "ineligible":
            return seed, patient_id, prefetch, verdict, total
    patient_id, prefetch, total = prefetch_for(synthetic_bundle(1, size), plan)
    return 1, patient_id, prefetch, verdict, total


# ------------------------------------------------------------------------------------ load
# Set before the client processes fork (they inherit it; nothing large is pickled per call).
_CALLS: dict[str, Any] = {}


def _client(
    port: int,
    kind: str,
    first_token: int,
    counter: Any,
    total: int,
    stop_at: float,
    barrier: Any,
    results: Any,
) -> None:
    """One concurrent caller: takes call numbers from ``counter`` until ``total``; sends latencies.

    Also sends its own CPU time while calling (so the report can show what the client cost).
    """
    body: bytes = _CALLS["body"]
    tokens: Sequence[str] = _CALLS["tokens"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    failures: list[int] = []
    barrier.wait()
    cpu_started = time.process_time()
    while time.monotonic() < stop_at:
        with counter.get_lock():
            number = counter.value
            if number >= total:
                break
            counter.value += 1
        if kind == "hook":
            headers = {"Content-Type": "application/json"}
            token = tokens[first_token + number] if tokens else ""
            if token:
                headers["Authorization"] = f"Bearer {token}"
            method, path, payload = "POST", HOOK_PATH, body
        else:
            headers, method, path, payload = {}, "GET", "/healthz", None
        started = time.perf_counter()
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            status = -1
        latencies.append(time.perf_counter() - started)
        if status != 200:
            failures.append(status)
    conn.close()
    results.put((latencies, failures, time.process_time() - cpu_started))


def run_phase(
    port: int, kind: str, count: int, concurrency: int, first_token: int, stop_at: float
) -> tuple[list[float], float]:
    """``count`` calls of one kind from ``concurrency`` client processes: latencies, client CPU."""
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0)
    barrier = ctx.Barrier(concurrency)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client,
            args=(port, kind, first_token, counter, count, stop_at, barrier, results),
        )
        for _ in range(concurrency)
    ]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    failures: list[int] = []
    client_cpu = 0.0
    for _ in procs:
        got, failed, cpu = results.get(timeout=120)
        latencies += got
        failures += failed
        client_cpu += cpu
    for proc in procs:
        proc.join()
    if failures:
        raise SystemExit(f"{len(failures)} {kind} calls failed (statuses {sorted(set(failures))})")
    return latencies, client_cpu


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def worker_cpu_seconds(master_pid: int) -> float | None:
    """User + system CPU of the gunicorn master's children (Linux /proc); None elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    return total / tick


Results = dict[tuple[str, int], tuple[float, float, float]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resources", type=int, default=300, help="resources in the patient's record"
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    parser.add_argument(
        "--requests", type=int, default=200, help="calls per endpoint and concurrency"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating hook/health rounds per concurrency"
    )
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--trusted-issuers", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        serve_floor(args.port, args.workers, args.trusted_issuers)
        return 0
    per_round = max(1, args.requests // args.rounds)
    signed = SANDBOX.is_dir()
    seed, patient_id, prefetch, verdict, n_record = patient_with_card(args.resources)
    n_prefetch = prefetch_resources(prefetch)
    signer = SandboxSigner() if signed else None

    _CALLS["body"] = body = hook_body(patient_id, prefetch)

    with tempfile.TemporaryDirectory() as tmp:
        # The service as deployed.
        with serving(Path(tmp) / "service", args.workers, signed) as (server, port):
            base = f"http://127.0.0.1:{port}"
            warm_hooks = 4 * args.workers
            total_hooks = warm_hooks + per_round * args.rounds * len(CONCURRENCIES)
            _CALLS["tokens"] = _mint(signer, base, total_hooks)
            cards = _cards_in_one_call(port, body, _CALLS["tokens"][0] if signed else "")
            stop_at = time.monotonic() + TIME_LIMIT_S
            run_phase(port, "hook", warm_hooks - 1, args.workers, 1, stop_at)  # warm-up
            run_phase(port, "health", 5 * args.workers, args.workers, 0, stop_at)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(
                f"bench_cds: load average {load:.2f} on {os.cpu_count()} CPUs; "
                f"gunicorn {args.workers} sync workers on 127.0.0.1; synthetic patient "
                f"(seed {seed}, {verdict}, {cards} card(s) per call): {n_record} resources in the "
                f"patient's record, {n_prefetch} in the prefetch the templates ask for "
                f"({len(body) // 1024} KiB); "
                f"{'sandbox-signed ES384 JWTs, verified' if signed else 'development mode'}; "
                f"{per_round * args.rounds} calls each, {args.rounds} alternating rounds; "
                f"client: one process per concurrent caller"
            )
            results = measure(
                server, port, CONCURRENCIES, args.rounds, per_round, warm_hooks, stop_at
            )
        # The same calls to a server that skips what only the hook does: what no screening
        # code can go below (JWT verification, reading, parsing and checking the request).
        with serving(Path(tmp) / "floor", args.workers, signed, floor=True) as (server, port):
            base = f"http://127.0.0.1:{port}"
            _CALLS["tokens"] = _mint(signer, base, 4 * args.workers + per_round * args.rounds)
            stop_at = time.monotonic() + TIME_LIMIT_S / 2
            run_phase(port, "hook", 4 * args.workers, args.workers, 0, stop_at)  # warm-up
            floor = measure(
                server,
                port,
                (8,),
                args.rounds,
                per_round,
                4 * args.workers,
                stop_at,
                label="floor ",
            )
    floor_ratio = floor[("hook", 8)][0] / floor[("health", 8)][0]
    print(
        f"floor c=8, same calls to a server that verifies the JWT and reads, parses and checks "
        f"the request but skips screening and cards: hook p50 {floor[('hook', 8)][0]:.2f} ms, "
        f"health p50 {floor[('health', 8)][0]:.2f} ms, ratio {floor_ratio:.2f}; "
        f"the hook's p50 is {results[('hook', 8)][0] / floor[('hook', 8)][0]:.2f} x the floor's"
    )
    ratio = results[("hook", 8)][0] / results[("health", 8)][0]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"hook/health p50 ratio at c=8: {ratio:.2f} (target <= {TARGET}): {verdict}")
    return 0 if verdict == "PASS" else 1


def _mint(signer: SandboxSigner | None, base: str, count: int) -> list[str]:
    """One token per call (its own jti), minted before timing starts."""
    return [signer.token(f"{base}{HOOK_PATH}") for _ in range(count)] if signer else []


@contextlib.contextmanager
def serving(
    workdir: Path, workers: int, signed: bool, *, floor: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``fhir-trial serve`` (or the floor server) on a free port; yield it and the port."""
    workdir.mkdir(parents=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        FHIR_TRIAL_DATABASE_PATH=str(workdir / "bench.sqlite3"),
        FHIR_TRIAL_SECRET_KEY="bench-secret",
        FHIR_TRIAL_AS_OF=AS_OF.isoformat(),
    )
    if floor:
        command = [sys.executable, str(Path(__file__).resolve()), "--floor-server"]
    else:
        command = [sys.executable, "-m", "fhir_trial", "serve"]
    command += ["--port", str(port), "--workers", str(workers)]
    if signed:
        issuers = workdir / "issuers.json"
        jwks = json.loads((SANDBOX / "jwks.json").read_text())
        issuers.write_text(
            json.dumps({"issuers": [{"iss": SANDBOX_ISS, "jwks": jwks, "audience": [base]}]})
        )
        command += ["--trusted-issuers", str(issuers)]
    elif floor:
        env["FHIR_TRIAL_CDS_DEVELOPMENT_MODE"] = "true"
    else:
        print("../shared not found: development mode (no JWT verification)")
        command.append("--development-mode")
    log_path = workdir / "server.log"
    with log_path.open("wb") as server_log:
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=server_log, start_new_session=True
        )
    try:
        _wait_until_up(port)
        yield server, port
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def measure(
    server: subprocess.Popen[bytes],
    port: int,
    concurrencies: Sequence[int],
    rounds: int,
    per_round: int,
    first_token: int,
    stop_at: float,
    *,
    label: str = "",
) -> Results:
    """Hook and health calls in alternating rounds per concurrency: p50/p95/p99 of each."""
    results: Results = {}
    used = first_token
    for concurrency in concurrencies:
        latencies: dict[str, list[float]] = {"hook": [], "health": []}
        cpu: dict[str, float] = {"hook": 0.0, "health": 0.0}
        client_cpu: dict[str, float] = {"hook": 0.0, "health": 0.0}
        for _ in range(rounds):
            for kind in ("hook", "health"):
                before = worker_cpu_seconds(server.pid)
                got, spent = run_phase(port, kind, per_round, concurrency, used, stop_at)
                after = worker_cpu_seconds(server.pid)
                if before is not None and after is not None:
                    cpu[kind] += after - before
                client_cpu[kind] += spent
                if kind == "hook":
                    used += per_round
                latencies[kind] += got
        if time.monotonic() > stop_at:
            print(f"time limit reached: fewer calls than asked at c={concurrency}")
        for kind in ("hook", "health"):
            values = latencies[kind]
            results[(kind, concurrency)] = p50, p95, p99 = percentiles(values)
            print(
                f"{label}{kind:>6} c={concurrency}: p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  "
                f"p99 {p99:7.2f} ms  (CPU per call: server "
                f"{cpu[kind] / len(values) * 1000:5.2f} ms, "
                f"client {client_cpu[kind] / len(values) * 1000:4.2f} ms)"
            )
    return results


def serve_floor(port: int, workers: int, trusted_issuers: str | None) -> None:
    """The floor server: ``fhir-trial serve`` whose hook stops after checking the request.

    Authentication (JWT, replay list), reading, parsing and validating the body and the hook
    request run exactly as deployed; screening (prefetch to record, evaluation) and cards (with
    the worksheet row) are replaced by "no cards". Only the benchmark starts this.
    """
    from fhir_trial.cds_hooks.service import CdsService, HookRequest, Outcome
    from fhir_trial.commands.serve import GunicornServer, gunicorn_options

    def no_screening(self: CdsService, hook: HookRequest, started: float | None = None) -> Outcome:
        return Outcome("incomplete", reason="floor measurement")

    def no_cards(
        self: CdsService, hook: HookRequest, outcome: Outcome, base_url: str
    ) -> list[dict[str, Any]]:
        return []

    CdsService.run = no_screening  # type: ignore[method-assign]
    CdsService.cards = no_cards  # type: ignore[method-assign]
    settings = Settings.from_env(cds_trusted_issuers_file=trusted_issuers)
    GunicornServer(settings, gunicorn_options("127.0.0.1", port, workers, settings)).run()


def _cards_in_one_call(port: int, body: bytes, token: str) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", HOOK_PATH, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise SystemExit(f"the hook answered HTTP {response.status}: {answer[:300]!r}")
    return len(json.loads(answer)["cards"])


def _wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise SystemExit("the server did not start within 60 s")


if __name__ == "__main__":
    sys.exit(main())
