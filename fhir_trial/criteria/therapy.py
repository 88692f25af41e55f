"""Treatment history: inc-prior-therapy (Incl 12) and exc-b-cell-therapy (Excl 14).

inc-prior-therapy: an oral corticosteroid overlapping an immunosuppressant or a biologic for at
least ``Settings.prior_therapy_min_days`` days, ending at the screening date. Decisions of this
project, documented here and in the README:

- Route: an oral-corticosteroid record counts when its route is oral (``route-oral``), or when it
  states no route (maintenance steroids are oral, and Synthea-style requests state none); a stated
  intravenous route (``route-intravenous``: IV pulses) does not count. A stated route the screening
  cannot place (text only, or a code in neither route ValueSet, e.g. an unlisted intramuscular
  code) is not read as "another route": the record is weighed as possibly oral, and when the
  answer depends on it the criterion needs review (a person confirms the route), never met.
- Local use: a steroid, immunosuppressant or biologic whose drug name or stated route names a
  local dose form or route (RxNorm "... Topical Ointment", "... Ophthalmic Suspension", "...
  Inhalation Suspension"; "Topical route"), or whose stated route is coded in ``route-local``
  (also a bare code with no display), is not systemic therapy and does not count: cyclosporine
  eye drops or tacrolimus ointment are not an immunosuppressant regimen. The reason lists them.
- Gaps of at most ``Settings.prior_therapy_max_gap_days`` uncovered days between records of the same
  group (steroids; immunosuppressants and biologics together) are bridged, and bridged days count.
  Switching from one immunosuppressant or biologic to another is one continuous partner therapy.
- "Ending at as_of": the last day the two overlap may lie at most ``prior_therapy_max_gap_days``
  days before ``as_of`` (the same tolerance as a gap between two prescriptions). The duration is
  counted from the first to the last overlapping day, both included; the trailing days after the
  last dose are not counted as treatment.
- Partial dates: met only when the combination holds whichever day a partial date means; when it
  holds only for some readings, needs-review.
- A drug the record does not identify by code (words only, a Medication not in the record) is
  never "not that drug": when counting it as the steroid or as the partner gives the combination,
  needs-review.

exc-b-cell-therapy: a B-cell targeted drug with exposure in the ``b_cell_therapy_window_days`` days
before ``as_of`` (window edges included); the reason always names the last dose date. A drug
the record does not identify by code, in the window or undated, -> needs-review. A biologic
such as belimumab can satisfy inc-prior-therapy and trigger this exclusion at the same time; both
are reported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from fhir_trial.criteria.context import NOT_OBTAINED, Context
from fhir_trial.medications import (
    KNOWN_DRUG_VALUESETS,
    DrugRecord,
    Exposure,
    MedicationHistory,
    Period,
    clip,
    days_in,
    intersect,
    medication_history,
    merge,
    overlaps,
    unavailable_medication_types,
    unavailable_text,
    unidentified_text,
)
from fhir_trial.record import MEDICATION_TYPES
from fhir_trial.report import Finding
from fhir_trial.terminology import ValueSet

ALL_TYPES = ", ".join(MEDICATION_TYPES)


def history(ctx: Context) -> MedicationHistory:
    """The patient's medication exposures for this screening (once per evaluation: five
    criteria read it, and medication_history's own cache costs a key and a weak lookup)."""
    return ctx.remember(
        "medication history",
        lambda: medication_history(ctx.record, ctx.as_of, ctx.settings.default_supply_days),
    )


def known_drugs(ctx: Context) -> tuple[ValueSet, ...]:
    """The drug ValueSets: a record coded in one of them is identified even without a name."""
    return ctx.remember(
        "known drugs", lambda: tuple(ctx.valueset(vs_id) for vs_id in KNOWN_DRUG_VALUESETS)
    )


def unidentified(ctx: Context) -> list[Exposure]:
    """The dated records whose drug the screening cannot identify (MedicationHistory.unidentified
    against :func:`known_drugs`), once per evaluation: four criteria ask. Do not mutate."""
    return ctx.remember("unidentified", lambda: history(ctx).unidentified(known_drugs(ctx)))


