"""Infections: exc-iv-antibiotics (Excl 2), exc-severe-herpes (Excl 6), exc-recent-herpes-zoster (Excl 10).

Windows are inclusive of both edges: "within 7 days before infusion_date" is the days from
``infusion_date - 7`` to ``infusion_date``. A partial date decides only when the whole span lies on
one side of a window edge; otherwise the criterion needs review and says why.

exc-iv-antibiotics: a systemic antibacterial given by an intravenous route with exposure in the
window -> met. A systemic antibacterial in the window with no stated route, or with a route the
screening cannot place (text only, or a code in none of ``route-oral``, ``route-intravenous`` and
``route-local``) -> needs-review (the route decides). Known non-IV routes: a route in
``route-oral``, and local use (a route in ``route-local``, also a bare code without display, or a
local dose-form or route word in the drug's names or route: eye drops, an ointment), unless an IV
route is stated as well. An IV (or unrouted) antibiotic still running at ``as_of`` with no end
while the window lies after ``as_of`` (infusion_date later than the screening) -> needs-review: it
may run into the window. An active infection Condition without IV antibiotics -> needs-review.
A drug the record does not identify by code (words only, a Medication not in the record) in the
window, by IV or an unknown route, -> needs-review (it may be an antibiotic); started in the herpes
window, it may be an antiviral -> needs-review.

exc-recent-herpes-zoster: a herpes simplex / zoster / varicella Condition with onset, recorded or
abatement date within the window before as_of -> met (an onsetPeriod counts by its start and its
end: one that runs into the window is recent). Otherwise an antiviral started in the window, or such
a Condition still recorded as active (or without clinicalStatus) with older dates (is it current?),
-> needs-review.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fhir_trial.criteria.context import (
    Context,
    category_unavailable,
    condition_activity,
    conditions_in,
    first_code,
    none_found,
)
from fhir_trial.criteria.therapy import history, medication_unknown, unidentified
from fhir_trial.elements import child
from fhir_trial.fhirdates import DateSpan, parse_span
from fhir_trial.medications import Exposure, Period, overlaps, unidentified_text
from fhir_trial.record import Resource
from fhir_trial.report import Finding
from fhir_trial.terminology import ValueSet


def _ref(ctx: Context, resource: Mapping[str, Any]) -> str:
    return ctx.record.reference_to(resource)


def place_in_window(span: DateSpan, window: Period) -> str:
    """'inside', 'outside' or 'straddles' for a (possibly partial) date and an inclusive window."""
    if window[0] <= span.start and span.end <= window[1]:
        return "inside"
    if span.end < window[0] or span.start > window[1]:
        return "outside"
    return "straddles"


def _window_text(days: int, anchor_name: str, window: Period) -> str:
    return (
        f"the {days} days before {anchor_name} {window[1].isoformat()} "
        f"({window[0].isoformat()} to {window[1].isoformat()})"
    )


# ----------------------------------------------------------------------------- exc-iv-antibiotics
def iv_antibiotics(ctx: Context) -> Finding:
    """exc-iv-antibiotics: IV systemic antibacterial within the days before the infusion."""
    days = ctx.settings.iv_antibiotics_window_days
    window = (ctx.days_before(days, ctx.infusion_date), ctx.infusion_date)
    window_text = _window_text(days, "the infusion date", window)
    antibacterials = ctx.valueset("systemic-antibacterials")
    iv_vs = ctx.valueset("route-intravenous")
    local_vs = ctx.valueset("route-local")
    known_routes = (ctx.valueset("route-oral"), iv_vs, local_vs)
    hist = history(ctx)
    antibiotics = hist.with_drug(antibacterials)
    in_window = [e for e in antibiotics if overlaps(e.possible(), window)]
    # Local use (eye drops, an ointment, ear drops; by a route-local code or a local word) is a
    # known non-IV route, like oral: the record needs no person to read its route. A stated IV
    # route still wins. Keyed by identity: records without an id share a reference.
    local = {
        id(e): why
        for e in antibiotics
        if not e.route_in(iv_vs) and (why := e.local_use_in(local_vs))
    }

    iv = [e for e in in_window if e.route_in(iv_vs)]
    sure = [e for e in iv if (p := e.certain()) is not None and overlaps(p, window)]
    if sure:
        return Finding(
            "met",
            "intravenous antibiotic within "
            + window_text
            + ": "
            + "; ".join(
                f"{e.label(antibacterials)} {e.route_label()} {e.describe()} ({e.resource_type})"
                for e in sure
            ),
            tuple(e.reference for e in sure),
        )

    notes: list[str] = []
    review: list[str] = []
    evidence: list[str] = []
    if iv:
        review.append(
            "IV antibiotic with a partial date that may fall within the window: "
            + "; ".join(f"{e.label(antibacterials)} {e.describe()}" for e in iv)
        )
        evidence += [e.reference for e in iv]
    unrouted = [e for e in in_window if not e.route_stated() and id(e) not in local]
    if unrouted:
        review.append(
            "systemic antibiotic in the window with no route recorded (IV or not decides): "
            + "; ".join(
                f"{e.label(antibacterials)} {e.describe()} ({e.resource_type})" for e in unrouted
            )
        )
        evidence += [e.reference for e in unrouted]
    unread = [e for e in in_window if e.route_unreadable(known_routes) and id(e) not in local]
    if unread:
        review.append(
            "systemic antibiotic in the window whose route the screening cannot place (it reads "
            "coded routes only; IV or not decides): "
            + "; ".join(
                f"{e.label(antibacterials)} {e.route_unreadable_text()} {e.describe()} "
                f"({e.resource_type})"
                for e in unread
            )
        )
        evidence += [e.reference for e in unread]
    running = [
        e
        for e in _running_into_window(ctx, antibiotics, window, iv_vs, known_routes)
        if id(e) not in local
    ]
    if running:
        review.append(
            f"antibiotic order or course still running at screening ({ctx.as_of.isoformat()}) "
            f"with no end date, by IV or an unknown route; the window lies after the screening "
            "date, so the record cannot show whether it stops before the infusion (confirm it "
            "has ended): "
            + "; ".join(
                f"{e.label(antibacterials)} {e.route_label() or 'no route recorded'} "
                f"({e.resource_type}, {e.basis})"
                for e in running
            )
        )
        evidence += [e.reference for e in running]
    # A drug the record does not identify by code (words only, a Medication not in the record)
    # in the window may be an antibiotic: unless its route is known not to be IV, a person reads
    # it, as for an antibiotic without a route.
    unnamed = [
        e
        for e in unidentified(ctx)
        if overlaps(e.possible(), window)
        and (
            e.route_in(iv_vs)
            or (
                not e.local_use_in(local_vs)
                and (not e.route_stated() or e.route_unreadable(known_routes))
            )
        )
    ]
    if unnamed:
        review.append(
            "medication in the window whose drug the screening cannot identify (no code it knows "
            f"and no name), by IV or an unknown route: {unidentified_text(unnamed)}: is it an "
            "antibiotic?"
        )
        evidence += [e.reference for e in unnamed]
    # Only a known non-IV route (oral, or local use) rules a record out; see `unread` above.
    oral = [
        e
        for e in in_window
        if e.route_in(known_routes[0]) and not e.route_in(iv_vs) and id(e) not in local
    ]
    topical = [e for e in in_window if id(e) in local]
    if oral or topical:
        notes.append(
            "non-IV antibiotic in the window does not count: "
            + "; ".join(
                [f"{e.label(antibacterials)} {e.route_label()} {e.describe()}" for e in oral]
                + [
                    f"{e.label(antibacterials)} for local use ('{local[id(e)]}') {e.describe()}"
                    for e in topical
                ]
            )
        )
        evidence += [e.reference for e in (*oral, *topical)]

    infections: list[Resource] = []
    if ctx.record.usable("Condition"):
        infections = conditions_in(ctx, "active-infections", active_only=True)
    if infections:
        review.append(
            "active infection without IV antibiotics recorded: "
            + ", ".join(first_code(c.get("code")) for c in infections)
            + " (is it treated with IV antibiotics?)"
        )
        evidence += [_ref(ctx, c) for c in infections]

    if review:
        return Finding("needs-review", "; ".join(review + notes), tuple(evidence))
    found = "; ".join(notes) or f"no IV antibiotic within {window_text}"
    unknown = medication_unknown(ctx, found, f"antibiotics given in {window_text}")
    if unknown is None:
        unknown = category_unavailable(ctx, "Condition")
    if unknown is not None:
        return Finding(unknown.status, unknown.reason, tuple(evidence), unknown.missing)
    count = ctx.record.count("Condition")
    ignored = f" ({hist.ignored} ignored for their status or intent)" if hist.ignored else ""
    return Finding(
        "not-met",
        f"{found}; no qualifying record (IV antibiotic in the window) in {hist.retrieved} retrieved "
        f"medication resources{ignored} and no active infection in {count} retrieved Condition "
        "resources",
        tuple(evidence),
    )


def _running_into_window(
    ctx: Context,
    antibiotics: Sequence[Exposure],
    window: Period,
    iv_vs: ValueSet,
    known_routes: Sequence[ValueSet],
) -> list[Exposure]:
    """Antibiotics by IV, no route or an unplaceable route that are still running at ``as_of``
    with no end (an active order, an in-progress infusion) while the window starts after
    ``as_of``: their exposure stops at the screening date only because nothing later is known,
    so they may well reach the window. Decision (README): needs-review, not met (the order may
    end before the infusion) and not a confident not-met."""
    if window[0] <= ctx.as_of:
        return []
    return [
        e
        for e in antibiotics
        if e.open_ended
        and not overlaps(e.possible(), window)
        and (e.route_in(iv_vs) or not e.route_stated() or e.route_unreadable(known_routes))
    ]


# ----------------------------------------------------------------------------- exc-severe-herpes
def severe_herpes(ctx: Context) -> Finding:
    """exc-severe-herpes: any history of herpetic encephalitis, ocular or disseminated herpes."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    found = conditions_in(ctx, "severe-herpes")
    if found:
        return Finding(
            "met",
            "history of severe herpetic infection: " + "; ".join(_condition_text(c) for c in found),
            tuple(_ref(ctx, c) for c in found),
        )
    return none_found(ctx, "Condition", "severe herpetic infection")


