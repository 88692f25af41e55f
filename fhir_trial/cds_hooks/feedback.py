"""CDS Hooks feedback: every outcome is stored durably in SQLite before the client gets its answer.

Feedback is idempotent: the same item sent twice (clients retry, and the spec allows repeated
feedback for one card) is stored once, keyed by a hash of the service id and the item's canonical
JSON. Distinct outcomes for the same card (accepted later, overridden again with a new comment) are
distinct items and are all kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_trial.cds_hooks.store import Database

__all__ = ["FeedbackStore", "StoreResult"]


@dataclass(frozen=True)
class StoreResult:
    """How many items were new and how many had been stored before."""

    stored: int
    duplicates: int


class FeedbackStore:
    """Writes feedback items to the ``cds_feedback`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def store(
        self, service_id: str, items: Sequence[Mapping[str, Any]], client: str | None
    ) -> StoreResult:
        """Store all items in one transaction (all or nothing), committed before returning."""
        received = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        rows = [self._row(service_id, item, client, received) for item in items]
        conn = self.database.connection()
        stored = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO cds_feedback (dedup_key, service_id, card, outcome, "
                    "outcome_timestamp, accepted_suggestions, override_code, override_system, "
                    "override_display, user_comment, client, received_at, item_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                stored += cursor.rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return StoreResult(stored=stored, duplicates=len(rows) - stored)

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
        service_id: str, item: Mapping[str, Any], client: str | None, received: str
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
        )
