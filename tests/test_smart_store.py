"""The SMART app's decisions are committed durably before the page confirms them (issue 19).

The decision page says "stored on the screening service and not lost if this page closes": the
row must be committed, with ``synchronous=FULL`` like CDS feedback, when ``record_decision``
returns (and a write's outcome when ``finish_write`` returns). Another connection, as after a
restart, sees them at once. benchmarks/bench_durability.py checks the same under SIGKILL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fhir_trial.cds_hooks.store import Database
from fhir_trial.config import Settings
from fhir_trial.smart.blueprint import SmartApp
from fhir_trial.smart.store import SmartStore

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def _record(store: SmartStore, form_key: str = "form-1") -> str:
    return store.record_decision(
        form_key=form_key,
        fhir_base="https://ehr.example/fhir",
        patient="Patient/p1",
        decision="refer",
        comment="refer to Dr Wang",
        answers=[{"criterion": "inc-consent", "status": "met"}],
        author="Practitioner/dr-li",
        decided_at="2026-12-07T10:00:00+00:00",
        verdict="potentially-eligible",
        report={"report": {}, "patient": {}},
    )


def _stored(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as other:  # a separate connection: what a restart would read
        return dict(other.execute("SELECT id, write_state FROM smart_decision").fetchall())


def test_a_decision_is_committed_with_synchronous_full_before_it_is_acknowledged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    store = SmartStore(Database(str(path)))
    decision_id = _record(store)
    conn = store.database.connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == FULL
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not conn.in_transaction  # nothing left to commit after the call
    assert _stored(path) == {decision_id: "recorded"}
    # The write-back's state is committed as it moves, so a restart resumes where it stood.
    assert store.claim_write(decision_id)
    assert not conn.in_transaction and _stored(path) == {decision_id: "writing"}
    store.finish_write(decision_id, "written", {"steps": []}, None)
    assert not conn.in_transaction and _stored(path) == {decision_id: "written"}
    # The same form sent again is the same decision, not a second one.
    assert _record(store) == decision_id and len(_stored(path)) == 1


def test_the_worksheet_app_keeps_its_decisions_on_a_durable_connection(tmp_path: Path) -> None:
    app = SmartApp(Settings(database_path=str(tmp_path / "db.sqlite3")))
    assert app.store.database.durable  # synchronous=FULL, as for CDS feedback


def test_one_write_back_at_a_time_per_patient_and_ehr(tmp_path: Path) -> None:
    # Two decisions for one patient written back at once would each find no ResearchSubject and
    # create one each: the second waits until the first is no longer being written.
    path = tmp_path / "db.sqlite3"
    store = SmartStore(Database(str(path)))
    first, second = _record(store, "form-1"), _record(store, "form-2")
    other_patient = store.record_decision(
        form_key="form-3",
        fhir_base="https://ehr.example/fhir",
        patient="Patient/p2",
        decision="refer",
        comment="",
        answers=[],
        author=None,
        decided_at="2026-12-07T10:00:00+00:00",
        verdict="potentially-eligible",
        report={},
    )
    assert store.claim_write(first)
    assert not store.claim_write(second)
    assert store.claim_write(other_patient)  # another patient is not held up
    store.finish_write(first, "failed", None, "HTTP 500")
    assert store.claim_write(second)
    store.finish_write(second, "written", {"steps": []}, None)
    # A write stuck in "writing" (its worker died) holds nobody up once it is stale.
    assert store.claim_write(first)
    with sqlite3.connect(path) as other:
        other.execute("UPDATE smart_decision SET updated = 0 WHERE id = ?", (first,))
    third = _record(store, "form-4")
    assert store.claim_write(third)
    assert _stored(path)[first] == "writing" and _stored(path)[third] == "writing"
