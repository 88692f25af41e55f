"""Benchmark: screening a Bulk NDJSON export (the real ``screen-population --ndjson`` path).

Generates N deterministic synthetic patients as NDJSON (one file per resource type, about 273
lines per patient, from :mod:`synthetic`), then, in a fresh process per size:

- a parse-only pass: orjson over every line of every file, in ``--workers`` processes (the floor);
- the screening: :func:`fhir_trial.population.screen_ndjson` with the default settings and the
  same number of processes, every report counted in a :class:`Feasibility`;

and prints patients per second, the screen/parse time ratio, and peak memory of all processes
(the largest sum of the resident sizes of this process and its children, sampled every 20 ms),
for N and 10*N. Targets: screen/parse <= 3.0; memory 10N/N <= 1.5.

Before them it prints two diagnostics (not targets): the floor (CPU of parsing, building and
evaluating in one process) and the *reading alone*: the same screening of N patients with the
evaluation of each patient replaced by one report computed beforehand, so what remains is the
reader (split, group, parse, build, write and merge the reports). What the evaluation may cost
for the target to hold is the difference.

The package's bytecode is written first (as installing its wheel does), so that no pass pays the
compilation of its modules: with ``PYTHONDONTWRITEBYTECODE`` set, as on some CI machines, an
editable checkout would otherwise compile them again in every worker's fork server (0.3 s of CPU).

At N the measurement is made ``--repeat`` times (fresh processes each time) and the best
screening and the best parse-only pass are compared (the peak memory is the largest), as timings
on a shared machine vary by 30% from one run to the next; each run's ratio is printed too.

    PYTHONPATH=$PWD python benchmarks/bench_population.py [--patients 1000] [--workers 2]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import AS_OF, synthetic_bundle

RATIO_TARGET = 3.0
MEMORY_TARGET = 1.5
RESOURCES_PER_PATIENT = 273  # the 1,000 patients = 273,500 lines
CHUNK = 32 * 1024 * 1024
# Set in the measuring process's environment for the reading-alone runs. Its worker processes
# import this file as their main module (spawned ones themselves; on Linux the fork server they
# fork from, which the measuring process starts and which inherits the environment), so the
# replacement below is made in every process that evaluates.
READING_ALONE = "FHIR_TRIAL_BENCH_READING_ALONE"


def _evaluate_once() -> None:
    """Replace the evaluation by one report computed on first use (the --reading-alone run)."""
    from fhir_trial.sources import ndjson_versions

    real = ndjson_versions.evaluate
    kept: list[Any] = []

    def constant(record: Any, settings: Any = None, terminology: Any = None) -> Any:
        if not kept:
            kept.append(real(record, settings, terminology))
        return kept[0]

    ndjson_versions.evaluate = constant  # type: ignore[assignment]


if os.environ.get(READING_ALONE) == "1":
    _evaluate_once()


# ------------------------------------------------------------------------------ data
def _templates(count: int) -> list[dict[str, list[bytes]]]:
    """``count`` distinct patients, each as NDJSON lines per resource type."""
    out = []
    for seed in range(count):
        by_type: dict[str, list[bytes]] = {}
        for entry in synthetic_bundle(seed, RESOURCES_PER_PATIENT)["entry"]:
            resource = entry["resource"]
            line = json.dumps(resource, separators=(",", ":")).encode()
            by_type.setdefault(resource["resourceType"], []).append(line)
        out.append(by_type)
    return out


def write_export(folder: Path, patients: int, templates: list[dict[str, list[bytes]]]) -> int:
    """Write ``patients`` patients (template k % len, ids renamed); returns the line count."""
    folder.mkdir(parents=True, exist_ok=True)
    handles = {}
    lines = 0
    try:
        for number in range(patients):
            template = templates[number % len(templates)]
            old = f"synthetic-{number % len(templates)}".encode()
            new = f"synthetic-{number}".encode()
            for rtype, items in template.items():
                handle = handles.get(rtype)
                if handle is None:
                    handle = handles[rtype] = (folder / f"{rtype}.000.ndjson").open("wb")
                block = b"\n".join(items) + b"\n"
                if old != new:
                    block = block.replace(old + b'"', new + b'"').replace(old + b"-", new + b"-")
                handle.write(block)
                lines += len(items)
    finally:
        for handle in handles.values():
            handle.close()
    return lines


# ------------------------------------------------------------------------------ measure
def compile_package() -> None:
    """Write the bytecode of every module of the package (what pip does when it installs a wheel).

    An editable install does not, and with ``PYTHONDONTWRITEBYTECODE`` set nothing writes it
    later: each process then compiles what it imports, and the screening's fork server would
    spend three times its import time compiling, a cost the installed product does not pay.
    """
    import compileall

    import fhir_trial

    compileall.compile_dir(str(Path(fhir_trial.__file__).parent), quiet=1)


class PeakMemory:
    """The largest sum of VmRSS over this process and its descendants, sampled (Linux /proc)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(0.02)

    @staticmethod
    def _total() -> int:
        me = os.getpid()
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as handle:
                    fields = dict(
                        line.split(":", 1) for line in handle.read().splitlines() if ":" in line
                    )
            except OSError:
                continue
            pid = int(entry)
            parents[pid] = int(fields.get("PPid", "0").strip() or 0)
            rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        total = 0
        for pid, size in rss.items():
            walk = pid
            while walk and walk != me:
                walk = parents.get(walk, 0)
            if walk == me:
                total += size
        return total


