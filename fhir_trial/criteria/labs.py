"""Laboratory and imaging thresholds: inc-neutrophils, inc-hemoglobin, inc-lvef, exc-abnormal-labs.

The latest result inside the criterion's window decides (CRITERIA.md); no result in the window is
``unknown`` (absence rule 2). Values are converted with :mod:`fhir_trial.units`; a unit that cannot
be read makes the criterion ``needs-review`` and the reason names the unit. Percent neutrophils are
never compared with the absolute threshold.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from fhir_trial.criteria.context import NO_MEASUREMENT, Context, category_unavailable
from fhir_trial.elements import child
from fhir_trial.observations import (
    Dated,
    Quantity,
    Resource,
    describe_quantity,
    interpretation_in,
    interpretations,
    latest,
    meets_at_least,
    observed_on,
    parse_number,
    quantity_of,
    split_by_window,
    split_keeping_latest_before,
    value_beside_absent_reason,
)
from fhir_trial.report import Finding, Status
from fhir_trial.terminology import ValueSet, codings
from fhir_trial.units import (
    CELL_COUNT,
    HEMOGLOBIN_G_PER_MMOL,
    MASS_CONCENTRATION,
    PERCENT,
    POSSIBLE_RANGE,
    Dimension,
    Normalised,
    UnitError,
    is_possible,
    normalise,
    reads_like_fraction,
)

Verdict = Literal["pass", "fail", "unreadable"]
_STATUS: dict[Verdict, Status] = {"pass": "met", "fail": "not-met", "unreadable": "needs-review"}


@dataclass(frozen=True)
class Judgement:
    """One result judged against a threshold: pass, fail or unreadable, and how it reads.

    ``narrative``: the result holds no number at all (a narrative echo, a coded text, no value).
    A window holding only such results is still "no measurement" (absence rule 2); a text that
    holds a number ("55%", "6 points") is a measurement nobody could read and needs review.
    """

    verdict: Verdict
    text: str
    narrative: bool = False


_DIGIT = re.compile(r"[0-9]")


def text_judgement(text: object, missing: str) -> Judgement:
    """The judgement of a result without a structured number: its text, or ``missing``.

    A text holding a digit is unreadable (not narrative): it may be the measurement itself,
    written in a form that cannot be read safely.
    """
    if isinstance(text, str) and _DIGIT.search(text):
        return Judgement(
            "unreadable", f"(text {text.strip()!r}: a number written as text cannot be read safely)"
        )
    shown = f"{text.strip()!r}" if isinstance(text, str) and text.strip() else None
    return Judgement("unreadable", f"({shown}, {missing})" if shown else f"({missing})", True)


Judge = Callable[[Resource], Judgement]


def reference(resource: Resource) -> str:
    """``Type/id`` of a resource, for evidence."""
    return f"{resource.get('resourceType')}/{resource.get('id', 'unknown')}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def latest_in_window(
    ctx: Context,
    observations: Iterable[Resource],
    *,
    what: str,
    window_days: int,
    requirement: str,
    judge: Judge,
    missing: str,
    notes: Sequence[str] = (),
) -> Finding:
    """Decide a threshold criterion by the latest result within ``window_days`` before as_of.

    Shared by labs and disease-activity scores. The latest final result decides (``pass`` -> met,
    ``fail`` -> not-met, ``unreadable`` -> needs-review); a preliminary latest result, or partial
    dates that leave it unclear which result is the latest or whether it is in the window, ->
    needs-review; nothing in the window -> unknown (absence rule 2).
    """
    unavailable = category_unavailable(ctx, "Observation")
    if unavailable is not None:
        return unavailable
    judge = _judged_once(judge)
    start = ctx.days_before(window_days)
    # Of the results before the window only the latest is named (below): the others are not kept.
    split = split_keeping_latest_before(observations, start, ctx.as_of)
    extra = list(notes)
    if split.after:
        extra.append(f"{_plural(len(split.after), 'result')} dated after {ctx.as_of} ignored")
    if split.ignored:
        extra.append(
            f"{_plural(len(split.ignored), 'result')} with status "
            f"{'/'.join(sorted({str(o.get('status')) for o in split.ignored}))} ignored"
        )

    usable = [d for d in split.inside if not judge(d.resource).narrative]
    narrative = [d for d in split.inside if judge(d.resource).narrative]
    if usable:

        def outcome(item: Dated) -> tuple[Verdict, bool]:
            return judge(item.resource).verdict, item.preliminary

        window = f"window {window_days} days, from {start.isoformat()}"
        best, conflicts = latest(usable + split.ambiguous, outcome)
        if best is not None:
            judged = judge(best.resource)
            said = f"{what} {judged.text} on {observed_on(best.resource)} ({requirement}, {window})"
            # A result without a number that may be as recent as the deciding one: the latest
            # result decides, so an unreadable later one must not be skipped for an older number.
            later_text = [d for d in narrative if _may_be_on_or_after(d, best)]
            # A panel and its component (or two components) name the same resource: once.
            evidence = tuple(
                dict.fromkeys(reference(d.resource) for d in [best, *conflicts, *later_text])
            )
            if split.undated:
                extra.append(f"{_plural(len(split.undated), 'undated result')} not considered")
            tail = "; ".join(extra)
            tail = f"; {tail}" if tail else ""
            if later_text:
                others = ", ".join(
                    f"{judge(d.resource).text} on {observed_on(d.resource)}" for d in later_text
                )
                return Finding(
                    "needs-review",
                    f"the latest {what} result cannot be read: {others}; the earlier {said} does "
                    f"not decide (the latest result decides){tail}",
                    evidence,
                )
            if conflicts:
                others = ", ".join(
                    f"{judge(c.resource).text} on {observed_on(c.resource)}" for c in conflicts
                )
                return Finding(
                    "needs-review",
                    f"partial dates leave unclear which result is the latest: {said} or {others}"
                    f"{tail}",
                    evidence,
                )
            if best.preliminary:
                return Finding(
                    "needs-review",
                    f"the latest result is preliminary (only final, amended or corrected results "
                    f"decide): {said}{tail}",
                    evidence,
                )
            return Finding(_STATUS[judged.verdict], f"{said}{tail}", evidence)
    if split.ambiguous:
        item = split.ambiguous[0]
        return Finding(
            "needs-review",
            f"{what} {judge(item.resource).text} dated {observed_on(item.resource)}: the date is too "
            f"imprecise to tell whether it falls within the {window_days}-day window "
            f"(from {start.isoformat()}); {requirement}",
            tuple(reference(d.resource) for d in split.ambiguous),
        )
    parts = [f"no {what} result within the {window_days}-day window (from {start.isoformat()})"]
    if narrative:
        parts.append(
            f"only narrative results without a numeric value in the window "
            f"({', '.join(judge(d.resource).text for d in narrative)})"
        )
    previous = [d for d in split.before if d.span is not None]
    if previous:
        # Every one has a span (a DateSpan is always true): the key is its start, read in C.
        last = max(previous, key=_SPAN_START)
        parts.append(
            f"the latest earlier result, {judge(last.resource).text} on "
            f"{observed_on(last.resource)}, is outside the window"
        )
    if split.undated:
        parts.append(f"{_plural(len(split.undated), 'result')} without a date cannot be placed")
    parts.extend(extra)
    parts.append(NO_MEASUREMENT)
    evidence = tuple(reference(d.resource) for d in [*narrative, *split.undated])
    return Finding("unknown", "; ".join(parts), evidence, (missing,))


_SPAN_START = operator.attrgetter("span.start")


def _may_be_on_or_after(item: Dated, best: Dated) -> bool:
    """Whether ``item`` may be dated on or after ``best`` (partial dates: may, not must)."""
    return item.span is not None and best.span is not None and item.span.end >= best.span.start


def _judged_once(judge: Judge) -> Judge:
    """``judge`` remembering its answer per resource for one decision (it is asked several times:
    is the result narrative, what does it decide, how does it read)."""
    seen: dict[int, Judgement] = {}

    def once(resource: Resource) -> Judgement:
        key = id(resource)
        found = seen.get(key)
        if found is None:
            found = seen[key] = judge(resource)
        return found

    return once


def _number(value: float) -> str:
    return f"{value:.6g}"


def _quantity_judge(
    dimension: Dimension,
    threshold: float,
    *,
    grams_per_mmol: float | None = None,
) -> Judge:
    """A judge comparing a valueQuantity, converted to ``dimension``, with ``threshold``."""

    def judge(observation: Resource) -> Judgement:
        quantity = quantity_of(observation)
        absent = value_beside_absent_reason(observation)
        if quantity is None:
            parsed = parse_number(observation.get("valueString"))
            if parsed is None:
                return text_judgement(observation.get("valueString"), "no numeric value")
            quantity = Quantity(parsed[0], parsed[1], ())
        if absent is not None:
            return Judgement("unreadable", f"{describe_quantity(quantity)}: {absent}")
        return _compare(quantity, dimension, threshold, grams_per_mmol)

    return judge


def _compare(
    quantity: Quantity, dimension: Dimension, threshold: float, grams_per_mmol: float | None
) -> Judgement:
    # The messages, not the errors: an error kept past its except block holds its traceback, whose
    # frames hold this list (a reference cycle keeping the patient's record alive until the
    # cyclic collector runs, which a population screening turns off while it screens a bucket).
    problems: list[str] = []
    converted: Normalised | None = None
    for unit in quantity.units or ("",):
        try:
            converted = normalise(quantity.value, unit, dimension, grams_per_mmol=grams_per_mmol)
            break
        except UnitError as exc:
            problems.append(exc.message)
    if converted is None:
        problem = problems[-1] if problems else "no unit"
        return Judgement("unreadable", f"{describe_quantity(quantity)}: {problem}")
    shown = f"{quantity.comparator}{converted.describe()}"
    if reads_like_fraction(converted.value, dimension):
        return Judgement(
            "unreadable",
            f"{shown}: a percentage of at most 1 is most likely a fraction (0.55 = 55 %) sent with "
            "the unit %, and otherwise not a measurement: a data error",
        )
    if not is_possible(converted.value, dimension):
        low, high = POSSIBLE_RANGE[dimension]
        return Judgement(
            "unreadable",
            f"{shown}, outside what is possible ({low:g} to {high:g} {dimension.value}): a data error",
        )
    ok = meets_at_least(converted.value, quantity.comparator, threshold)
    if ok is None:
        return Judgement("unreadable", f"{shown} (cannot be compared with the threshold)")
    return Judgement("pass" if ok else "fail", shown)


# --------------------------------------------------------------------------- criteria
PERCENT_REFS_LISTED = 3


def neutrophils(ctx: Context) -> Finding:
    """inc-neutrophils: latest absolute neutrophil count in the window >= threshold (10*9/L)."""
    s = ctx.settings
    absolute = ctx.record.with_code("Observation", ctx.valueset("neutrophils-absolute"))
    percent = ctx.record.with_code("Observation", ctx.valueset("neutrophils-percent"))
    absolute_ids = {id(o) for o in absolute}
    percent_only = [o for o in percent if id(o) not in absolute_ids]
    notes = []
    if percent_only:
        # A few references say which results are meant; all of them would bury the reason (a
        # Synthea-style record holds one with every blood count).
        shown = PERCENT_REFS_LISTED
        refs = ", ".join(reference(o) for o in percent_only[:shown])
        if len(percent_only) > shown:
            refs += f" and {len(percent_only) - shown} more"
        notes.append(
            f"{_plural(len(percent_only), 'percent neutrophil result')} ignored ({refs}): a "
            "percentage is never compared with the absolute threshold"
        )
    threshold = s.neutrophils_min_10e9_per_l
    return latest_in_window(
        ctx,
        absolute,
        what="absolute neutrophils",
        window_days=s.neutrophils_window_days,
        requirement=f">= {threshold:.1f} 10*9/L required",
        judge=_quantity_judge(CELL_COUNT, threshold),
        missing=f"absolute neutrophil count within {s.neutrophils_window_days} days",
        notes=notes,
    )


def hemoglobin(ctx: Context) -> Finding:
    """inc-hemoglobin: latest hemoglobin in the window >= threshold (g/L; g/dL, mg/dL, mmol/L read)."""
    s = ctx.settings
    threshold = s.hemoglobin_min_g_per_l
    return latest_in_window(
        ctx,
        ctx.record.with_code("Observation", ctx.valueset("hemoglobin")),
        what="hemoglobin",
        window_days=s.hemoglobin_window_days,
        requirement=f">= {_number(threshold)} g/L required",
        judge=_quantity_judge(MASS_CONCENTRATION, threshold, grams_per_mmol=HEMOGLOBIN_G_PER_MMOL),
        missing=f"hemoglobin within {s.hemoglobin_window_days} days",
    )


def lvef(ctx: Context) -> Finding:
    """inc-lvef: latest LVEF in the window >= threshold (%; a fraction <= 1 with unit 1 is x100)."""
    s = ctx.settings
    threshold = s.lvef_min_percent
    return latest_in_window(
        ctx,
        ctx.record.with_code("Observation", ctx.valueset("lvef")),
        what="LVEF",
        window_days=s.lvef_window_days,
        requirement=f">= {_number(threshold)} % required",
        judge=_quantity_judge(PERCENT, threshold),
        missing=f"numeric LVEF (echocardiography) within {s.lvef_window_days} days",
    )


def abnormal_labs(ctx: Context) -> Finding:
    """exc-abnormal-labs: always needs-review, listing critical (HH/LL/AA) results in the window.

    It can only list what was retrieved; the reason says so (see ``scope`` below).
    """
    unavailable = category_unavailable(ctx, "Observation")
    if unavailable is not None:
        return unavailable
    days = ctx.settings.abnormal_labs_window_days
    start = ctx.days_before(days)
    critical = ctx.valueset("interpretation-critical")
    # Components flagged critical count like results of their own (evidence: the parent).
    # Only results with an interpretation can be flagged: sifted first, so that the result
    # list (hundreds) is walked once; both lists keep record order.
    interpreted = [o for o in ctx.record.observation_results() if o.get("interpretation")]
    flags = {id(o): flag for o in interpreted if (flag := critical_flag(o, critical)) is not None}
    flagged = [o for o in interpreted if id(o) in flags]
    split = split_by_window(flagged, start, ctx.as_of)
    listed = sorted(
        [*split.inside, *split.ambiguous],
        key=lambda d: d.span.start if d.span else start,
        reverse=True,
    )
    judgement = "clinical significance of abnormal results is the investigator's judgement"
    # Sources may retrieve only the kinds of results the criteria read (the CDS Hooks prefetch and
    # the REST client ask for those codes): never suggest the whole chart was checked.
    scope = (
        "the retrieved results may be only the kinds these criteria read, so the chart can hold "
        "other abnormal results"
    )
    if not listed:
        return Finding(
            "needs-review",
            f"no result with a critical interpretation (coded HH/LL/AA, or the word critical or "
            f"panic in its text) within the last {days} days among the "
            f"{ctx.record.count('Observation')} Observation resources retrieved for this "
            f"screening; {scope}; {judgement}",
        )
    items = []
    for item in listed:
        obs = item.resource
        value = quantity_of(obs)
        shown = describe_quantity(value) if value else str(obs.get("valueString") or "")
        label = _code_label(obs)
        note = " (preliminary)" if item.preliminary else ""
        note += " (date imprecise)" if item in split.ambiguous else ""
        items.append(
            f"{label} {shown} ({flags[id(obs)]}) on {observed_on(obs)}{note}".replace("  ", " ")
        )
    return Finding(
        "needs-review",
        f"{_plural(len(items), 'critical result')} within the last {days} days among the "
        f"Observation resources retrieved for this screening: {'; '.join(items)}; {scope}; "
        f"{judgement}",
        tuple(dict.fromkeys(reference(d.resource) for d in listed)),
    )


_CRITICAL_WORDS = ("critical", "panic")
_CRITICAL_CODES = frozenset({"HH", "LL", "AA"})


def critical_flag(observation: Resource, critical: ValueSet) -> str | None:
    """How a result is flagged critical, for listing; None when it is not.

    A coded flag in ``critical`` (v3 or v2 HH/LL/AA) is the usual case. Listing is for review
    only, so flags a lab wrote less formally count too: an interpretation whose text or display
    says "critical" or "panic", or HH/LL/AA without a code system.
    """
    coding = interpretation_in(observation, critical)
    if coding is not None:
        return str(coding.get("code"))
    for concept in interpretations(observation):
        words = [concept.get("text"), *(c.get("display") for c in codings(concept))]
        for word in words:
            if isinstance(word, str) and any(k in word.lower() for k in _CRITICAL_WORDS):
                return f"interpretation {word.strip()!r}"
        for c in codings(concept):
            code = str(c.get("code") or "").strip()
            if not c.get("system") and code in _CRITICAL_CODES:
                return f"{code}, no code system"
    return None


def _code_label(observation: Resource) -> str:
    code = observation.get("code")
    for coding in codings(code):
        if coding.get("display"):
            return str(coding["display"])
    text = child(code, "text")
    if text:
        return str(text)
    for coding in codings(code):
        if coding.get("code"):
            return str(coding["code"])
    return "result"


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-neutrophils": neutrophils,
    "inc-hemoglobin": hemoglobin,
    "inc-lvef": lvef,
    "exc-abnormal-labs": abnormal_labs,
}
