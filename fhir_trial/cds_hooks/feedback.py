"""CDS Hooks feedback: every outcome is stored durably in SQLite before the client gets its answer.

Feedback is idempotent: the same item sent twice (clients retry, and the spec allows repeated
feedback for one card) is stored once, keyed by a hash of the service id and the item's canonical
JSON. Distinct outcomes for the same card (accepted later, overridden again with a new comment) are
distinct items and are all kept.

Feedback is kept even for a card this service has no record of issuing to the caller (the
hook records every card it returns, with the client, for :data:`CARD_RECORD_DAYS` days): such
an item is stored with ``card_issued = 0`` and counted as ``unissued`` in the answer, never
mixed with real outcomes (``card_issued = 1``). Refusing it instead would lose a clinician's
outcome whenever the record of the card was lost or has expired; marking it keeps it out of
every count of real outcomes all the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_trial.cds_hooks.store import Database, ExpiryPurge

__all__ = ["CARD_RECORD_DAYS", "FeedbackStore", "IssuedCards", "StoreResult"]

CARD_RECORD_DAYS = 30


@dataclass(frozen=True)
class StoreResult:
    """How many items were new and how many had been stored before."""

    stored: int
    duplicates: int
    unissued: int = 0  # items (new or not) naming a card never issued to this client


class FeedbackStore:
    """Writes feedback items to the ``cds_feedback`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def store(
        self,
        service_id: str,
        items: Sequence[Mapping[str, Any]],
        client: str | None,
        issued: Collection[str] | None = None,
    ) -> StoreResult:
        """Store all items in one transaction (all or nothing), committed before returning.

        ``issued``: the cards among the items known to have been issued to ``client`` (None: not
        checked, stored as NULL).
        """
        received = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        rows = [self._row(service_id, item, client, received, issued) for item in items]
        conn = self.database.connection()
        stored = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO cds_feedback (dedup_key, service_id, card, outcome, "
                    "outcome_timestamp, accepted_suggestions, override_code, override_system, "
                    "override_display, user_comment, client, received_at, item_json, card_issued) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                stored += cursor.rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        unissued = sum(1 for row in rows if row[-1] == 0)
        return StoreResult(stored=stored, duplicates=len(rows) - stored, unissued=unissued)

    def items_for_card(self, card: str) -> list[dict[str, Any]]:
        """Stored items for one card uuid (oldest first)."""
        conn = self.database.connection()
        rows = conn.execute(
            "SELECT item_json FROM cds_feedback WHERE card = ? ORDER BY id", (card,)
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def count(self) -> int:
        """How many feedback items are stored."""
        row = self.database.connection().execute("SELECT COUNT(*) FROM cds_feedback").fetchone()
        return int(row[0])

    @staticmethod
    def _row(
        service_id: str,
        item: Mapping[str, Any],
        client: str | None,
        received: str,
        issued: Collection[str] | None,
    ) -> tuple[Any, ...]:
        canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        dedup = hashlib.sha256(f"{service_id}\n{canonical}".encode()).hexdigest()
        accepted = item.get("acceptedSuggestions")
        override = item.get("overrideReason") or {}
        reason = override.get("reason") or {}
        return (
            dedup,
            service_id,
            item["card"],
            item["outcome"],
            item["outcomeTimestamp"],
            json.dumps([s.get("id") for s in accepted]) if accepted else None,
            reason.get("code"),
            reason.get("system"),
            reason.get("display"),
            override.get("userComment"),
            client,
            received,
            canonical,
            None if issued is None else int(item["card"] in issued),
        )


class IssuedCards:
    """Which card uuids the hook returned to which client (kept :data:`CARD_RECORD_DAYS` days)."""

    def __init__(self, database: Database, keep_days: float = CARD_RECORD_DAYS) -> None:
        self.database = database
        self.keep_s = keep_days * 86400
        self._purge = ExpiryPurge("cds_card_issued", 500)

    def record(self, cards: Iterable[str], client: str | None) -> None:
        """Remember that these cards were returned to ``client`` (None: development mode)."""
        rows = [(card, client or "", time.time() + self.keep_s) for card in cards]
        if not rows:
            return
        conn = self.database.connection()
        self._purge.on_write(conn, time.time())
        with conn:
            conn.executemany("INSERT OR REPLACE INTO cds_card_issued VALUES (?, ?, ?)", rows)

    def issued_to(self, cards: Iterable[str], client: str | None) -> set[str]:
        """The cards among ``cards`` that were returned to ``client`` and are still on record."""
        wanted = sorted(set(cards))
        found: set[str] = set()
        conn = self.database.connection()
        for start in range(0, len(wanted), 500):  # SQLite bounds the number of parameters
            batch = wanted[start : start + 500]
            marks = ", ".join("?" * len(batch))
            rows = conn.execute(
                f"SELECT card FROM cds_card_issued WHERE client = ? AND expires >= ? "
                f"AND card IN ({marks})",
                (client or "", time.time(), *batch),
            ).fetchall()
            found.update(row[0] for row in rows)
        return found
