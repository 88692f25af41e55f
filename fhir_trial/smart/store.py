"""What the SMART app keeps in SQLite: launches in flight, sessions, and decisions.

- ``smart_launch``: one row per authorization request, keyed by ``state`` (single use, 10 minutes):
  the FHIR base, the PKCE verifier, the nonce, and the hash of the browser-binding cookie, so a
  callback is accepted only in the browser that started the launch.
- ``smart_session``: keyed by the SHA-256 of the session cookie (the cookie value itself is never
  stored): FHIR base, patient, ``fhirUser``, the access token and its expiry, the CSRF token.
  Tokens live here only: never in a URL, a log, a page or the browser's storage.
- ``smart_decision``: the coordinator's answers and decision, committed (``synchronous=FULL``)
  before the page confirms; ``form_key`` (unique) makes a second submit of the same form the same
  decision; ``write_state`` (recorded, writing, written, failed) makes the write to the EHR happen
  once, kept for retry when it fails.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_trial.cds_hooks.store import Database

__all__ = ["Decision", "Launch", "Session", "SmartStore"]

LAUNCH_TTL_S = 600.0
SESSION_TTL_S = 8 * 3600.0
# A write left "writing" this long (the worker died mid-write) may be claimed again.
STALE_WRITE_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS smart_launch (
    state TEXT PRIMARY KEY,
    fhir_base TEXT NOT NULL,
    verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    binding_hash TEXT NOT NULL,
    launch TEXT,
    authorize_config TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS smart_session (
    id_hash TEXT PRIMARY KEY,
    fhir_base TEXT NOT NULL,
    patient TEXT NOT NULL,
    fhir_user TEXT,
    access_token TEXT NOT NULL,
    token_expires REAL NOT NULL,
    scope TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS smart_decision (
    id TEXT PRIMARY KEY,
    form_key TEXT NOT NULL UNIQUE,
    fhir_base TEXT NOT NULL,
    patient TEXT NOT NULL,
    decision TEXT NOT NULL,
    comment TEXT NOT NULL,
    answers_json TEXT NOT NULL,
    author TEXT,
    decided_at TEXT NOT NULL,
    verdict TEXT NOT NULL,
    report_json TEXT NOT NULL,
    write_state TEXT NOT NULL,
    write_result_json TEXT,
    write_error TEXT,
    write_attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS smart_decision_patient ON smart_decision (fhir_base, patient);
"""


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Launch:
    """An authorization request in flight."""

    state: str
    fhir_base: str
    verifier: str
    nonce: str
    binding_hash: str
    launch: str | None
    authorize_config: Mapping[str, Any]


@dataclass(frozen=True)
class Session:
    """A completed launch (server-side; the browser holds only the opaque id)."""

    fhir_base: str
    patient: str
    fhir_user: str | None
    access_token: str
    token_expires: float
    scope: str
    csrf: str

    @property
    def token_expired(self) -> bool:
        """Whether the access token has run out (a new launch is needed to write)."""
        return self.token_expires <= time.time()


@dataclass(frozen=True)
class Decision:
    """A recorded decision and the state of its write to the EHR."""

    id: str
    fhir_base: str
    patient: str
    decision: str
    comment: str
    answers: list[dict[str, Any]]
    author: str | None
    decided_at: str
    verdict: str
    report: dict[str, Any]
    write_state: str
    write_result: dict[str, Any] | None
    write_error: str | None
    write_attempts: int


