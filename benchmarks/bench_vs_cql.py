"""Benchmark: the reference CQL engine vs the Python evaluator on the same synthetic patients.

Run: ``.venv/bin/python benchmarks/bench_vs_cql.py [--patients N] [--size S] [--repeat R]``

Both sides are warm: the Node engine process is started and the ELM and ValueSets loaded before
timing (start-up excluded), and each patient is evaluated once untimed on each side first. Then each
patient is timed on each side, best of R repeats: the Python side builds the PatientRecord from the
parsed Bundle and evaluates it; the CQL side sends the parsed Bundle to the engine and waits for its
answer (cql-exec-fhir builds its own patient view from the Bundle). The runtime is bounded by the
arguments (defaults: 20 patients of ~200 resources, best of 2).
Target (issue 5): the Python evaluator at least 10 times faster. Last line:
``cql-engine/python speed ratio: <x> (target >= 10): PASS`` (or FAIL).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import AS_OF, synthetic_bundle

from fhir_trial.config import Settings
from fhir_trial.cql.engine import CqlEngine
from fhir_trial.evaluate import evaluate
from fhir_trial.sources.bundle import record_from_bundle
from fhir_trial.terminology import load_terminology

TARGET = 10.0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print per-patient times and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--size", type=int, default=200, help="approximate resources per patient")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    patients = max(1, min(args.patients, 500))
    repeat = max(1, min(args.repeat, 10))

    settings = Settings(as_of=AS_OF)
    terminology = load_terminology(settings.resources_dir)
    bundles = [synthetic_bundle(seed, args.size) for seed in range(patients)]

    python_times: list[float] = []
    cql_times: list[float] = []
    with CqlEngine(settings.resources_dir) as engine:
        print(f"{'patient':>8} {'resources':>9} {'python ms':>10} {'cql ms':>10} {'ratio':>7}")
        for index, bundle in enumerate(bundles):
            evaluate(record_from_bundle(bundle), settings, terminology)  # warm
            engine.evaluate(bundle, settings)  # warm
            best_py = best_cql = float("inf")
            for _ in range(repeat):
                start = time.perf_counter()
                evaluate(record_from_bundle(bundle), settings, terminology)
                best_py = min(best_py, time.perf_counter() - start)
                start = time.perf_counter()
                engine.evaluate(bundle, settings)
                best_cql = min(best_cql, time.perf_counter() - start)
            python_times.append(best_py)
            cql_times.append(best_cql)
            print(
                f"{index:>8} {len(bundle.get('entry', [])):>9} {best_py * 1e3:>10.2f} "
                f"{best_cql * 1e3:>10.2f} {best_cql / best_py:>7.1f}"
            )
    py_median = statistics.median(python_times)
    cql_median = statistics.median(cql_times)
    ratio = sum(cql_times) / sum(python_times)
    print(
        f"median per patient: python {py_median * 1e3:.2f} ms, cql engine {cql_median * 1e3:.2f} ms"
    )
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"cql-engine/python speed ratio: {ratio:.1f} (target >= {TARGET:g}): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
