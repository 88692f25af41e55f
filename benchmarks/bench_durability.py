"""Benchmark: does what the service acknowledged survive SIGKILL of the whole server?

Run: ``.venv/bin/python benchmarks/bench_durability.py [--rounds 10] [--per-round 20]
[--decisions 3]``

Starts ``fhir-trial serve`` (gunicorn, two workers) on a free local port with the public CDS
Hooks sandbox as trusted issuer (its published key pair in ../shared) and a fake SMART EHR
(``tests/fake_smart_ehr.py``: authorization server and FHIR server on 127.0.0.1, four patients)
registered for the worksheet app. Four coordinators each launch the worksheet for their patient
through the real routes a browser uses (``/smart/launch``, the EHR's authorize redirect,
``/smart/callback``, the session cookie).

Each round, at the same time from 8 threads:

- a hook call gets a card, then ``--per-round`` feedback calls for it are sent, each with its own
  comment; acknowledged = HTTP 200;
- every coordinator records ``--decisions`` decisions (``GET /smart/worksheet``, then ``POST`` the
  form with the answers, the decision and a unique comment); acknowledged = the 303 to the
  recorded decision. Every other one is then confirmed (``POST /smart/decisions/<id>/write``: the
  ResearchSubject and the QuestionnaireResponse written to the EHR); acknowledged = the decision
  page saying "Written to the EHR".

The moment the last of these is acknowledged the master and every worker get SIGKILL, with no
chance to flush anything, and the server is started again on the same database. After the last
round the script counts, in the database, the acknowledged feedback items, the acknowledged
decisions (same decision and comment) and the acknowledged write-backs (still ``written``, and
their QuestionnaireResponse in the EHR once). Then every acknowledged decision not yet written is
confirmed through its coordinator's session (which must have survived too): the write-back must
resume and write each one once (no duplicate QuestionnaireResponse in the EHR).

Target: all of it (feedback and decisions are committed with ``synchronous=FULL`` before the
answer is sent; a write's outcome is committed before its page says so). SIGKILL tests the process
side only: the data has reached the operating system, not necessarily the disk. A power cut is
what ``synchronous=FULL`` is for, and is not something a script can do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from fake_smart_ehr import CLIENT_ID, FakeSmartEhr  # noqa: E402
from smart_helpers import load_patient  # noqa: E402

SHARED = ROOT.parent / "shared"
PATIENTS = tuple(f"pat-durable-{n}" for n in range(4))
DECISIONS = ("refer", "not-eligible", "needs-data")
SESSION_COOKIE = "fhir_trial_smart"
LAUNCH_COOKIE = "fhir_trial_smart_launch"


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


# ------------------------------------------------------------------------------ CDS feedback
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


def _card(base: str) -> str:
    hook = requests.post(
        f"{base}{SERVICE_PATH}",
        json=hook_request(full_prefetch()),
        headers=bearer(sandbox_token(SHARED, aud=f"{base}{SERVICE_PATH}")),
        timeout=10,
    )
    card: str = hook.json()["cards"][0]["uuid"]
    return card


# ------------------------------------------------------------------------------ SMART worksheet
def _set_cookie(response: requests.Response, name: str) -> str:
    """A cookie's value from Set-Cookie (sent back by hand: it is Secure, and this is http)."""
    for value in response.raw.headers.getlist("Set-Cookie"):
        if value.startswith(f"{name}="):
            return str(value.split(";", 1)[0].split("=", 1)[1])
    raise SystemExit(f"no {name} cookie in the answer (HTTP {response.status_code})")