def no_medication_record(ctx: Context, what: str) -> Finding:
    """Absence rule 4 over the four medication types."""
    hist = history(ctx)
    ignored = f", {hist.ignored} of them ignored for their status or intent" if hist.ignored else ""
    return Finding(
        "not-met",
        f"no qualifying record ({what}) in {hist.retrieved} retrieved medication resources "
        f"({ALL_TYPES}{ignored})",
    )


def medication_unknown(ctx: Context, found: str, need: str) -> Finding | None:
    """Rule 1 for medication criteria: unknown when a medication type failed to load."""
    failed = unavailable_medication_types(ctx.record)
    if not failed:
        return None
    return Finding(
        "unknown",
        f"{found}; {unavailable_text(ctx.record, failed)} could not be obtained, {NOT_OBTAINED}",
        missing=tuple(f"{t} resources ({need})" for t in failed),
    )


# ----------------------------------------------------------------------------- inc-prior-therapy
@dataclass(frozen=True)
class _Combination:
    """How the oral steroid and partner periods combine for one reading of the dates."""

    steroid: list[Period]
    partner: list[Period]
    combined: list[Period]
    current: Period | None  # the combined period ending close enough to as_of
    long_enough: bool


def _combine(
    ctx: Context, steroids: Sequence[Exposure], partners: Sequence[Exposure], certain: bool
) -> _Combination:
    gap = ctx.settings.prior_therapy_max_gap_days
    steroid = _periods(steroids, certain, ctx.as_of, gap)
    partner = _periods(partners, certain, ctx.as_of, gap)
    combined = merge(intersect(steroid, partner), gap)
    current = None
    if combined and (ctx.as_of - combined[-1][1]).days <= gap:
        current = combined[-1]
    long_enough = current is not None and days_in(current) >= ctx.settings.prior_therapy_min_days
    return _Combination(steroid, partner, combined, current, long_enough)


def _periods(
    exposures: Sequence[Exposure], certain: bool, as_of: dt.date, gap: int
) -> list[Period]:
    """The exposures' periods (certain or possible) up to ``as_of``, merged across ``gap`` days.

    A function of the module, not one nested in _combine: compiled (setup.py), a nested function
    and the frame it closes over hold each other, and live until the cyclic collector runs."""
    found = [p for p in (e.period(certain) for e in exposures) if p is not None]
    return merge(clip(found, as_of), gap)


def _names(exposures: Sequence[Exposure], valuesets: Sequence[ValueSet]) -> str:
    names: dict[str, None] = {}
    for exposure in exposures:
        for vs in valuesets:
            if exposure.matches(vs):
                names[exposure.label(vs)] = None
                break
    return ", ".join(names) or "?"


def _within(exposures: Sequence[Exposure], period: Period) -> list[Exposure]:
    return [e for e in exposures if overlaps(e.possible(), period)]


