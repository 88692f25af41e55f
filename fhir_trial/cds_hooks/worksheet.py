"""The screening worksheet link: a read-only HTML page of the patient's report.

The hook stores the report (SQLite, kept ``Settings.worksheet_token_ttl_s``) and puts a short-lived
signed token in the card's link URL. The page is served only for a valid, unexpired token: the
token is signed with the app secret (itsdangerous), names the stored report and the patient, and
is all a browser needs, so the EHR can open the link without further login. Expired reports are
purged as new ones are stored. The page sends ``Cache-Control: no-store`` and
``Referrer-Policy: no-referrer`` so the token does not leak through caches or referrers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from itsdangerous import BadData, URLSafeTimedSerializer
from markupsafe import Markup

from fhir_trial.canonical import REGISTRY_URL, STUDY_ID
from fhir_trial.cds_hooks.store import Database

__all__ = ["WorksheetStore", "render_worksheet"]

_SALT = "fhir-trial.cds-worksheet"


class WorksheetStore:
    """Stores reports for the worksheet page and signs / checks the link tokens."""

    def __init__(self, database: Database, secret_key: str, ttl_s: int) -> None:
        self.database = database
        self.ttl_s = ttl_s
        self._signer = URLSafeTimedSerializer(secret_key, salt=_SALT)

    def save(self, report: Mapping[str, Any], card_uuid: str | None) -> tuple[str, str]:
        """Store a report; return ``(report_id, token)``."""
        report_id = str(uuid.uuid4())
        now = time.time()
        conn = self.database.connection()
        conn.execute("DELETE FROM cds_worksheet WHERE expires < ?", (now,))
        conn.execute(
            "INSERT INTO cds_worksheet (report_id, card, created, expires, report_json) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                report_id,
                card_uuid,
                now,
                now + self.ttl_s,
                json.dumps(report, separators=(",", ":")),
            ),
        )
        token = self._signer.dumps({"r": report_id, "p": str(report.get("patient", ""))})
        return report_id, token

    def load(self, token: str) -> dict[str, Any] | None:
        """The report a valid token names, or None (bad signature, expired, purged, mismatched)."""
        try:
            payload = self._signer.loads(token, max_age=self.ttl_s)
        except BadData:
            return None
        if not isinstance(payload, Mapping) or not isinstance(payload.get("r"), str):
            return None
        row = (
            self.database.connection()
            .execute(
                "SELECT report_json, expires FROM cds_worksheet WHERE report_id = ?",
                (payload["r"],),
            )
            .fetchone()
        )
        if row is None or row[1] < time.time():
            return None
        report: dict[str, Any] = json.loads(row[0])
        if str(report.get("patient", "")) != payload.get("p"):
            return None
        return report


_STATUS_LABEL = {
    "met": "met",
    "not-met": "not met",
    "unknown": "unknown (data missing)",
    "needs-review": "needs review",
    "not-applicable": "not applicable",
}


def render_worksheet(report: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    """The read-only HTML page of a report (every value escaped)."""
    rows: list[str] = []
    for item in report.get("criteria", []):
        cid = str(item.get("id", ""))
        evidence = ", ".join(str(e) for e in item.get("evidence", []))
        missing = "; ".join(str(m) for m in item.get("missing", []))
        part = " (part of inc-autoantibody)" if item.get("partOf") else ""
        rows.append(
            Markup(
                "<tr class='{cls}'><td>{ref}</td><td>{title}<br><small>{cid}{part}</small></td>"
                "<td>{status}</td><td>{reason}</td><td>{evidence}</td><td>{missing}</td></tr>"
            ).format(
                cls=str(item.get("status", "")),
                ref=item.get("ref", ""),
                title=titles.get(cid, cid),
                cid=cid,
                part=part,
                status=_STATUS_LABEL.get(str(item.get("status")), str(item.get("status"))),
                reason=item.get("reason", ""),
                evidence=evidence,
                missing=missing,
            )
        )
    warnings = "".join(
        str(Markup("<li>{}</li>").format(w)) for w in report.get("warnings", []) or []
    )
    page = Markup(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>{study} screening worksheet</title><style>"
        "body{{font-family:system-ui,sans-serif;margin:1.5rem;max-width:72rem}}"
        "table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:.35rem;"
        "vertical-align:top;text-align:left}}tr.met td:nth-child(4){{color:#135}}"
        "tr.not-met{{background:#fdecec}}tr.unknown{{background:#fff8e1}}"
        "tr.needs-review{{background:#eef4ff}}small{{color:#555}}</style></head><body>"
        "<h1>{study} screening worksheet (read-only)</h1>"
        "<p>Patient <b>{patient}</b> &middot; screened as of <b>{as_of}</b> &middot; automated "
        "verdict: <b>{verdict}</b>. A study coordinator confirms eligibility; this page only shows "
        "what the record says. Study record: <a href='{registry}' rel='noreferrer'>{registry}</a></p>"
        "{warnings}<table><thead><tr><th>Protocol</th><th>Criterion</th><th>Status</th>"
        "<th>Reason</th><th>Evidence</th><th>Would decide it</th></tr></thead><tbody>{rows}"
        "</tbody></table></body></html>"
    ).format(
        study=report.get("study", STUDY_ID),
        patient=report.get("patient", ""),
        as_of=report.get("asOf", ""),
        verdict=report.get("verdict", ""),
        registry=REGISTRY_URL,
        warnings=Markup("<h2>Data problems</h2><ul>{}</ul>").format(Markup(warnings))
        if warnings
        else "",
        rows=Markup("".join(str(r) for r in rows)),
    )
    return str(page)
