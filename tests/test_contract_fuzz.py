"""Contract fuzzing with schemathesis against ``/openapi.json``: no 5xx, every answer documented.

Each generated request is sent to the app (WSGI, no network) with a valid token where the route
needs one (a fresh sandbox-signed CDS JWT per call, or an access token with ``system/*.read``),
so the fuzzing reaches the code behind authentication; every fifth call keeps the random
``Authorization`` header schemathesis generated, so the 401 shapes are checked too. Every check
schemathesis has is applied: no server error, the status code, content type, headers and body
schema are the documented ones, and a route that needs a token refuses a call without one.

CI runs ``FHIR_TRIAL_FUZZ_EXAMPLES`` (default 10) examples per operation; ``benchmarks/fuzz_api.py``
runs 2,000 (``FHIR_TRIAL_FUZZ_PATHS``, a regular expression, limits the run to the paths it matches).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
import warnings
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from cds_helpers import sandbox_issuer, sandbox_token, write_issuers  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import ALL_CHECKS  # noqa: E402

from fhir_trial.app import create_app  # noqa: E402
from fhir_trial.config import Settings  # noqa: E402

schemathesis.experimental.OPEN_API_3_1.enable()

EXAMPLES = int(os.environ.get("FHIR_TRIAL_FUZZ_EXAMPLES", "10"))
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
ROOT = "http://localhost"
_calls: dict[str, itertools.count[int]] = {}
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def fuzz_schema(shared_dir: Path) -> object:
    folder = Path(tempfile.mkdtemp(prefix="fhir-trial-fuzz-"))
    issuer = sandbox_issuer(shared_dir, fhir_servers=[])  # no outbound fetches while fuzzing
    issuers = write_issuers(folder / "issuers.json", [issuer])
    app = create_app(
        Settings(
            database_path=str(folder / "db.sqlite3"),
            cds_trusted_issuers_file=issuers,
            operations_trusted_issuers_file=issuers,
            secret_key="fuzz",
            cds_deadline_s=2.0,
        )
    )
    return schemathesis.from_wsgi("/openapi.json", app)


with warnings.catch_warnings():  # schemathesis 3.39 warns about arguments it passes itself
    warnings.simplefilter("ignore", DeprecationWarning)
    schema = schemathesis.from_pytest_fixture("fuzz_schema")
    if os.environ.get("FHIR_TRIAL_FUZZ_PATHS"):  # benchmarks/fuzz_api.py --only: some routes
        schema = schema.include(path_regex=os.environ["FHIR_TRIAL_FUZZ_PATHS"])


def _token_for(path: str) -> str | None:
    if path.startswith("/cds-services/"):
        return sandbox_token(SHARED, aud=f"{ROOT}{path}")
    if path.endswith("$apply") or path.endswith("$screen-population"):
        return sandbox_token(SHARED, aud=f"{ROOT}/fhir", claims={"scope": "system/*.read"})
    return None


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="FHIR_TRIAL_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases each run
    suppress_health_check=list(HealthCheck),
)
def test_the_app_keeps_to_its_openapi_document(case: object) -> None:
    token = _token_for(case.formatted_path)  # type: ignore[attr-defined]
    calls = _calls.setdefault(case.operation.verbose_name, itertools.count())  # type: ignore[attr-defined]
    if token and next(calls) % 5 != 4:  # the first (the documented example) has a valid token
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}  # type: ignore[attr-defined]
    started = time.monotonic()
    case.call_and_validate(checks=ALL_CHECKS)  # type: ignore[attr-defined]
    if os.environ.get("FHIR_TRIAL_FUZZ_TIMES"):
        key = f"{case.method} {case.path}"  # type: ignore[attr-defined]
        TIMES[key] = TIMES.get(key, 0.0) + time.monotonic() - started
        print(f"{key}: {TIMES[key]:.2f}s")
