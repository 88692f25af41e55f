"""Long contract-fuzzing run: schemathesis against /openapi.json, 2,000 requests per operation.

Run: ``.venv/bin/python benchmarks/fuzz_api.py [--examples 2000] [--seed N] [--only TEXT]``
(``--only ^/smart`` fuzzes the operations whose path matches that regular expression, e.g. the
SMART app's).

The same test as CI's (``tests/test_contract_fuzz.py``: every schemathesis check, a fresh valid
token on most calls so the fuzzing reaches the code behind authentication, the random header on
the rest), with ``FHIR_TRIAL_FUZZ_EXAMPLES`` generated requests per operation instead of 10. It
needs ``pip install -e .[dev]`` (schemathesis) and ../shared (the sandbox key). Prints PASS when
no operation failed: no 5xx, no undocumented status, content type, header or body shape.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the fuzz test with many examples; print the time and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="requests per operation")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (random if not)")
    parser.add_argument("--only", default=None, help="paths matching this regular expression")
    args = parser.parse_args()
    env = dict(os.environ, FHIR_TRIAL_FUZZ_EXAMPLES=str(args.examples))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_contract_fuzz.py",
    ]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    if args.only:
        env["FHIR_TRIAL_FUZZ_PATHS"] = args.only
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    elapsed = time.monotonic() - started
    print(f"{args.examples} examples per operation, {elapsed:.0f} s")
    print("PASS" if result.returncode == 0 else "FAIL")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