def prior_therapy(ctx: Context) -> Finding:
    """inc-prior-therapy: oral corticosteroid with an immunosuppressant or biologic, >= 182 days."""
    settings = ctx.settings
    hist = history(ctx)
    ocs_vs, partner_vs, local_vs, oral_vs, known_routes, _ = prior_therapy_valuesets(ctx)
    # A drug for local use (a cream, eye drops, an inhaler) is not systemic therapy: not counted.
    # Each is kept with what says so (a word, or a coded route), for the reason.
    local: list[tuple[Exposure, str]] = []
    all_steroids: list[Exposure] = []
    partners: list[Exposure] = []
    steroids: list[Exposure] = []  # oral or no route
    # A route the screening cannot place (text only, an unlisted code) is not a stated non-oral
    # route: such a steroid may count, but only after a person confirms the route.
    unread: list[Exposure] = []
    maybe_oral: list[Exposure] = []  # the oral or unrouted ones plus `unread`
    non_oral: list[Exposure] = []
    hcq: list[Exposure] = []
    # One pass; what each record is (a steroid, a partner, for local use, its route) is asked
    # once per drug (_roles), whatever the number of its records.
    for e in hist.exposures:
        steroid, partner, why, oral, unplaced, may_be_oral, is_hcq = roles_of(e, ctx)
        if is_hcq:
            hcq.append(e)
        if (steroid or partner) and why:
            local.append((e, why))
            continue
        if steroid:
            all_steroids.append(e)
            if oral:
                steroids.append(e)
            if unplaced:
                unread.append(e)
            (maybe_oral if may_be_oral else non_oral).append(e)
        if partner:
            partners.append(e)
    rule = (
        f"at least {settings.prior_therapy_min_days} days required, ending within "
        f"{settings.prior_therapy_max_gap_days} days of {ctx.as_of.isoformat()}, gaps of up to "
        f"{settings.prior_therapy_max_gap_days} days bridged"
    )

    sure = _combine(ctx, steroids, partners, certain=True)
    if sure.long_enough and sure.current is not None:
        period = sure.current
        used_steroids = _within(steroids, period)
        used_partners = _within(partners, period)
        return Finding(
            "met",
            f"oral corticosteroid ({_names(used_steroids, [ocs_vs])}) together with "
            f"{_names(used_partners, partner_vs)} from {period[0].isoformat()} to "
            f"{period[1].isoformat()}: {days_in(period)} days ({rule})",
            tuple(e.reference for e in (*used_steroids, *used_partners)),
        )

    evidence = tuple(e.reference for e in (*maybe_oral, *partners, *non_oral, *hcq)) + tuple(
        e.reference for e, _ in local
    )
    # Without unplaceable routes the "possibly oral" steroids are the oral ones: same combination.
    if_oral = _combine(ctx, maybe_oral, partners, certain=True) if unread else sure
    found = _Found(maybe_oral, unread, partners, non_oral, hcq, local)
    explanation = _why_not(ctx, if_oral, found, ocs_vs, partner_vs)
    need = f"oral corticosteroid and immunosuppressant/biologic history for the last {settings.prior_therapy_min_days} days"
    unknown = medication_unknown(ctx, explanation, need)
    if unknown is not None:
        return Finding(unknown.status, unknown.reason, evidence, unknown.missing)
    if hist.usable == 0:
        ignored = f" ({hist.ignored} ignored for their status or intent)" if hist.ignored else ""
        return Finding(
            "unknown",
            f"no medication record of any type{ignored}: the record cannot show whether the "
            "patient was treated, so this is unknown rather than not-met",
            missing=(
                f"medication history ({ALL_TYPES}) covering the last {settings.prior_therapy_min_days} days",
            ),
        )
    if if_oral.long_enough and if_oral.current is not None:
        period = if_oral.current
        return Finding(
            "needs-review",
            f"{explanation}; counting it as oral, oral corticosteroid "
            f"({_names(_within(maybe_oral, period), [ocs_vs])}) together with "
            f"{_names(_within(partners, period), partner_vs)} from {period[0].isoformat()} to "
            f"{period[1].isoformat()}: {days_in(period)} days: a person must confirm the route "
            f"was oral ({rule})",
            evidence,
        )
    # Every date exact: the possible periods are the certain ones, whose combination (if_oral)
    # was not long enough; only a partial date can make this one differ.
    maybe = None if _all_exact(maybe_oral, partners) else _combine(ctx, maybe_oral, partners, False)
    if maybe is not None and maybe.long_enough and maybe.current is not None:
        partial = [e.reference for e in (*maybe_oral, *partners) if e.partial]
        return Finding(
            "needs-review",
            f"{explanation}; with partial dates ({', '.join(partial)}) the combination may have "
            f"lasted {days_in(maybe.current)} days: a person must check the exact dates ({rule})",
            evidence,
        )
    # Drugs the record does not identify by code (words only, a Medication not in the record)
    # may be the steroid (when maybe oral) or the partner: if counting them so gives the
    # combination, a person reads them (never not-met, never met). One record cannot be both,
    # so both sides take them only when there are several.
    known = known_drugs(ctx)
    unnamed = [e for e in unidentified(ctx) if not e.local_use_in(local_vs)]
    if unnamed:
        unnamed_oral = [e for e in unnamed if _maybe_oral(e, oral_vs, known_routes)]
        sides = [
            ([*maybe_oral, *unnamed_oral], partners),
            (maybe_oral, [*partners, *unnamed]),
        ]
        if len(unnamed) > 1:
            sides.append(([*maybe_oral, *unnamed_oral], [*partners, *unnamed]))
        alt = next(
            (
                combo
                for side_steroids, side_partners in sides
                if (combo := _combine(ctx, side_steroids, side_partners, certain=False)).long_enough
            ),
            None,
        )
        if alt is not None and alt.current is not None:
            return Finding(
                "needs-review",
                f"{explanation}; {len(unnamed)} medication record(s) whose drug the screening "
                f"cannot identify (no code it knows and no name: {unidentified_text(unnamed)}) "
                "would give "
                f"{days_in(alt.current)} days of combined therapy if they were an oral "
                f"corticosteroid or an immunosuppressant/biologic: a person must read them ({rule})",
                (*evidence, *(e.reference for e in unnamed)),
            )
    undated = [
        u
        for u in hist.undated
        if not u.local_use_in(local_vs)
        and (
            (u.matches(ocs_vs) and _maybe_oral(u, oral_vs, known_routes))
            or _is_partner(u, partner_vs)
            or not u.identified(known)
        )
    ]
    if undated:
        return Finding(
            "needs-review",
            f"{explanation}; {len(undated)} relevant record(s) cannot be placed in time ("
            + "; ".join(f"{u.reference} {u.drug}: {u.why}" for u in undated)
            + ")",
            (*evidence, *(u.reference for u in undated)),
        )
    return Finding("not-met", f"{explanation} ({rule})", evidence)