class SmartStore:
    """The SMART app's tables on the service's SQLite file."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._ready = False

    def _conn(self) -> sqlite3.Connection:
        conn = self.database.connection()
        if not self._ready:
            with self._lock:
                conn.executescript(_SCHEMA)
                self._ready = True
        return conn

    # --- launches --------------------------------------------------------------------------------
    def start_launch(
        self, fhir_base: str, launch: str | None, authorize_config: Mapping[str, Any], binding: str
    ) -> Launch:
        """A new launch with fresh state, PKCE verifier and nonce (``binding``: the cookie value)."""
        from fhir_trial.smart.oauth import new_verifier

        row = Launch(
            state=secrets.token_urlsafe(24),
            fhir_base=fhir_base,
            verifier=new_verifier(),
            nonce=secrets.token_urlsafe(16),
            binding_hash=_hash(binding),
            launch=launch,
            authorize_config=dict(authorize_config),
        )
        conn = self._conn()
        now = time.time()
        conn.execute("DELETE FROM smart_launch WHERE expires < ?", (now,))
        conn.execute(
            "INSERT INTO smart_launch VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.state,
                fhir_base,
                row.verifier,
                row.nonce,
                row.binding_hash,
                launch,
                json.dumps(row.authorize_config),
                now + LAUNCH_TTL_S,
            ),
        )
        return row

    def take_launch(self, state: str, binding: str | None) -> Launch | None:
        """The launch ``state`` names, once (deleted on read); None if unknown, expired or the
        browser is not the one that started it."""
        conn = self._conn()
        with conn:
            row = conn.execute(
                "SELECT state, fhir_base, verifier, nonce, binding_hash, launch, authorize_config, "
                "expires FROM smart_launch WHERE state = ?",
                (state,),
            ).fetchone()
            conn.execute("DELETE FROM smart_launch WHERE state = ?", (state,))
        if row is None or row[7] < time.time():
            return None
        if binding is None or not secrets.compare_digest(row[4], _hash(binding)):
            return None
        return Launch(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))

    # --- sessions --------------------------------------------------------------------------------
    def create_session(
        self,
        *,
        fhir_base: str,
        patient: str,
        fhir_user: str | None,
        access_token: str,
        token_expires: float,
        scope: str,
    ) -> str:
        """Store a session; return the opaque id for the cookie (only its hash is stored)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        conn = self._conn()
        conn.execute("DELETE FROM smart_session WHERE expires < ?", (now,))
        conn.execute(
            "INSERT INTO smart_session VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _hash(session_id),
                fhir_base,
                patient,
                fhir_user,
                access_token,
                token_expires,
                scope,
                secrets.token_urlsafe(24),
                now + SESSION_TTL_S,
            ),
        )
        return session_id

    def session(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value, or None."""
        if not session_id:
            return None
        row = (
            self._conn()
            .execute(
                "SELECT fhir_base, patient, fhir_user, access_token, token_expires, scope, csrf, "
                "expires FROM smart_session WHERE id_hash = ?",
                (_hash(session_id),),
            )
            .fetchone()
        )
        if row is None or row[7] < time.time():
            return None
        return Session(*row[:7])

    # --- decisions -------------------------------------------------------------------------------
    def record_decision(
        self,
        *,
        form_key: str,
        fhir_base: str,
        patient: str,
        decision: str,
        comment: str,
        answers: list[dict[str, Any]],
        author: str | None,
        decided_at: str,
        verdict: str,
        report: Mapping[str, Any],
    ) -> str:
        """Store a decision (committed before return); a repeated ``form_key`` returns the first."""
        decision_id = str(uuid.uuid4())
        conn = self._conn()
        try:
            conn.execute(
                "INSERT INTO smart_decision (id, form_key, fhir_base, patient, decision, comment, "
                "answers_json, author, decided_at, verdict, report_json, write_state, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'recorded', ?)",
                (
                    decision_id,
                    form_key,
                    fhir_base,
                    patient,
                    decision,
                    comment,
                    json.dumps(answers),
                    author,
                    decided_at,
                    verdict,
                    json.dumps(report),
                    time.time(),
                ),
            )
        except sqlite3.IntegrityError:  # the same form sent twice: the first decision stands
            row = conn.execute(
                "SELECT id FROM smart_decision WHERE form_key = ?", (form_key,)
            ).fetchone()
            return str(row[0])
        return decision_id

    def decision(self, decision_id: str) -> Decision | None:
        """A decision by id, or None."""
        row = (
            self._conn()
            .execute(
                "SELECT id, fhir_base, patient, decision, comment, answers_json, author, "
                "decided_at, verdict, report_json, write_state, write_result_json, write_error, "
                "write_attempts FROM smart_decision WHERE id = ?",
                (decision_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Decision(
            id=row[0],
            fhir_base=row[1],
            patient=row[2],
            decision=row[3],
            comment=row[4],
            answers=json.loads(row[5]),
            author=row[6],
            decided_at=row[7],
            verdict=row[8],
            report=json.loads(row[9]),
            write_state=row[10],
            write_result=json.loads(row[11]) if row[11] else None,
            write_error=row[12],
            write_attempts=int(row[13]),
        )

    def decisions_for(self, fhir_base: str, patient: str) -> list[Decision]:
        """This patient's decisions on this EHR, newest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT id FROM smart_decision WHERE fhir_base = ? AND patient = ? "
                "ORDER BY decided_at DESC, rowid DESC",
                (fhir_base, patient),
            )
            .fetchall()
        )
        found = [self.decision(r[0]) for r in rows]
        return [d for d in found if d is not None]

    def claim_write(self, decision_id: str) -> bool:
        """Move a decision to ``writing`` if it is recorded or failed (or stuck); False otherwise.

        Also False while another decision for the same patient on the same EHR is being written
        (and not stuck): two write-backs at once would each find no ResearchSubject and create
        one each. One statement, so two workers cannot both pass the check.
        """
        now = time.time()
        stale = now - STALE_WRITE_S
        cursor = self._conn().execute(
            "UPDATE smart_decision SET write_state = 'writing', updated = ?, "
            "write_attempts = write_attempts + 1 WHERE id = ? AND (write_state IN "
            "('recorded', 'failed') OR (write_state = 'writing' AND updated < ?)) "
            "AND NOT EXISTS (SELECT 1 FROM smart_decision AS other "
            "WHERE other.fhir_base = smart_decision.fhir_base "
            "AND other.patient = smart_decision.patient AND other.id != smart_decision.id "
            "AND other.write_state = 'writing' AND other.updated >= ?)",
            (now, decision_id, stale, stale),
        )
        return cursor.rowcount == 1

    def finish_write(
        self, decision_id: str, state: str, result: Mapping[str, Any] | None, error: str | None
    ) -> None:
        """Store the outcome of a write (``written``, ``failed``, or back to ``recorded``)."""
        self._conn().execute(
            "UPDATE smart_decision SET write_state = ?, write_result_json = ?, write_error = ?, "
            "updated = ? WHERE id = ?",
            (state, json.dumps(result) if result else None, error, time.time(), decision_id),
        )
