"""examples/cds_hooks_call.py against ``fhir-trial serve`` on 127.0.0.1, as the README shows it.

The JWT is signed with the CDS Hooks sandbox's published test key (a public test key, trusted only
here); the service trusts it through a trusted-issuers file that holds the sandbox's public JWKS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cds_helpers import SERVICE_PATH, free_port, patient, sle_condition
from test_cds_serve import _serve, _wait_until_up

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "cds_hooks_call.py"


def test_example_script_gets_a_card_from_serve(tmp_path: Path, shared_dir: Path) -> None:
    sandbox = shared_dir / "fixtures" / "cds-hooks" / "sandbox"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issuers = tmp_path / "trusted-issuers.json"
    issuers.write_text(
        json.dumps(
            {
                "issuers": [
                    {
                        "iss": "https://sandbox.cds-hooks.org",
                        "jwks": json.loads((sandbox / "jwks.json").read_text()),
                        "audience": [base],
                    }
                ]
            }
        )
    )
    bundle = tmp_path / "patient.json"
    bundle.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": patient()}, {"resource": sle_condition()}],
            }
        )
    )
    env = dict(os.environ, FHIR_TRIAL_DATABASE_PATH=str(tmp_path / "db.sqlite3"))
    env.pop("FHIR_TRIAL_CDS_DEVELOPMENT_MODE", None)
    env.pop("FHIR_TRIAL_PUBLIC_BASE_URL", None)
    process = _serve(port, env, "--trusted-issuers", str(issuers))
    try:
        _wait_until_up(base)
        call = [
            sys.executable,
            str(SCRIPT),
            "--service",
            f"{base}{SERVICE_PATH}",
            "--key",
            str(sandbox / "jwk-keypair.json"),
        ]
        answered = subprocess.run(
            [*call, "--bundle", str(bundle), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert answered.returncode == 0, answered.stderr
        (card,) = json.loads(answered.stdout)["cards"]
        assert "Possible candidate" in card["summary"]
        assert "**Criteria:**" in card["detail"]
        # The printed form, as in the README.
        printed = subprocess.run(
            [*call, "--bundle", str(bundle)], capture_output=True, text=True, timeout=60
        )
        assert printed.returncode == 0 and "1 card(s)" in printed.stdout
        # A token from an issuer the file does not list is refused.
        wrong = subprocess.run(
            [*call, "--bundle", str(bundle), "--issuer", "https://not-trusted.example"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=20)