def _parse_range(task: tuple[str, int, int]) -> int:
    import orjson

    path, start, end = task
    count = 0
    with open(path, "rb") as handle:
        if start:
            handle.seek(start - 1)
            handle.readline()
        position = handle.tell()
        while position < end:
            line = handle.readline()
            if not line:
                break
            position += len(line)
            if line.strip():
                orjson.loads(line)
                count += 1
    return count


def parse_only(folder: Path, workers: int) -> float:
    """Seconds to parse every line once with orjson in ``workers`` processes (pool start included)."""
    tasks = []
    for path in sorted(folder.glob("*.ndjson")):
        size = path.stat().st_size
        tasks += [(str(path), start, min(size, start + CHUNK)) for start in range(0, size, CHUNK)]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        sum(pool.map(_parse_range, tasks))
    return time.perf_counter() - start


def measure(folder: Path, workers: int) -> dict[str, float]:
    """One size, in this (fresh) process: parse-only, then screening with peak memory.

    With ``FHIR_TRIAL_BENCH_READING_ALONE=1`` in the environment, every patient gets the same
    report, computed once (see :func:`_evaluate_once`).
    """
    from fhir_trial.config import Settings
    from fhir_trial.population import Feasibility, screen_ndjson
    from fhir_trial.record import CATEGORIES
    from fhir_trial.sources.ndjson import NdjsonExport

    settings = Settings(as_of=AS_OF)
    parse_seconds = parse_only(folder, workers)
    feasibility = Feasibility()
    with PeakMemory() as memory:
        start = time.perf_counter()
        export = NdjsonExport(folder, complete_types=CATEGORIES)  # the generator wrote all
        for screened in screen_ndjson(export, settings, workers=workers):
            feasibility.add(screened.report)
        screen_seconds = time.perf_counter() - start
    return {
        "patients": feasibility.total,
        "parse": parse_seconds,
        "screen": screen_seconds,
        "peak": memory.peak,
    }