@dataclass(frozen=True)
class _Found:
    """The records inc-prior-therapy weighed, by role."""

    steroids: Sequence[Exposure]  # oral, no route, or a route the screening cannot place
    unread: Sequence[Exposure]  # of those, the ones whose stated route cannot be placed
    partners: Sequence[Exposure]
    non_oral: Sequence[Exposure]  # a stated, readable route that is not oral (IV)
    hcq: Sequence[Exposure]
    # steroids and partners for local use (not systemic therapy), with what says so
    local: Sequence[tuple[Exposure, str]]


_Roles = tuple[bool, bool, str, bool, bool, bool, bool]
_PriorTherapyValueSets = tuple[
    ValueSet, Sequence[ValueSet], ValueSet, ValueSet, Sequence[ValueSet], ValueSet
]


def _roles(record: DrugRecord, valuesets: _PriorTherapyValueSets) -> _Roles:
    """What inc-prior-therapy asks of a record's drug: whether it is an oral corticosteroid, an
    immunosuppressant or biologic, what says it is for local use ("" when nothing does),
    whether its route counts as oral (oral or none stated), whether its stated route cannot be
    placed, whether it may be oral (:func:`_maybe_oral`), and whether it is hydroxychloroquine.
    """
    ocs_vs, partner_vs, local_vs, oral_vs, known_routes, hcq_vs = valuesets
    steroid = record.matches(ocs_vs)
    partner = _is_partner(record, partner_vs)
    return (
        steroid,
        partner,
        record.local_use_in(local_vs) if steroid or partner else "",
        not record.route_stated() or record.route_in(oral_vs),
        record.route_unreadable(known_routes),
        _maybe_oral(record, oral_vs, known_routes),
        record.matches(hcq_vs),
    )


def prior_therapy_valuesets(ctx: Context) -> _PriorTherapyValueSets:
    """The ValueSets :func:`_roles` asks about, from the terminology by their fixed ids."""
    oral = ctx.valueset("route-oral")
    return (
        ctx.valueset("oral-corticosteroids"),
        (ctx.valueset("immunosuppressants"), ctx.valueset("sle-biologics")),
        ctx.valueset("route-local"),
        oral,
        (oral, ctx.valueset("route-intravenous")),
        ctx.valueset("hydroxychloroquine"),
    )


