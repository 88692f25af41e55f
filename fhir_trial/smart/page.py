"""The worksheet pages of the SMART app: what a report, its answers and a decision look like.

Server-rendered HTML, no JavaScript; every value from the record is escaped (Jinja autoescape).
Inclusion and exclusion criteria are in separate tables; in each, the open items (unknown, needs
review) come first, then the others in catalog order. An answered criterion shows its computed
reason and evidence, the answer, who gave it and when, and takes the answered status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from fhir_trial.canonical import REGISTRY_URL, STUDY_ID
from fhir_trial.cds_hooks.worksheet import criterion_rows, stylesheet, templates, verdict_words
from fhir_trial.study.questionnaire import DECISIONS

__all__ = ["patient_summary", "render_decision", "render_problem", "render_worksheet"]

STUDY = {
    "id": STUDY_ID,
    "title": "Anti-CD19 CAR-NK cells (KN5501) for refractory systemic lupus erythematosus",
    "registry": REGISTRY_URL,
}
_OPEN = ("unknown", "needs-review")
_ANSWERED_NOTES = {
    "eligible": "every criterion is satisfied by the record or by an answer.",
    "potentially-eligible": "nothing rules the patient out; some items are still open.",
    "ineligible": "at least one criterion rules the patient out.",
}
_SEX = {"female": "female", "male": "male", "other": "other", "unknown": "sex unknown"}


def _name(patient: Mapping[str, Any]) -> str | None:
    names = [n for n in patient.get("name", []) or [] if isinstance(n, Mapping)]
    names.sort(key=lambda n: {"official": 0, "usual": 1}.get(str(n.get("use")), 2))
    for name in names:
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        parts = [str(g) for g in name.get("given", []) or [] if isinstance(g, str)]
        if isinstance(name.get("family"), str):
            parts.append(name["family"])
        if parts:
            return " ".join(parts)
    return None


def _age(birth: Any, as_of: dt.date) -> str:
    if not isinstance(birth, str) or len(birth) < 4:
        return "age unknown"
    try:
        if len(birth) >= 10:
            born = dt.date.fromisoformat(birth[:10])
            years = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day))
            return f"{years} years"
        year = int(birth[:4])
    except ValueError:
        return "age unknown"
    return f"about {as_of.year - year} years"


def patient_summary(
    patient: Mapping[str, Any] | None, reference: str, as_of: str
) -> dict[str, str]:
    """Name, age and sex of the patient for the page header."""
    resource = patient or {}
    try:
        day = dt.date.fromisoformat(as_of)
    except ValueError:
        day = dt.date.today()
    gender = resource.get("gender")
    return {
        "name": _name(resource) or f"(no name in the record) {reference}",
        "age": _age(resource.get("birthDate"), day),
        "sex": _SEX.get(str(gender), "sex not recorded") if gender else "sex not recorded",
        "reference": reference,
        "as_of": as_of,
    }


def _alerts(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    deceased = report.get("deceased")
    reason = str(report.get("reason") or "")
    if deceased is not None and deceased is not False:
        alerts.append(
            {
                "id": "deceased",
                "heading": f"Deceased: {reason or 'recorded as deceased'}",
                "items": [],
                "text": "A patient deceased on the screening date is not eligible, whatever is answered.",
            }
        )
    elif reason:
        alerts.append(
            {"id": "vital-status", "heading": f"Check first: {reason}", "items": [], "text": ""}
        )
    warnings = [str(w) for w in report.get("warnings", []) or []]
    if warnings:
        alerts.append(
            {
                "id": "data-problems",
                "heading": "Data problems: part of the record could not be loaded",
                "items": warnings,
                "text": "Criteria that need the missing data show as unknown, not as failed.",
            }
        )
    return alerts


def _groups(report: Mapping[str, Any], answerable: set[str]) -> list[dict[str, Any]]:
    answers = {str(a.get("criterion")): a for a in report.get("answers", []) or []}
    rows = criterion_rows(report)
    for row in rows:
        row["answerable"] = row["id"] in answerable
        exclusion = row["kind"] == "exclusion"
        row["met_label"] = "Met (patient excluded)" if exclusion else "Met"
        row["not_met_label"] = "Not met (not excluded)" if exclusion else "Not met"
        given = answers.get(row["id"])
        row["answer"] = (
            {
                "label": row["met_label"] if given.get("status") == "met" else row["not_met_label"],
                "comment": str(given.get("comment") or ""),
                "author": given.get("author"),
                "date": str(given.get("date") or ""),
            }
            if given
            else None
        )
    groups = []
    for key, title in (("inclusion", "Inclusion criteria"), ("exclusion", "Exclusion criteria")):
        mine = [r for r in rows if (r["kind"] == "exclusion") == (key == "exclusion")]
        # Open voting items first (their parts stay beside their parent, after it), then the rest.
        open_ids = {r["id"] for r in mine if r["status"] in _OPEN and not r["part_of"]}
        first = [r for r in mine if r["id"] in open_ids or r["part_of"] in open_ids]
        rest = [r for r in mine if r not in first]
        groups.append({"key": key, "title": title, "rows": first + rest, "open": len(open_ids)})
    return groups


def _verdict(report: Mapping[str, Any]) -> dict[str, str]:
    verdict = str(report.get("verdict", ""))
    label, note = verdict_words(verdict)
    if report.get("answers"):
        note = "Recomputed with the coordinator's answers: " + _ANSWERED_NOTES.get(verdict, "")
    return {"cls": verdict, "label": label, "note": note}


def render_worksheet(
    report: Mapping[str, Any],
    patient: dict[str, str],
    answerable: Sequence[str],
    *,
    action: str,
    csrf: str,
    form_key: str,
    decisions: list[dict[str, str]],
) -> str:
    """The worksheet with the answer form."""
    return (
        templates()
        .get_template("smart_worksheet.html")
        .render(
            css=stylesheet(),
            study=STUDY,
            patient=patient,
            verdict=_verdict(report),
            alerts=_alerts(report),
            groups=_groups(report, set(answerable)),
            action=action,
            csrf=csrf,
            form_key=form_key,
            decisions=decisions,
            decision_options=[(key, words) for key, (_, _, words) in DECISIONS.items()],
        )
    )


def render_decision(
    report: Mapping[str, Any],
    patient: dict[str, str],
    decision: dict[str, Any],
    write: dict[str, Any],
    *,
    csrf: str,
    back: str,
) -> str:
    """A recorded decision, its write state, and the report with the answers applied."""
    return (
        templates()
        .get_template("smart_decision.html")
        .render(
            css=stylesheet(),
            study=STUDY,
            patient=patient,
            verdict=_verdict(report),
            alerts=_alerts(report),
            groups=_groups(report, set()),
            decision=decision,
            write=write,
            csrf=csrf,
            back=back,
        )
    )


def render_problem(heading: str, message: str, advice: str) -> str:
    """A page saying why the app cannot go on."""
    return (
        templates()
        .get_template("smart_problem.html")
        .render(css=stylesheet(), heading=heading, message=message, advice=advice)
    )
