"""The screening worksheet link: a read-only HTML page of the patient's report.

The hook stores the report (SQLite, kept ``Settings.worksheet_token_ttl_s``) and puts a short-lived
signed token in the card's link URL. The page is served only for a valid, unexpired token: the
token is signed with the app secret (itsdangerous), names the stored report and the patient, and
is all a browser needs, so the EHR can open the link without further login. Expired reports are
purged as new ones are stored.

The page (Jinja templates in ``templates/``, autoescaped) shows the patient reference, the screening
date, the verdict in words, a deceased patient (or an unreadable vital status) and data problems
at the top, then every criterion grouped Inclusion /
Exclusion with its status in words and symbols (never colour alone), reason, evidence and missing
data. It loads nothing from elsewhere: the one inline stylesheet is allowed by its hash in the
``Content-Security-Policy``, scripts, images, frames and forms are refused. Every answer sends
``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer`` so the token does not leak through
caches or referrers. A bad token gets an HTML page saying the link is invalid or expired
(403, or 410 when it merely expired); a storage failure an HTML 503.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson
from flask import Response
from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from fhir_trial.canonical import REGISTRY_URL, STUDY_ID
from fhir_trial.cds_hooks.store import Database, ExpiryPurge
from fhir_trial.criteria.catalog import BY_ID, CRITERIA

__all__ = [
    "WorksheetLookup",
    "WorksheetStore",
    "content_security_policy",
    "render_link_problem",
    "render_worksheet",
    "worksheet_response",
]

log = logging.getLogger(__name__)

_SALT = "fhir-trial.cds-worksheet"
_TEMPLATES = Path(__file__).parent / "templates"

Problem = Literal["invalid", "expired"]
_INSERT = (
    "INSERT INTO cds_worksheet (report_id, card, created, expires, report_json) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _compact_json(report: Mapping[str, Any]) -> str:
    """The report as compact JSON text (orjson: several times faster than :func:`json.dumps`)."""
    return orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS).decode()


@dataclass(frozen=True)
class WorksheetLookup:
    """What a token opens: the report, or why not (``invalid``: tampered/foreign, ``expired``)."""

    report: dict[str, Any] | None
    problem: Problem | None = None


class WorksheetStore:
    """Stores reports for the worksheet page and signs / checks the link tokens."""

    def __init__(
        self, database: Database, secret_key: str, ttl_s: int, purge_every: int = 100
    ) -> None:
        self.database = database
        self.ttl_s = ttl_s
        self._signer = URLSafeTimedSerializer(secret_key, salt=_SALT)
        self._purge = ExpiryPurge("cds_worksheet", purge_every)

    def save(self, report: Mapping[str, Any], card_uuid: str | None) -> tuple[str, str]:
        """Store a report; return ``(report_id, token)``."""
        report_id = str(uuid.uuid4())
        now = time.time()
        row = (report_id, card_uuid, now, now + self.ttl_s, _compact_json(report))
        conn = self.database.connection()
        self._purge.on_write(conn, now)
        conn.execute(_INSERT, row)
        token = self._signer.dumps({"r": report_id, "p": str(report.get("patient", ""))})
        return report_id, token

    def lookup(self, token: str) -> WorksheetLookup:
        """Open a token: the stored report, or ``invalid`` / ``expired`` (sqlite errors propagate)."""
        try:
            payload = self._signer.loads(token, max_age=self.ttl_s)
        except SignatureExpired:
            return WorksheetLookup(None, "expired")
        except BadData:
            return WorksheetLookup(None, "invalid")
        if not isinstance(payload, Mapping) or not isinstance(payload.get("r"), str):
            return WorksheetLookup(None, "invalid")
        row = (
            self.database.connection()
            .execute(
                "SELECT report_json, expires FROM cds_worksheet WHERE report_id = ?",
                (payload["r"],),
            )
            .fetchone()
        )
        # A correctly signed token whose report is gone was purged after it expired.
        if row is None or row[1] < time.time():
            return WorksheetLookup(None, "expired")
        report: dict[str, Any] = json.loads(row[0])
        if str(report.get("patient", "")) != payload.get("p"):
            return WorksheetLookup(None, "invalid")
        return WorksheetLookup(report)

    def load(self, token: str) -> dict[str, Any] | None:
        """The report a valid token names, or None (bad signature, expired, purged, mismatched)."""
        return self.lookup(token).report


# ------------------------------------------------------------------------------------ rendering
@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=False,
    )


@lru_cache(maxsize=1)
def _css() -> str:
    return (_TEMPLATES / "worksheet.css").read_text(encoding="utf-8")


def content_security_policy() -> str:
    """The page's CSP: nothing but its own inline stylesheet (allowed by hash)."""
    digest = base64.b64encode(hashlib.sha256(_css().encode("utf-8")).digest()).decode("ascii")
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; base-uri 'none'; "
        "form-action 'none'"
    )