def roles_of(record: DrugRecord, ctx: Context) -> _Roles:
    """:func:`_roles` against :func:`prior_therapy_valuesets`, remembered with the record's
    other answers (:attr:`DrugRecord._answers`, shared by the records that write the same drug
    the same way, within a patient and across patients).

    Why the same: every answer depends on the drug's codes, names and routes, which the records
    sharing the answers share, and on the ValueSets, which are the terminology's own, got by
    fixed ids: the answers are kept under the terminology's identity, with the terminology
    itself so that its identity stays its own (tests/test_eval_fast_paths.py).
    """
    answers = record._answers
    key = ("inc-prior-therapy roles", id(ctx.terminology))
    known = answers.get(key)
    if known is not None:
        return cast(_Roles, known[1])
    found = _roles(record, prior_therapy_valuesets(ctx))
    answers[key] = (ctx.terminology, found)
    return found


def _is_partner(record: DrugRecord, partner_vs: Sequence[ValueSet]) -> bool:
    """An immunosuppressant or a biologic."""
    return any(map(record.matches, partner_vs))  # map, not a generator: asked for every record


def _all_exact(*groups: Sequence[Exposure]) -> bool:
    """Whether every exposure's first and last day are exact (none is partial): then each one's
    certain period is its possible period, and _combine reads both alike
    (tests/test_eval_fast_paths.py compares with combining both)."""
    return not any(e.partial for group in groups for e in group)


def _maybe_oral(record: DrugRecord, oral_vs: ValueSet, known: Sequence[ValueSet]) -> bool:
    """A steroid record that may be oral: no route (counts as oral, README), an oral route, or a
    route the screening cannot place (counts only after review)."""
    return not record.route_stated() or record.route_in(oral_vs) or record.route_unreadable(known)


def _when(items: Sequence[Exposure]) -> str:
    first_day = min(e.start.start for e in items).isoformat()
    last_day = max(e.end.end for e in items).isoformat()
    return f"on {first_day}" if first_day == last_day else f"from {first_day} to {last_day}"


def _why_not(
    ctx: Context,
    combination: _Combination,
    found: _Found,
    ocs_vs: ValueSet,
    partner_vs: Sequence[ValueSet],
) -> str:
    steroids, partners, hcq = found.steroids, found.partners, found.hcq
    parts: list[str] = []
    if not steroids:
        parts.append("no oral corticosteroid record")
    if found.non_oral:
        groups: dict[tuple[str, str], list[Exposure]] = {}
        for e in found.non_oral:
            key = (e.label(ocs_vs), e.route_label() or "a non-oral route")
            groups.setdefault(key, []).append(e)
        for (drug, route), items in groups.items():
            count = f"{len(items)} records " if len(items) > 1 else ""
            parts.append(
                f"{drug} by {route} ({count}{_when(items)}) does not count: only oral "
                "corticosteroids count, IV pulses do not"
            )
    for e in found.unread:
        parts.append(
            f"{e.label(ocs_vs)} with {e.route_unreadable_text()} ({_when([e])}): the screening "
            "reads coded routes only and cannot tell whether this one is oral, so the record is "
            "weighed as possibly oral, not as a non-oral route"
        )
    for e, why in found.local:
        parts.append(
            f"{e.label(ocs_vs) if e.matches(ocs_vs) else _names([e], partner_vs)} "
            f"({_when([e])}) is for local use ('{why}') and does not count as systemic "
            "therapy"
        )
    if not partners:
        parts.append("no immunosuppressant or biologic record")
    if hcq:
        parts.append(
            f"hydroxychloroquine ({', '.join(e.describe() for e in hcq)}) does not count as an "
            "immunosuppressant or biologic for this criterion"
        )
    if steroids and partners:
        gap = ctx.settings.prior_therapy_max_gap_days
        if not combination.combined:
            parts.append(
                f"oral corticosteroid ({_names(steroids, [ocs_vs])}) and "
                f"{_names(partners, partner_vs)} were never taken at the same time"
            )
        elif combination.long_enough:
            pass  # the caller states the combination
        elif combination.current is None:
            last = combination.combined[-1]
            parts.append(
                f"the last period of combined therapy, {last[0].isoformat()} to "
                f"{last[1].isoformat()}, ended {(ctx.as_of - last[1]).days} days before "
                f"{ctx.as_of.isoformat()} (more than {gap} days)"
            )
        else:
            period = combination.current
            parts.append(
                f"combined therapy ({_names(_within(steroids, period), [ocs_vs])} with "
                f"{_names(_within(partners, period), partner_vs)}) from {period[0].isoformat()} "
                f"to {period[1].isoformat()} lasted only {days_in(period)} days"
            )
    return "; ".join(parts)