def evaluation_floor(templates: list[dict[str, list[bytes]]]) -> tuple[float, float, float]:
    """CPU seconds, one process, GC as in the workers: orjson parse, build, evaluate.

    What no reader can go below: the share of the screening the evaluator itself takes.
    """
    import gc

    import orjson

    from fhir_trial.config import Settings
    from fhir_trial.evaluate import evaluate
    from fhir_trial.sources.ndjson import assemble_record
    from fhir_trial.sources.ndjson_screen import _settle

    settings = Settings(as_of=AS_OF)
    _settle(settings)
    lines = [[line for items in t.values() for line in items] for t in templates]
    gc.disable()
    try:
        start = time.process_time()
        for patient in lines:
            for line in patient:
                orjson.loads(line)
        parse = time.process_time() - start
        parsed = [[orjson.loads(line) for line in patient] for patient in lines]
        start = time.process_time()
        records = [assemble_record(p[0], p[1:], lambda ref: None) for p in parsed]
        build = time.process_time() - start
        start = time.process_time()
        for record in records:
            evaluate(record, settings)
        evaluation = time.process_time() - start
    finally:
        gc.enable()
    return parse, build, evaluation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--templates", type=int, default=200, help="distinct patients to vary")
    parser.add_argument("--repeat", type=int, default=3, help="measurements at N (best kept)")
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.workers)))
        return 0

    compile_package()
    from fhir_trial.compiled import reason_to_run_source, running_compiled

    print(
        "evaluator: compiled with mypyc"
        if running_compiled()
        else f"evaluator: pure Python ({reason_to_run_source() or 'no compiled build installed'})"
    )
    results = {}

    def run_measure(folder: Path, reading_alone: bool = False, repeat: int = 1) -> dict[str, Any]:
        """Best screening and best parse-only pass of ``repeat`` fresh runs, largest peak."""
        environment = dict(os.environ)
        environment[READING_ALONE] = "1" if reading_alone else "0"
        runs = []
        for _ in range(max(1, repeat)):
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    str(folder),
                    "--workers",
                    str(args.workers),
                ],
                check=True,
                capture_output=True,
                text=True,
                env=environment,
            )
            runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
        return {
            "patients": min(r["patients"] for r in runs),
            "screen": min(r["screen"] for r in runs),
            "parse": min(r["parse"] for r in runs),
            "peak": max(r["peak"] for r in runs),
            "ratios": [r["screen"] / r["parse"] for r in runs],
        }

    def each(figures: dict[str, Any]) -> str:
        ratios = figures["ratios"]
        return f" (each run: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""

    with tempfile.TemporaryDirectory(prefix="bench-population-") as tmp:
        templates = _templates(min(args.templates, args.patients))
        parse, build, evaluation = evaluation_floor(templates)
        print(
            f"floor ({len(templates)} patients, CPU, one process): orjson parse {parse:.2f} s, "
            f"build records {build:.2f} s ({build / parse:.1f}x), evaluate {evaluation:.2f} s "
            f"({evaluation / parse:.1f}x): parsing, building and evaluating take "
            f"{(parse + build + evaluation) / parse:.1f}x the CPU of parsing alone (the wall-clock "
            f"ratio below is lower at N: both passes also pay the same start of their processes)"
        )
        for size in (args.patients, 10 * args.patients):
            folder = Path(tmp) / f"n{size}"
            lines = write_export(folder, size, templates)
            mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            if size == args.patients:
                alone = run_measure(folder, reading_alone=True, repeat=args.repeat)
                print(
                    f"reading alone (N={size}, every patient given one report computed once): "
                    f"screen {alone['screen']:.2f} s, parse-only {alone['parse']:.2f} s, "
                    f"ratio {alone['screen'] / alone['parse']:.2f}{each(alone)}: the evaluation of {size} "
                    f"patients may take {RATIO_TARGET * alone['parse'] - alone['screen']:.2f} s of wall "
                    f"time for the target to hold"
                )
            figures = run_measure(folder, repeat=args.repeat if size == args.patients else 1)
            results[size] = figures
            print(
                f"N={size}: {lines} lines, {mb:.0f} MB, {args.workers} workers: "
                f"screen {figures['screen']:.1f} s ({figures['patients'] / figures['screen']:.0f} "
                f"patients/s), parse-only {figures['parse']:.1f} s, "
                f"ratio {figures['screen'] / figures['parse']:.2f}{each(figures)}, "
                f"peak memory {figures['peak'] / 1e6:.0f} MB"
            )
            assert figures["patients"] == size, figures
            for path in folder.iterdir():
                path.unlink()
    small = results[args.patients]
    ratio = small["screen"] / small["parse"]
    memory = results[10 * args.patients]["peak"] / small["peak"]
    print(
        f"screen/parse ratio: {ratio:.2f} (target <= {RATIO_TARGET}): "
        f"{'PASS' if ratio <= RATIO_TARGET else 'FAIL'}"
    )
    print(
        f"memory 10N/N: {memory:.2f} (target <= {MEMORY_TARGET}): "
        f"{'PASS' if memory <= MEMORY_TARGET else 'FAIL'}"
    )
    return 0 if ratio <= RATIO_TARGET and memory <= MEMORY_TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