@dataclass
class Coordinator:
    """One browser with a launched worksheet session for one patient."""

    base: str
    patient: str
    cookie: str
    csrf: str = ""
    # decision id -> (decision, comment), for each decision whose recording was acknowledged
    acknowledged: dict[str, tuple[str, str]] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)

    def get(self, path: str) -> requests.Response:
        return requests.get(
            f"{self.base}{path}",
            headers={"Cookie": f"{SESSION_COOKIE}={self.cookie}"},
            allow_redirects=False,
            timeout=30,
        )

    def post(self, path: str, form: dict[str, str]) -> requests.Response:
        return requests.post(
            f"{self.base}{path}",
            data=form,
            headers={"Cookie": f"{SESSION_COOKIE}={self.cookie}"},
            allow_redirects=False,
            timeout=30,
        )

    def decide(self, count: int, tag: str) -> None:
        """Record ``count`` decisions; confirm (write back) every other one."""
        for n in range(count):
            page = self.get("/smart/worksheet")
            if page.status_code != 200:
                continue
            html = page.text
            self.csrf = _field(html, "csrf")
            decision = DECISIONS[n % len(DECISIONS)]
            comment = f"durability {tag} {uuid.uuid4()}"
            form = {
                "csrf": self.csrf,
                "form_key": _field(html, "form_key"),
                "decision": decision,
                "decision_comment": comment,
                **_answers(html),
            }
            try:
                recorded = self.post("/smart/worksheet", form)
            except requests.RequestException:
                continue
            location = recorded.headers.get("Location", "")
            if recorded.status_code != 303 or "/smart/decisions/" not in location:
                continue
            decision_id = location.rsplit("/", 1)[1]
            self.acknowledged[decision_id] = (decision, comment)  # the page says: stored
            if n % 2 == 0 and self.write(decision_id):
                self.written.add(decision_id)

    def write(self, decision_id: str) -> bool:
        """Confirm the write-back; True when the decision page then says it was written."""
        try:
            sent = self.post(f"/smart/decisions/{decision_id}/write", {"csrf": self.csrf})
            if sent.status_code != 303:
                return False
            shown = self.get(f"/smart/decisions/{decision_id}")
        except requests.RequestException:
            return False
        return shown.status_code == 200 and 'id="written"' in shown.text


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    if not found:
        raise SystemExit(f"the worksheet page has no {name} field")
    return found.group(1)


def _answers(html: str) -> dict[str, str]:
    """Every open item answered: inclusions met, exclusions not met."""
    ids = sorted(set(re.findall(r'name="answer-([a-z0-9-]+)"', html)))
    return {f"answer-{cid}": "met" if cid.startswith("inc-") else "not-met" for cid in ids}


def _launch(base: str, ehr: FakeSmartEhr, patient: str) -> Coordinator:
    """An EHR launch through the browser's routes; the session cookie it ends with."""
    ehr.patient_id = patient  # the patient the EHR's token answer names
    started = requests.get(
        f"{base}/smart/launch",
        params={"iss": ehr.base_url, "launch": f"launch-{patient}"},
        allow_redirects=False,
        timeout=30,
    )
    binding = _set_cookie(started, LAUNCH_COOKIE)
    authorized = requests.get(started.headers["Location"], allow_redirects=False, timeout=30)
    done = requests.get(
        authorized.headers["Location"],
        headers={"Cookie": f"{LAUNCH_COOKIE}={binding}"},
        allow_redirects=False,
        timeout=30,
    )
    if done.status_code != 303:
        raise SystemExit(f"the SMART launch failed (HTTP {done.status_code})")
    return Coordinator(base, patient, _set_cookie(done, SESSION_COOKIE))


