"""Cards for the enrollment suggestion (CDS Hooks 2.0 "Card Attributes").

- potentially eligible / eligible: an ``info`` card naming the study, with the inclusion criteria
  met, the exclusions ruled out, and the criteria unknown and needing review (and their evidence)
  in the markdown detail, a link to the registry record, a
  ``smart`` link to the worksheet app (its launch URL, when the EHR is registered for it; the EHR
  adds ``launch`` and ``iss``), the signed read-only worksheet page as an ``absolute`` link (the
  fallback for EHRs without SMART), a suggestion that creates a ResearchSubject with status
  ``candidate``, and override reasons;
- ineligible: no card by default (``Settings.cds_cards_for_ineligible`` turns on a short one);
- deceased on the screening date: never a card, whatever the settings (CRITERIA.md; the service
  returns an empty ``cards`` list before any card is built);
- screening not completed (deadline passed, data unavailable): a card that says so, when
  configured (``Settings.cds_incomplete_card``, default on).

Every card and suggestion carries a fresh UUID (feedback refers to them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhir_trial.canonical import NCT_SYSTEM, REGISTRY_URL, STUDY_ID
from fhir_trial.criteria.catalog import BY_ID
from fhir_trial.report import CriterionResult, EligibilityReport

__all__ = [
    "SOURCE",
    "eligibility_card",
    "incomplete_card",
    "ineligible_card",
    "markdown_escape",
    "override_reasons",
]

STUDY_SHORT = f"lupus study {STUDY_ID} (CAR-NK cells)"
SOURCE: Mapping[str, Any] = {
    "label": f"{STUDY_ID} eligibility pre-screening",
    "url": REGISTRY_URL,
    "topic": {
        "system": NCT_SYSTEM,
        "code": STUDY_ID,
        "display": "Clinical trial NCT06010472: anti-CD19 CAR-NK cells (KN5501) for refractory SLE",
    },
}
_MAX_SUMMARY = 139
_MD_SPECIAL = "\\`*_{}[]<>#|~!"
# Backslash first, so the backslashes added for the other characters are not escaped again.
_MD_ESCAPES = tuple((char, "\\" + char) for char in _MD_SPECIAL)


@lru_cache(maxsize=1)
def override_reasons() -> tuple[Mapping[str, str], ...]:
    """The override reasons offered on the card (from ``override_reasons.json``)."""
    data = json.loads((Path(__file__).parent / "override_reasons.json").read_text(encoding="utf-8"))
    return tuple(dict(r) for r in data["overrideReasons"])


def markdown_escape(text: str) -> str:
    """Escape text for GitHub-flavoured markdown (one line)."""
    line = " ".join(str(text).split())
    for char, escaped in _MD_ESCAPES:
        if char in line:  # usually absent: a membership test is cheaper than a replace
            line = line.replace(char, escaped)
    return line


@lru_cache(maxsize=256)
def _escaped_title(criterion_id: str) -> str:
    """The escaped catalog title of a criterion (static text: escaped once per process)."""
    spec = BY_ID.get(criterion_id)
    return markdown_escape(spec.title if spec else criterion_id)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _summary(text: str) -> str:
    return text if len(text) <= _MAX_SUMMARY else text[: _MAX_SUMMARY - 1] + "…"


def _line(result: CriterionResult, with_missing: bool = False) -> str:
    line = (
        f"- **{_escaped_title(result.id)}** ({markdown_escape(result.ref)}): "
        f"{markdown_escape(result.reason)}"
    )
    if result.evidence:
        shown = ", ".join(markdown_escape(e) for e in result.evidence[:5])
        more = f" and {len(result.evidence) - 5} more" if len(result.evidence) > 5 else ""
        line += f" (evidence: {shown}{more})"
    if with_missing and result.missing:
        line += f" (would decide it: {markdown_escape('; '.join(result.missing))})"
    return line


def _section(
    title: str, results: Iterable[CriterionResult], with_missing: bool = False
) -> list[str]:
    items = list(results)
    if not items:
        return []
    return ["", f"**{title} ({len(items)})**", "", *(_line(r, with_missing) for r in items)]


def _inclusions_met(voting: Iterable[CriterionResult]) -> list[CriterionResult]:
    return [r for r in voting if r.kind == "inclusion" and r.status == "met"]


def _exclusions_ruled_out(voting: Iterable[CriterionResult]) -> list[CriterionResult]:
    return [r for r in voting if r.kind == "exclusion" and r.status == "not-met"]


def _detail(report: EligibilityReport) -> str:
    voting = [r for r in report.criteria if r.part_of is None]
    parts = [r for r in report.criteria if r.part_of is not None]
    lines = [
        f"Automated pre-screening for **{STUDY_ID}** (anti-CD19 CAR-NK cells, KN5501, for moderate-to-"
        f"severe refractory systemic lupus erythematosus) as of {markdown_escape(report.as_of)}: "
        f"**{markdown_escape(report.verdict.replace('-', ' '))}**. A study coordinator confirms "
        "eligibility; missing data never counts against the patient.",
    ]
    if report.reason and report.deceased is None:
        # Whether the patient is alive could not be read: a person checks that before anything.
        lines += ["", f"**Check first:** {markdown_escape(report.reason)}."]
    # Favourable criteria in two lists: under one "criteria met" heading an exclusion's title
    # ("Immunodeficiency disease") reads as if the patient had it, since an exclusion that is
    # "met" applies to the patient.
    lines += _section("Inclusion criteria met", _inclusions_met(voting))
    lines += _section("Exclusions ruled out", _exclusions_ruled_out(voting))
    lines += _section("Unknown: data missing", (r for r in voting if r.status == "unknown"), True)
    lines += _section("Needs review", (r for r in voting if r.status == "needs-review"))
    lines += _section(
        "Against eligibility",
        (
            r
            for r in voting
            if (r.kind == "inclusion" and r.status == "not-met")
            or (r.kind == "exclusion" and r.status == "met")
        ),
    )
    if any(r.status in ("met", "needs-review") for r in parts):
        lines += _section(
            "Autoantibody results", (r for r in parts if r.status in ("met", "needs-review"))
        )
    if report.warnings:
        lines += [
            "",
            "**Data problems**",
            "",
            *(f"- {markdown_escape(w)}" for w in report.warnings),
        ]
    return "\n".join(lines)


def research_subject(patient_id: str) -> dict[str, Any]:
    """The ResearchSubject (status candidate) the suggestion creates."""
    return {
        "resourceType": "ResearchSubject",
        "status": "candidate",
        "study": {
            "identifier": {"system": NCT_SYSTEM, "value": STUDY_ID},
            "display": f"{STUDY_ID}: anti-CD19 CAR-NK cells for refractory SLE",
        },
        "individual": {"reference": f"Patient/{patient_id}"},
    }


def eligibility_card(
    report: EligibilityReport,
    patient_id: str,
    worksheet_url: str | None,
    app_context: str | None,
    card_uuid: str | None = None,
    smart_launch_url: str | None = None,
) -> dict[str, Any]:
    """The card for a potentially eligible (or eligible) patient.

    ``smart_launch_url``: the worksheet app's launch URL (a ``smart`` link, with ``app_context``);
    ``worksheet_url``: the signed read-only page (an ``absolute`` link).
    """
    voting = [r for r in report.criteria if r.part_of is None]
    met = len(_inclusions_met(voting))
    ruled_out = len(_exclusions_ruled_out(voting))
    open_items = sum(1 for r in voting if r.status in ("unknown", "needs-review"))
    if report.verdict == "eligible":
        summary = f"Meets the automated criteria for {STUDY_SHORT}: consider referral"
    else:
        summary = (
            f"Possible candidate for {STUDY_SHORT}: {_count(met, 'inclusion')} met, "
            f"{_count(ruled_out, 'exclusion')} ruled out, {open_items} to check"
        )
    links: list[dict[str, Any]] = [
        {"label": f"{STUDY_ID} on ClinicalTrials.gov", "url": REGISTRY_URL, "type": "absolute"}
    ]
    if smart_launch_url:
        link: dict[str, Any] = {
            "label": "Open the screening worksheet (answer and record a decision)",
            "url": smart_launch_url,
            "type": "smart",
        }
        if app_context:
            link["appContext"] = app_context
        links.append(link)
    if worksheet_url:
        links.append(
            {
                "label": "View the screening worksheet (read-only)",
                "url": worksheet_url,
                "type": "absolute",
            }
        )
    return {
        "uuid": card_uuid or str(uuid.uuid4()),
        "summary": _summary(summary),
        "indicator": "info",
        "detail": _detail(report),
        "source": dict(SOURCE),
        "suggestions": [
            {
                "label": f"Record as a candidate for {STUDY_ID}",
                "uuid": str(uuid.uuid4()),
                "isRecommended": True,
                "actions": [
                    {
                        "type": "create",
                        "description": (
                            f"Create a ResearchSubject (status candidate) linking this patient to "
                            f"{STUDY_ID} so the study team can screen them"
                        ),
                        "resource": research_subject(patient_id),
                    }
                ],
            }
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [dict(r) for r in override_reasons()],
        "links": links,
    }


def ineligible_card(report: EligibilityReport) -> dict[str, Any]:
    """A short card for an ineligible patient (only when configured)."""
    against = [
        r
        for r in report.criteria
        if r.part_of is None
        and (
            (r.kind == "inclusion" and r.status == "not-met")
            or (r.kind == "exclusion" and r.status == "met")
        )
    ]
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(f"Not eligible for {STUDY_SHORT}: {len(against)} criteria exclude"),
        "indicator": "info",
        "detail": _detail(report),
        "source": dict(SOURCE),
        "links": [
            {"label": f"{STUDY_ID} on ClinicalTrials.gov", "url": REGISTRY_URL, "type": "absolute"}
        ],
    }


def incomplete_card(why: str) -> dict[str, Any]:
    """A card saying the screening could not be completed (``why`` holds no PHI)."""
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(f"Screening for {STUDY_SHORT} could not be completed"),
        "indicator": "info",
        "detail": (
            f"The eligibility pre-screening for **{STUDY_ID}** could not be completed: "
            f"{markdown_escape(why)}. Nothing is concluded about this patient; it will be tried again "
            "the next time the chart is opened."
        ),
        "source": dict(SOURCE),
        "links": [
            {"label": f"{STUDY_ID} on ClinicalTrials.gov", "url": REGISTRY_URL, "type": "absolute"}
        ],
    }
