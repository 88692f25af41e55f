"""Benchmark: building the PatientRecord plus evaluating all criteria vs. json.loads of the same data.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py [--patients N] [--repeat R]``

For each synthetic patient (deterministic, a few hundred to a few thousand resources) the JSON text
is parsed with ``json.loads`` (the floor any consumer pays) and, separately, the parsed Bundle is
turned into a PatientRecord and evaluated. Both are timed in the same run, best of R repeats. The
target from the issue: record building + evaluation costs no more than parsing (ratio <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import AS_OF, synthetic_bundle

from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.sources.bundle import record_from_bundle
from fhir_trial.terminology import load_terminology

TARGET = 1.0


def _best(fn: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    settings = Settings(as_of=AS_OF)
    terminology = load_terminology(settings.resources_dir)  # loaded once, like a running service
    sizes = [200 + (i * 137) % 2800 for i in range(args.patients)]  # 200..3000 resources
    texts = [json.dumps(synthetic_bundle(seed, size)) for seed, size in enumerate(sizes)]
    parsed = [json.loads(text) for text in texts]

    def parse_all() -> None:
        for text in texts:
            json.loads(text)

    def build_and_evaluate_all() -> None:
        for bundle in parsed:
            evaluate(record_from_bundle(bundle), settings, terminology)

    build_and_evaluate_all()  # warm-up (imports, caches)
    parse_s = _best(parse_all, args.repeat)
    evaluate_s = _best(build_and_evaluate_all, args.repeat)
    resources = sum(len(b["entry"]) for b in parsed)
    megabytes = sum(len(t) for t in texts) / 1e6
    ratio = evaluate_s / parse_s
    print(f"patients: {len(texts)}, resources: {resources}, JSON: {megabytes:.1f} MB")
    print(
        f"json.loads:            {parse_s * 1000:8.1f} ms total, {parse_s / len(texts) * 1000:6.2f} ms/patient"
    )
    print(
        f"build record+evaluate: {evaluate_s * 1000:8.1f} ms total, "
        f"{evaluate_s / len(texts) * 1000:6.2f} ms/patient"
    )
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"evaluate/parse ratio: {ratio:.2f} (target <= {TARGET}): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