# ------------------------------------------------------------------------------ counting
def _rows(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as conn:
        return conn.execute(sql).fetchall()


def _qr_count(ehr: FakeSmartEhr) -> Counter[str]:
    """QuestionnaireResponses in the EHR per decision id (their identifier: urn:uuid:<id>)."""
    counts: Counter[str] = Counter()
    for resource in ehr.resources("QuestionnaireResponse"):
        value = str((resource.get("identifier") or {}).get("value", ""))
        counts[value.removeprefix("urn:uuid:")] += 1
    return counts


def _figures(
    database: Path,
    ehr: FakeSmartEhr,
    feedback: set[str],
    coordinators: list[Coordinator],
) -> dict[str, Any]:
    """Count what survived (the server was restarted after the last kill), then resume writes."""
    stored_feedback = {r[0] for r in _rows(database, "SELECT user_comment FROM cds_feedback")}
    stored = {
        r[0]: (r[1], r[2], r[3])
        for r in _rows(database, "SELECT id, decision, comment, write_state FROM smart_decision")
    }
    decided = {i: d for c in coordinators for i, d in c.acknowledged.items()}
    written = {i for c in coordinators for i in c.written}
    in_ehr = _qr_count(ehr)
    decisions_kept = {i for i, d in decided.items() if i in stored and stored[i][:2] == d}
    writes_kept = {i for i in written if stored.get(i, ("", "", ""))[2] == "written"}
    writes_in_ehr = {i for i in written if in_ehr[i] == 1}
    # Resume: confirm every acknowledged decision the kill left unwritten, through its session.
    to_resume = [(c, i) for c in coordinators for i in c.acknowledged if i not in c.written]
    resumed = {i for c, i in to_resume if c.write(i)}
    in_ehr = _qr_count(ehr)
    once = {i for i in decided if in_ehr[i] == 1}
    return {
        "feedback": (len(feedback & stored_feedback), len(feedback)),
        "decisions": (len(decisions_kept), len(decided)),
        "writes": (len(writes_kept & writes_in_ehr), len(written)),
        "resumed": (len(resumed), len(to_resume)),
        "in_ehr_once": (len(once), len(decided)),
        "duplicates_in_ehr": sum(n - 1 for n in in_ehr.values() if n > 1),
    }


def main() -> int:
    """Run the rounds; print acknowledged vs survived, and PASS or FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=20, help="feedback items per round")
    parser.add_argument("--decisions", type=int, default=3, help="per coordinator per round")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fhir-trial-durability-"))
    database = folder / "db.sqlite3"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with FakeSmartEhr(patient_id=PATIENTS[0], redirect_uris=(f"{base}/smart/callback",)) as ehr:
        for patient in PATIENTS:
            load_patient(ehr, patient)
        registration = {
            "client_id": CLIENT_ID,
            "redirect_uri": f"{base}/smart/callback",
            "frame_ancestors": [ehr.origin],
        }
        issuers = [sandbox_issuer(SHARED, fhir_servers=[ehr.base_url], smart=registration)]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            FHIR_TRIAL_DATABASE_PATH=str(database),
            FHIR_TRIAL_CDS_TRUSTED_ISSUERS_FILE=write_issuers(folder / "issuers.json", issuers),
            FHIR_TRIAL_SECRET_KEY="durability",
        )
        feedback: set[str] = set()
        kill_gaps: list[float] = []
        process = _start(port, env)
        try:
            coordinators = [_launch(base, ehr, patient) for patient in PATIENTS]
            for number in range(args.rounds):
                card = _card(base)
                comments = [f"durability {uuid.uuid4()}" for _ in range(args.per_round)]
                with ThreadPoolExecutor(8) as pool:
                    acks = [pool.submit(_feedback, base, card, c) for c in comments]
                    jobs = [
                        pool.submit(c.decide, args.decisions, str(number)) for c in coordinators
                    ]
                    for job in jobs:
                        job.result()
                    results = [ack.result() for ack in acks]
                acked_at = time.monotonic()
                os.killpg(process.pid, signal.SIGKILL)  # master and workers, at once
                kill_gaps.append(time.monotonic() - acked_at)
                process.wait(timeout=10)
                feedback |= {c for c, ok in zip(comments, results, strict=True) if ok}
                process = _start(port, env)
            figures = _figures(database, ehr, feedback, coordinators)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
    survived = sum(figures[k][0] for k in ("feedback", "decisions", "writes"))
    acknowledged = sum(figures[k][1] for k in ("feedback", "decisions", "writes"))
    ok = (
        acknowledged > 0
        and survived == acknowledged
        and figures["resumed"][0] == figures["resumed"][1]
        and figures["in_ehr_once"][0] == figures["in_ehr_once"][1]
        and figures["duplicates_in_ehr"] == 0
    )
    detail = {
        "rounds": args.rounds,
        "feedback_sent": args.rounds * args.per_round,
        "decisions_sent": args.rounds * args.decisions * len(PATIENTS),
        **{k: f"{v[0]}/{v[1]}" if isinstance(v, tuple) else v for k, v in figures.items()},
        "max_ms_from_last_ack_to_sigkill": round(max(kill_gaps) * 1000, 2),
    }
    print(json.dumps(detail))
    print("feedback survived {}/{}".format(*figures["feedback"]))
    print("decisions survived {}/{}".format(*figures["decisions"]))
    print("write-backs survived {}/{} (written before the kill, still written)".format(
        *figures["writes"]))  # fmt: skip
    print("write-backs resumed {}/{} (recorded before the kill, written after it)".format(
        *figures["resumed"]))  # fmt: skip
    print(
        "in the EHR once {}/{}, duplicates {}".format(
            *figures["in_ehr_once"], figures["duplicates_in_ehr"]
        )
    )
    print(f"durability: {survived}/{acknowledged} (target: all): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
