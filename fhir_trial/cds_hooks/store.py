"""SQLite access shared by the CDS Hooks parts: JWT ids seen, feedback, worksheet reports, and the
cards issued (so that feedback on a card this service never issued is marked as such).

One connection per thread and per process (gunicorn workers fork; connections are opened lazily,
after the fork). WAL mode lets several workers write. ``durable=True`` (the default) uses
``synchronous=FULL``: a committed row survives a power cut before the HTTP answer is sent
(feedback). The JWT replay list and the worksheet reports use ``durable=False`` (``NORMAL``): losing
the last few ids in a power cut only re-opens a replay window that their expiry closes within
minutes, and a lost worksheet report is a short-lived copy of what its card already says.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["Database", "ExpiryPurge"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cds_jwt_seen (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (iss, jti)
);
CREATE INDEX IF NOT EXISTS cds_jwt_seen_expires ON cds_jwt_seen (expires);
CREATE TABLE IF NOT EXISTS cds_feedback (
    id INTEGER PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    service_id TEXT NOT NULL,
    card TEXT NOT NULL,
    outcome TEXT NOT NULL,
    outcome_timestamp TEXT NOT NULL,
    accepted_suggestions TEXT,
    override_code TEXT,
    override_system TEXT,
    override_display TEXT,
    user_comment TEXT,
    client TEXT,
    received_at TEXT NOT NULL,
    item_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cds_feedback_card ON cds_feedback (card);
CREATE TABLE IF NOT EXISTS cds_worksheet (
    report_id TEXT PRIMARY KEY,
    card TEXT,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    report_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cds_worksheet_expires ON cds_worksheet (expires);
CREATE TABLE IF NOT EXISTS cds_card_issued (
    card TEXT NOT NULL,
    client TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (card, client)
);
CREATE INDEX IF NOT EXISTS cds_card_issued_expires ON cds_card_issued (expires);
"""
# Columns added after a table was first shipped: (table, column, declaration).
_ADDED_COLUMNS = (("cds_feedback", "card_issued", "INTEGER"),)


class Database:
    """Lazily opened, per-thread SQLite connections to one file, with the CDS tables created."""

    def __init__(self, path: str, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._local = threading.local()
        self._schema_done = False
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; use ``with conn:`` for a transaction)."""
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != pid:
            conn = self._open()
            self._local.conn = conn
            self._local.pid = pid
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        with self._lock:
            if not self._schema_done:
                conn.executescript(_SCHEMA)
                _add_columns(conn)
                self._schema_done = True
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _add_columns(conn: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to date (new columns are nullable)."""
    for table, column, declaration in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            except sqlite3.OperationalError as exc:  # another worker added it first
                if "duplicate column" not in str(exc):
                    raise


class ExpiryPurge:
    """Deletes a table's expired rows (``expires`` before now) on every ``every``-th write.

    Not on each write: readers refuse expired rows anyway, so the purge only keeps the table small.
    """

    def __init__(self, table: str, every: int) -> None:
        self._sql = f"DELETE FROM {table} WHERE expires < ?"  # table: a constant of this package
        self._every = every
        self._writes = 0

    def on_write(self, conn: sqlite3.Connection, now: float) -> None:
        """Count one write; purge on the first and then every ``every``-th."""
        self._writes += 1
        if self._writes % self._every == 1:
            conn.execute(self._sql, (now,))
