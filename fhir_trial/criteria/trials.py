"""Other trials: exc-recent-trial (Excl 13).

A ResearchSubject in another study (not NCT06010472: neither ``ResearchStudy/nct06010472`` nor a
study whose identifier is NCT06010472) with status on-study, on-study-intervention or
on-study-observation and a period overlapping the ``recent_trial_window_days`` days before as_of
(edges included) -> met. A period with no end is ongoing; no period at all is read as "now", since the
status describes the present.

Which study: a ResearchSubject is in this study when its ``study`` names NCT06010472 by
identifier, or references ``ResearchStudy/nct06010472``, or references a ResearchStudy (read by the
source, or in the Bundle) that carries the NCT06010472 identifier: a server that assigned this
study its own id (``ResearchStudy/<uuid>``) still has it. When the source tried to read a
referenced study and could not (``ResearchStudy`` not obtained), whether it is this study cannot be
told: an on-study subject in the window is then needs-review, never met.

Decisions beyond the table: a subject in follow-up, off-study or withdrawn whose period still
overlaps the window -> needs-review (trial treatment may have been received in the window before
the subject left); a partial date that
may or may not overlap -> needs-review. No ResearchSubject at all -> unknown ("no ResearchSubject
data": absence in most EHRs says nothing); ResearchSubject data that could not be obtained ->
unknown (rule 1); ResearchSubjects present but none qualifying -> not-met (rule 4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from fhir_trial.canonical import STUDY_ID, STUDY_RESOURCE_ID
from fhir_trial.criteria.context import Context, category_unavailable, none_found
from fhir_trial.elements import child, objects
from fhir_trial.fhirdates import period_span
from fhir_trial.report import Finding

ON_STUDY = frozenset({"on-study", "on-study-intervention", "on-study-observation"})
# Statuses after (or instead of finishing) treatment: the period may still cover treatment in the
# window. "withdrawn" belongs here: a subject who withdrew last month was treated until then.
AFTER_TREATMENT = frozenset({"follow-up", "off-study", "withdrawn"})


def _identifier_is_ours(identifier: Any) -> bool:
    return isinstance(identifier, dict) and str(identifier.get("value", "")).upper() == STUDY_ID


def is_this_study(ctx: Context, subject: Mapping[str, Any]) -> bool:
    """Whether a ResearchSubject belongs to NCT06010472 itself."""
    study = subject.get("study")
    reference = str(child(study, "reference") or "")
    if reference.rstrip("/").lower().endswith(f"researchstudy/{STUDY_RESOURCE_ID}"):
        return True
    if _identifier_is_ours(child(study, "identifier")):
        return True
    resolved = ctx.record.resolve(reference or None, subject)
    return bool(resolved) and any(
        _identifier_is_ours(i) for i in objects(child(resolved, "identifier"))
    )


def study_unreadable(ctx: Context, subject: Mapping[str, Any]) -> bool:
    """Whether the subject's study could not be read, so that it may be this study."""
    if ctx.record.state("ResearchStudy") != "failed":
        return False
    study = subject.get("study")
    if isinstance(child(study, "identifier"), dict):
        return False
    reference = child(study, "reference")
    return not (isinstance(reference, str) and ctx.record.resolve(reference, subject))


def _study_label(subject: Mapping[str, Any]) -> str:
    study = subject.get("study")
    return str(
        child(study, "display")
        or child(child(study, "identifier"), "value")
        or child(study, "reference")
        or "an unnamed study"
    )


def _overlap(subject: Mapping[str, Any], window: tuple[dt.date, dt.date]) -> str:
    """'yes', 'no' or 'maybe' (partial dates) for the subject's period and the window."""
    period = subject.get("period")
    if not isinstance(period, dict) or not (period.get("start") or period.get("end")):
        return "yes"  # no period: the status describes now
    start, end = period_span(period)
    if (period.get("start") and start is None) or (period.get("end") and end is None):
        return "maybe"  # unreadable date
    earliest_start = start.start if start else dt.date.min
    latest_start = start.end if start else dt.date.min
    earliest_end = end.start if end else dt.date.max
    latest_end = end.end if end else dt.date.max
    if latest_start <= window[1] and earliest_end >= window[0]:
        return "yes"
    if earliest_start > window[1] or latest_end < window[0]:
        return "no"
    return "maybe"


def _period_text(subject: Mapping[str, Any]) -> str:
    period = subject.get("period")
    if not isinstance(period, dict) or not period:
        return "no period recorded"
    return f"{period.get('start', '?')} to {period.get('end', 'ongoing')}"


def recent_trial(ctx: Context) -> Finding:
    """exc-recent-trial: on another study within the window before as_of."""
    unavailable = category_unavailable(ctx, "ResearchSubject")
    if unavailable:
        return unavailable
    subjects = ctx.record.resources("ResearchSubject")
    days = ctx.settings.recent_trial_window_days
    window = (ctx.days_before(days), ctx.as_of)
    window_text = f"the {days} days before {ctx.as_of.isoformat()} (from {window[0].isoformat()})"
    if not subjects:
        return Finding(
            "unknown",
            "no ResearchSubject data: the record does not say whether the patient took part in "
            f"another trial in {window_text}",
            missing=(f"trial participation (ResearchSubject) in {window_text}",),
        )
    met: list[str] = []
    met_refs: list[str] = []
    review: list[str] = []
    review_refs: list[str] = []
    for subject in subjects:
        if is_this_study(ctx, subject):
            continue
        status = subject.get("status")
        if not isinstance(status, str):  # damaged: it may be a current enrolment
            review.append(
                f"{_study_label(subject)}, status unreadable, {_period_text(subject)}: "
                "was the patient on that study within the window?"
            )
            review_refs.append(ctx.record.reference_to(subject))
            continue
        if status not in ON_STUDY and status not in AFTER_TREATMENT:
            continue
        overlap = _overlap(subject, window)
        text = f"{_study_label(subject)}, status {status}, {_period_text(subject)}"
        ref = ctx.record.reference_to(subject)
        if overlap == "yes" and status in ON_STUDY and study_unreadable(ctx, subject):
            review.append(
                f"{text}: the study it references could not be read, so whether it is this "
                "study (NCT06010472) or another one cannot be told"
            )
            review_refs.append(ref)
        elif overlap == "yes" and status in ON_STUDY:
            met.append(text)
            met_refs.append(ref)
        elif overlap == "maybe" and status in ON_STUDY:
            review.append(f"{text}: a partial date leaves open whether it overlaps the window")
            review_refs.append(ref)
        elif overlap != "no":
            review.append(f"{text}: was trial treatment received within the window?")
            review_refs.append(ref)
    if met:
        return Finding(
            "met", f"on another study within {window_text}: " + "; ".join(met), tuple(met_refs)
        )
    if review:
        return Finding("needs-review", "; ".join(review), tuple(review_refs))
    return none_found(
        ctx, "ResearchSubject", f"participation in another study within {window_text}"
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-recent-trial": recent_trial,
}