def _condition_text(condition: Mapping[str, Any]) -> str:
    onset = condition.get("onsetDateTime") or child(condition.get("onsetPeriod"), "start")
    when = f" (onset {onset})" if onset else ""
    return f"{first_code(condition.get('code'))}{when}"


# ----------------------------------------------------------------------------- exc-recent-herpes-zoster
def _condition_dates(condition: Mapping[str, Any]) -> list[tuple[str, DateSpan]]:
    candidates = (
        ("onset", condition.get("onsetDateTime")),
        ("onset", child(condition.get("onsetPeriod"), "start")),
        # an onset period that runs into the window: the infection was present in it
        ("onset period end", child(condition.get("onsetPeriod"), "end")),
        ("recorded", condition.get("recordedDate")),
        ("abatement", condition.get("abatementDateTime")),
        ("abatement", child(condition.get("abatementPeriod"), "end")),
        ("abatement", child(condition.get("abatementPeriod"), "start")),
    )
    return [(name, span) for name, raw in candidates if (span := parse_span(raw)) is not None]


def _span_text(span: DateSpan) -> str:
    return span.start.isoformat() if span.exact else f"{span.start}..{span.end}"


def recent_herpes_zoster(ctx: Context) -> Finding:
    """exc-recent-herpes-zoster: herpes / zoster / varicella dated within the window before as_of."""
    days = ctx.settings.herpes_window_days
    window = (ctx.days_before(days), ctx.as_of)
    window_text = _window_text(days, "screening", window)
    met: list[str] = []
    met_refs: list[str] = []
    review: list[str] = []
    evidence: list[str] = []
    conditions: list[Resource] = []
    if ctx.record.usable("Condition"):
        conditions = conditions_in(ctx, "herpes-varicella-infection")
    for condition in conditions:
        label = first_code(condition.get("code"))
        dates = _condition_dates(condition)
        places = [(name, span, place_in_window(span, window)) for name, span in dates]
        inside = [(n, s) for n, s, p in places if p == "inside"]
        if inside:
            met.append(f"{label}, {inside[0][0]} {_span_text(inside[0][1])}")
            met_refs.append(_ref(ctx, condition))
            continue
        straddles = [(n, s) for n, s, p in places if p == "straddles"]
        if straddles:
            review.append(
                f"{label}: partial {straddles[0][0]} date {_span_text(straddles[0][1])} may or "
                "may not fall within the window"
            )
            evidence.append(_ref(ctx, condition))
        elif (activity := condition_activity(condition)) != "inactive":
            shown = ", ".join(f"{n} {_span_text(s)}" for n, s in dates) or "no date"
            said = (
                "is still recorded as active" if activity == "active" else "has no clinical status"
            )
            review.append(f"{label} {said} ({shown}): are there signs of infection now?")
            evidence.append(_ref(ctx, condition))
    if met:
        return Finding(
            "met",
            f"herpes or varicella-zoster infection within {window_text}: " + "; ".join(met),
            tuple(met_refs),
        )

    antivirals_vs = ctx.valueset("antivirals-herpes")
    hist = history(ctx)
    for exposure in hist.with_drug(antivirals_vs):
        place = place_in_window(exposure.start, window)
        if place != "outside":
            certainty = "started" if place == "inside" else "may have started (partial date)"
            review.append(
                f"antiviral {exposure.label(antivirals_vs)} {certainty} within the window "
                f"(taken {exposure.describe()}): was it for herpes or zoster?"
            )
            evidence.append(exposure.reference)
    # A drug the record does not identify by code started in the window may be an antiviral.
    unnamed = [e for e in unidentified(ctx) if place_in_window(e.start, window) != "outside"]
    if unnamed:
        review.append(
            "medication started within the window whose drug the screening cannot identify "
            f"(no code it knows and no name): {unidentified_text(unnamed)}: is it an antiviral "
            "for herpes or zoster?"
        )
        evidence += [e.reference for e in unnamed]
    if review:
        return Finding("needs-review", "; ".join(review), tuple(evidence))

    unknown = category_unavailable(ctx, "Condition")
    if unknown is None:
        unknown = medication_unknown(
            ctx,
            f"no herpes or varicella-zoster record within {window_text}",
            "antivirals started in the window",
        )
    if unknown is not None:
        return unknown
    older = f" ({len(conditions)} older herpes record(s) outside the window)" if conditions else ""
    return Finding(
        "not-met",
        f"no qualifying record (herpes or varicella-zoster within {window_text}){older} in "
        f"{ctx.record.count('Condition')} retrieved Condition resources, and no antiviral started "
        f"in the window in {hist.retrieved} retrieved medication resources",
        tuple(_ref(ctx, c) for c in conditions),
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-iv-antibiotics": iv_antibiotics,
    "exc-severe-herpes": severe_herpes,
    "exc-recent-herpes-zoster": recent_herpes_zoster,
}