# ----------------------------------------------------------------------------- exc-b-cell-therapy
def _last_dose(exposures: Sequence[Exposure], vs: ValueSet, as_of: dt.date) -> str:
    """'last dose date 2026-11-10 (rituximab, MedicationAdministration 2026-11-10; ...)'."""
    last = max(exposures, key=lambda e: (min(e.end.end, as_of), e.end.start))
    if last.end.start >= as_of:
        day = f"{as_of.isoformat()} (exposure ongoing at screening)"
    elif last.end.exact:
        day = last.end.start.isoformat()
    else:
        day = f"between {last.end.start.isoformat()} and {min(last.end.end, as_of).isoformat()}"
    return (
        f"last dose date {day} ({last.label(vs)}, {last.resource_type} {last.describe()}; "
        f"{last.basis})"
    )


def b_cell_therapy(ctx: Context) -> Finding:
    """exc-b-cell-therapy: B-cell targeted drug exposure within the window before as_of."""
    days = ctx.settings.b_cell_therapy_window_days
    window = (ctx.days_before(days), ctx.as_of)
    window_text = f"the {days} days before {ctx.as_of.isoformat()} (from {window[0].isoformat()})"
    vs = ctx.valueset("b-cell-therapies")
    hist = history(ctx)
    exposures = [e for e in hist.with_drug(vs) if e.start.start <= ctx.as_of]
    undated = hist.undated_with_drug(vs)
    evidence = tuple(e.reference for e in exposures) + tuple(u.reference for u in undated)

    last_text = _last_dose(exposures, vs, ctx.as_of) if exposures else ""
    certain = [e for e in exposures if (p := e.certain()) is not None and overlaps(p, window)]
    if certain:
        return Finding(
            "met",
            f"B-cell targeted therapy within {window_text}: {last_text}",
            tuple(e.reference for e in certain),
        )
    possible = [e for e in exposures if overlaps(e.possible(), window)]
    if possible:
        return Finding(
            "needs-review",
            f"{last_text}; a partial date leaves open whether it falls within {window_text}",
            evidence,
        )
    found = last_text or (
        "no dated B-cell targeted therapy record"
        if undated
        else "no B-cell targeted therapy record"
    )
    unknown = medication_unknown(ctx, found, f"B-cell targeted therapy in {window_text}")
    if unknown is not None:
        return Finding(unknown.status, unknown.reason, evidence, unknown.missing)
    # A drug the record does not identify by code (words only, a Medication not in the record)
    # given in the window, or undated, may be a B-cell therapy: a person reads it.
    known = known_drugs(ctx)
    unnamed = [
        *(
            e
            for e in unidentified(ctx)
            if e.start.start <= ctx.as_of and overlaps(e.possible(), window)
        ),
        *hist.undated_unidentified(known),
    ]
    if undated or unnamed:
        parts = [f"{u.reference} ({u.drug}) cannot be dated: {u.why}" for u in undated]
        if unnamed:
            parts.append(
                f"{len(unnamed)} medication record(s) in the window or undated whose drug "
                "the screening cannot identify (no code it knows and no name): "
                f"{unidentified_text(unnamed)}"
                ": is it a B-cell targeted therapy?"
            )
        return Finding(
            "needs-review",
            f"{found}; " + "; ".join(parts),
            (*evidence, *(u.reference for u in unnamed)),
        )
    if exposures:
        latest = max(exposures, key=lambda e: min(e.end.end, ctx.as_of))
        gap = (ctx.as_of - min(latest.end.end, ctx.as_of)).days
        at_least = "at least " if not latest.end.exact else ""
        return Finding(
            "not-met",
            f"{last_text}: {at_least}{gap} days before {ctx.as_of.isoformat()}, outside "
            f"{window_text}",
            evidence,
        )
    return no_medication_record(ctx, "B-cell targeted therapy")


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-prior-therapy": prior_therapy,
    "exc-b-cell-therapy": b_cell_therapy,
}