_STATUS_TEXT: Mapping[str, str] = {
    "met": "Met",
    "not-met": "Not met",
    "unknown": "Unknown",
    "needs-review": "Needs review",
    "not-applicable": "Not applicable",
}

# effect -> (css class, symbol, words); the words and symbol carry the meaning, colour only helps.
_EFFECTS: Mapping[str, tuple[str, str]] = {
    "for": ("\u2714", "counts for eligibility"),
    "against": ("\u2716", "rules the patient out"),
    "missing": ("?", "open: data missing"),
    "review": ("!", "open: a person decides"),
    "na": ("\u2013", "does not apply"),
}

_VERDICTS: Mapping[str, tuple[str, str]] = {
    "eligible": (
        "Eligible",
        "Every criterion is satisfied by the record; a coordinator confirms before referral.",
    ),
    "potentially-eligible": (
        "Potentially eligible",
        "Nothing in the record rules the patient out; the open items below need data or a person.",
    ),
    "ineligible": (
        "Not eligible",
        "At least one criterion rules the patient out (see the rows marked so).",
    ),
}


def _effect(kind: str, status: str) -> str:
    if status == "not-applicable":
        return "na"
    if status == "unknown":
        return "missing"
    if status == "needs-review":
        return "review"
    favourable = (kind == "exclusion") == (status == "not-met")
    return "for" if favourable else "against"


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _row(item: Mapping[str, Any]) -> dict[str, Any]:
    cid = str(item.get("id", ""))
    spec = BY_ID.get(cid)
    kind = str(item.get("kind") or (spec.kind if spec else ""))
    status = str(item.get("status", ""))
    effect = _effect(kind, status) if status in _STATUS_TEXT else "review"
    symbol, effect_label = _EFFECTS[effect]
    part_of = item.get("partOf")
    return {
        "id": cid,
        "kind": kind,
        "ref": str(item.get("ref") or (spec.ref if spec else "")),
        "title": spec.title if spec else cid,
        "status": status,
        "status_label": _STATUS_TEXT.get(status, status or "no status"),
        "effect": effect,
        "symbol": symbol,
        "effect_label": effect_label,
        "reason": str(item.get("reason", "")),
        "evidence": _strings(item.get("evidence")),
        "missing": _strings(item.get("missing")),
        "part_of": str(part_of) if part_of else None,
    }


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Catalog order; parts (``partOf``) right after their parent; unknown ids at the end."""
    order = {spec.id: n for n, spec in enumerate(CRITERIA)}
    top = sorted(
        (r for r in rows if not r["part_of"]), key=lambda r: order.get(r["id"], len(order))
    )
    parts = [r for r in rows if r["part_of"]]
    out: list[dict[str, Any]] = []
    for row in top:
        out.append(row)
        out += sorted(
            (p for p in parts if p["part_of"] == row["id"]),
            key=lambda p: order.get(p["id"], len(order)),
        )
    out += [p for p in parts if p not in out]
    return out


def render_worksheet(report: Mapping[str, Any], ttl_s: int = 900) -> str:
    """The read-only HTML page of a report (everything from the report is escaped)."""
    rows = _ordered([_row(item) for item in report.get("criteria", []) or []])
    groups = [
        {
            "key": "inclusion",
            "title": "Inclusion criteria",
            "rows": [r for r in rows if r["kind"] != "exclusion"],
        },
        {
            "key": "exclusion",
            "title": "Exclusion criteria",
            "rows": [r for r in rows if r["kind"] == "exclusion"],
        },
    ]
    voting = [r for r in rows if not r["part_of"]]
    counts = [
        (label[0].upper() + label[1:], sum(1 for r in voting if r["effect"] == effect))
        for effect, (_, label) in _EFFECTS.items()
    ]
    verdict = str(report.get("verdict", ""))
    verdict_label, verdict_note = _VERDICTS.get(verdict, (verdict or "No verdict", ""))
    deceased = report.get("deceased")
    top_reason = str(report.get("reason") or "")
    if deceased is not None and deceased is not False:
        verdict_note = (
            "The patient is recorded as deceased on the screening date: not eligible whatever "
            "the criteria say (they are still listed below)."
        )
    return (
        _environment()
        .get_template("worksheet.html")
        .render(
            css=Markup(_css()),
            study=str(report.get("study") or STUDY_ID),
            patient=str(report.get("patient", "")),
            as_of=str(report.get("asOf", "")),
            verdict_class=verdict if verdict in _VERDICTS else "",
            verdict_label=verdict_label,
            verdict_note=verdict_note,
            counts=counts,
            warnings=_strings(report.get("warnings")),
            deceased=deceased is not None and deceased is not False,
            top_reason=top_reason,
            groups=groups,
            registry=REGISTRY_URL,
            ttl_minutes=max(1, round(ttl_s / 60)),
        )
    )


_PROBLEMS: Mapping[str, tuple[int, str, str]] = {
    "expired": (
        410,
        "This worksheet link has expired",
        "Worksheet links work for a short time after the card is shown, and this one has expired.",
    ),
    "invalid": (
        403,
        "This worksheet link is invalid or has expired",
        "The link could not be verified: it may have been copied incompletely, altered, or made "
        "by another server, or it has expired.",
    ),
    "unavailable": (
        503,
        "The worksheet could not be opened right now",
        "The screening service could not read the worksheet; try the link again in a moment. If "
        "it still fails, the link may have expired.",
    ),
}


def render_link_problem(problem: str) -> tuple[int, str]:
    """``(HTTP status, HTML page)`` for a link that cannot be opened."""
    status, heading, message = _PROBLEMS.get(problem, _PROBLEMS["invalid"])
    page = (
        _environment()
        .get_template("link_problem.html")
        .render(css=Markup(_css()), heading=heading, message=message)
    )
    return status, page


def worksheet_response(store: WorksheetStore, token: str) -> Response:
    """The HTTP answer for ``GET .../worksheet/<token>``: the page, or an HTML problem page."""
    try:
        lookup = store.lookup(token)
    except (sqlite3.Error, ValueError) as exc:
        log.error("cds worksheet could not be read (%s)", type(exc).__name__)
        status, page = render_link_problem("unavailable")
    else:
        if lookup.report is not None:
            status, page = 200, render_worksheet(lookup.report, store.ttl_s)
        else:
            log.info("cds worksheet link refused (%s)", lookup.problem)
            status, page = render_link_problem(lookup.problem or "invalid")
    response = Response(page, status, mimetype="text/html")
    return private_page_headers(response, content_security_policy())


# ------------------------------------------------------------------ shared with the SMART app
def private_page_headers(response: Response, policy: str) -> Response:
    """Headers of a page that shows a patient: its CSP, never cached, indexed or referred."""
    response.headers["Content-Security-Policy"] = policy
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


def criterion_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's criteria as page rows (catalog order, parts after their parent)."""
    return _ordered([_row(item) for item in report.get("criteria", []) or []])


def verdict_words(verdict: str) -> tuple[str, str]:
    """``(label, note)`` of a verdict, in words."""
    return _VERDICTS.get(verdict, (verdict or "No verdict", ""))


def templates() -> Environment:
    """The autoescaping Jinja environment of ``templates/``."""
    return _environment()


def stylesheet() -> Markup:
    """The one inline stylesheet (allowed by its hash in the CSP)."""
    return Markup(_css())


def stylesheet_hash() -> str:
    """``sha256-...`` of the inline stylesheet, for a ``style-src`` directive."""
    return "sha256-" + base64.b64encode(hashlib.sha256(_css().encode("utf-8")).digest()).decode()
