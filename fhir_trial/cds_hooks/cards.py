"""Cards for the enrollment suggestion (CDS Hooks 2.0 "Card Attributes").

- potentially eligible / eligible: an ``info`` card naming the study, with a markdown detail short
  enough to read at chart open (the verdict, the counts, at most five open items with what would
  decide them, at most two data problems, each list ending "and N more"; the full list is in the
  worksheet), a link to the registry record, a
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
import re
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


# The detail is read at chart open: the verdict, the counts and the few items that matter most.
# The full criterion-by-criterion list, with every piece of evidence, is in the worksheet.
_MAX_ITEMS = 5
_MAX_WARNINGS = 2
_MAX_EVIDENCE = 3
_STATUS_WORDS = {
    "unknown": "unknown",
    "needs-review": "needs review",
    "met": "applies",
    "not-met": "not met",
}


def _line(result: CriterionResult) -> str:
    status = _STATUS_WORDS.get(result.status, result.status)
    line = f"- **{_escaped_title(result.id)}** ({status}): {markdown_escape(result.reason)}"
    if result.status == "unknown" and result.missing:
        line += f" (would decide it: {markdown_escape('; '.join(result.missing))})"
    if result.evidence:
        shown = ", ".join(markdown_escape(e) for e in result.evidence[:_MAX_EVIDENCE])
        extra = len(result.evidence) - _MAX_EVIDENCE
        line += f" (evidence: {shown}{f' and {extra} more' if extra > 0 else ''})"
    return line


def _capped(lines: list[str], limit: int) -> list[str]:
    """At most ``limit`` lines, the rest said as "and N more"."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"- and {len(lines) - limit} more"]


def _inclusions_met(voting: Iterable[CriterionResult]) -> list[CriterionResult]:
    return [r for r in voting if r.kind == "inclusion" and r.status == "met"]


def _exclusions_ruled_out(voting: Iterable[CriterionResult]) -> list[CriterionResult]:
    return [r for r in voting if r.kind == "exclusion" and r.status == "not-met"]


def _against(voting: Iterable[CriterionResult]) -> list[CriterionResult]:
    return [
        r
        for r in voting
        if (r.kind == "inclusion" and r.status == "not-met")
        or (r.kind == "exclusion" and r.status == "met")
    ]


_NOT_OBTAINED = re.compile(
    r"^(?P<what>\S+) could not be obtained: (?P<why>.*?)(?: \(prefetch key '[^']*'\))?$"
)


def _data_problems(warnings: Iterable[str]) -> list[str]:
    """The warnings, those saying a category could not be obtained for the same reason in one line
    ("AllergyIntolerance, Consent could not be obtained: not in the prefetch ...")."""
    grouped: dict[str, list[str]] = {}
    lines: list[str] = []
    for warning in warnings:
        match = _NOT_OBTAINED.match(warning)
        if match is None:
            lines.append(warning)
            continue
        why = match["why"]
        if why not in grouped:
            grouped[why] = []
            lines.append(why)  # placeholder, replaced below to keep the first one's place
        grouped[why].append(match["what"])
    out = []
    for line in lines:
        if line in grouped:
            line = f"{', '.join(grouped.pop(line))} could not be obtained: {line}"
        out.append(f"- {markdown_escape(line)}")
    return out


def _detail(report: EligibilityReport, has_worksheet: bool = True) -> str:
    voting = [r for r in report.criteria if r.part_of is None]
    inclusions = sum(1 for r in voting if r.kind == "inclusion")
    exclusions = sum(1 for r in voting if r.kind == "exclusion")
    against = _against(voting)
    unknown = [r for r in voting if r.status == "unknown"]
    review = [r for r in voting if r.status == "needs-review"]
    lines = [
        f"Automated pre-screening for **{STUDY_ID}** (anti-CD19 CAR-NK cells, KN5501, for moderate-to-"
        f"severe refractory systemic lupus erythematosus) as of {markdown_escape(report.as_of)}: "
        f"**{markdown_escape(report.verdict.replace('-', ' '))}**. A study coordinator confirms "
        "eligibility; missing data never counts against the patient.",
    ]
    if report.reason and report.deceased is None:
        # Whether the patient is alive could not be read: a person checks that before anything.
        lines += ["", f"**Check first:** {markdown_escape(report.reason)}."]
    if report.not_obtained:
        # Said before the counts: every "unknown" below may come from this, and a retry may help.
        lines += [
            "",
            "**Incomplete:** could not be obtained: "
            + markdown_escape(", ".join(report.not_obtained))
            + ".",
        ]
    # "Exclusions ruled out", not "exclusions met": an exclusion that is met applies to the patient.
    counts = [
        f"{len(_inclusions_met(voting))} of {inclusions} inclusions met",
        f"{len(_exclusions_ruled_out(voting))} of {exclusions} exclusions ruled out",
    ]
    if against:
        counts.append(f"{len(against)} against eligibility")
    counts += [f"{len(unknown)} unknown (data missing)", f"{len(review)} to review"]
    lines += ["", "**Criteria:** " + ", ".join(counts) + "."]
    # What matters most first: what rules the patient out, then what data would decide, then
    # what a person must read.
    items = [_line(r) for r in (*against, *unknown, *review)]
    if items:
        lines += ["", "**Open items**" if not against else "**What decides**", ""]
        lines += _capped(items, _MAX_ITEMS)
    if report.warnings:
        lines += ["", "**Data problems**", ""]
        lines += _capped(_data_problems(report.warnings), _MAX_WARNINGS)
    where = "the screening worksheet (link below)" if has_worksheet else "the full screening report"
    lines += ["", f"Every criterion, with its reason and evidence, is listed in {where}."]
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
        "detail": _detail(report, has_worksheet=bool(smart_launch_url or worksheet_url)),
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
    against = _against(r for r in report.criteria if r.part_of is None)
    ruling_out = "1 criterion rules" if len(against) == 1 else f"{len(against)} criteria rule"
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(f"Not eligible for {STUDY_SHORT}: {ruling_out} the patient out"),
        "indicator": "info",
        "detail": _detail(report, has_worksheet=False),
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
