"""Autoantibodies: inc-ana, inc-anti-dsdna, inc-anti-sm (the parts of inc-autoantibody).

Any qualifying final result at any time -> ``met``; ``not-met`` only when every result is below
threshold / normal; results that cannot be read, preliminary ones, or ANA not measured by
immunofluorescence -> ``needs-review``; no result at all -> ``unknown`` (absence rule 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fhir_trial.criteria.context import NO_MEASUREMENT, Context, category_unavailable
from fhir_trial.criteria.labs import reference
from fhir_trial.observations import (
    Reading,
    Resource,
    above_normal,
    coded_value,
    date_text,
    interpretation_in,
    interpretation_labels,
    meets_at_least,
    observation_status,
    observation_time,
    observed_on,
    read_titer,
    value_beside_absent_reason,
)
from fhir_trial.report import Finding

Reader = Callable[[Resource], Reading]


def decide_serology(
    ctx: Context,
    what: str,
    results: Iterable[tuple[Resource, Reading]],
    *,
    requirement: str,
    missing: str,
    review_only: Iterable[tuple[Resource, Reading, str]] = (),
) -> Finding:
    """Combine per-result readings into a status (see the module docstring).

    ``review_only`` are extra results that can only ever be reviewed (ANA by another method),
    each with the reason why.
    """
    positives: list[tuple[Resource, Reading]] = []
    negatives: list[tuple[Resource, Reading]] = []
    review: list[tuple[Resource, str]] = []
    ignored = 0
    later = 0
    for obs, reading in results:
        status = observation_status(obs)
        if status == "ignored":
            ignored += 1
            continue
        if _after_screening(ctx, obs):
            later += 1
            continue
        said = f"{reading.detail} on {observed_on(obs)}"
        if status == "preliminary":
            review.append((obs, f"preliminary result: {said}"))
        elif reading.outcome == "positive":
            positives.append((obs, reading))
        elif reading.outcome == "negative":
            negatives.append((obs, reading))
        else:
            review.append((obs, f"cannot be read: {said}"))
    for obs, reading, why in review_only:
        if observation_status(obs) == "ignored":
            ignored += 1
            continue
        if _after_screening(ctx, obs):
            later += 1
            continue
        review.append((obs, f"{why}: {reading.detail} on {observed_on(obs)}"))
    note = f"; {ignored} result(s) with another status (not final) ignored" if ignored else ""
    if later:
        note += f"; {later} result(s) dated after the screening date ({ctx.as_of}) ignored"
    if positives:
        obs, reading = _latest(positives)
        return Finding(
            "met",
            f"{what} {reading.detail} on {observed_on(obs)} ({requirement}; any time){note}",
            tuple(reference(o) for o, _ in positives),
        )
    if review:
        return Finding(
            "needs-review",
            f"{what}: {'; '.join(why for _, why in review)}"
            + (f"; other results not above threshold: {_list(negatives)}" if negatives else "")
            + note,
            tuple(reference(o) for o, _ in review) + tuple(reference(o) for o, _ in negatives),
        )
    if negatives:
        return Finding(
            "not-met",
            f"every {what} result is below threshold / normal: {_list(negatives)} "
            f"({requirement}){note}",
            tuple(reference(o) for o, _ in negatives),
        )
    return Finding(
        "unknown",
        f"no {what} result in {ctx.record.count('Observation')} retrieved Observation resources"
        f"{note}; {NO_MEASUREMENT}",
        missing=(missing,),
    )


def _after_screening(ctx: Context, observation: Resource) -> bool:
    """Dated wholly after as_of: "any time" means up to the screening date (a back-dated screening
    must not use results that did not exist yet). Undated results still count."""
    span = observation_time(observation)
    return span is not None and span.start > ctx.as_of


def _latest(items: list[tuple[Resource, Reading]]) -> tuple[Resource, Reading]:
    return max(items, key=lambda pair: date_text(pair[0]))


def _list(items: list[tuple[Resource, Reading]]) -> str:
    return ", ".join(f"{r.detail} on {observed_on(o)}" for o, r in items)


# --------------------------------------------------------------------------- ANA
def _ana_titer_reader(ctx: Context) -> Reader:
    threshold = ctx.settings.ana_min_titer
    above = ctx.valueset("interpretation-above-normal")
    normal = ctx.valueset("interpretation-not-above-normal")
    positive = ctx.valueset("positive-result-answers")
    negative = ctx.valueset("negative-result-answers")

    def read(obs: Resource) -> Reading:
        absent = value_beside_absent_reason(obs)
        if absent is not None:
            return Reading("unreadable", absent)
        titer = read_titer(obs)
        ratio = obs.get("valueRatio")
        if titer is None and isinstance(ratio, Mapping):
            return Reading("unreadable", f"ratio {_ratio_text(ratio)} is not a titer 1:N")
        if titer is not None:
            ok = meets_at_least(titer.dilution, titer.comparator, threshold)
            if ok is True:
                return Reading("positive", f"titer {titer}")
            if ok is False:
                return Reading("negative", f"titer {titer} (below 1:{threshold})")
            return Reading("unreadable", f"titer {titer} cannot be compared with 1:{threshold}")
        flagged = interpretation_in(obs, above)
        concept = coded_value(obs)
        if flagged is not None or (concept is not None and positive.matches(concept)):
            return Reading("unreadable", "positive without a titer")
        general = above_normal(obs, above, positive, negative, normal)
        # Without a titer, only a normal flag (N, NEG, ...) says the ANA is negative: a coded
        # "negative" answer or a range alone does not tell the IF titer.
        if general.outcome == "negative" and interpretation_labels(obs):
            return Reading("negative", general.detail)
        return Reading("unreadable", general.detail)

    return read


def _ratio_text(ratio: Mapping[str, Any]) -> str:
    """``160:1`` as written in a valueRatio, for reasons (``?`` for a missing side)."""
    sides = []
    for side in ("numerator", "denominator"):
        part = ratio.get(side)
        value = part.get("value") if isinstance(part, Mapping) else None
        sides.append(f"{value:g}" if isinstance(value, (int, float)) else "?")
    return ":".join(sides)


def ana(ctx: Context) -> Finding:
    """inc-ana: ANA by immunofluorescence with titer >= 1:80 (any time)."""
    unavailable = category_unavailable(ctx, "Observation")
    if unavailable is not None:
        return unavailable
    threshold = ctx.settings.ana_min_titer
    read = _ana_titer_reader(ctx)
    by_if = ctx.record.with_code("Observation", ctx.valueset("ana-immunofluorescence-titer"))
    if_ids = {id(o) for o in by_if}
    other = [
        o
        for o in ctx.record.with_code("Observation", ctx.valueset("ana-other-method"))
        if id(o) not in if_ids
    ]
    above = ctx.valueset("interpretation-above-normal")
    normal = ctx.valueset("interpretation-not-above-normal")
    positive = ctx.valueset("positive-result-answers")
    negative = ctx.valueset("negative-result-answers")
    return decide_serology(
        ctx,
        "ANA",
        ((o, read(o)) for o in by_if),
        requirement=f">= 1:{threshold} by immunofluorescence required",
        missing="ANA titer by immunofluorescence (LOINC 5048-4)",
        review_only=(
            (
                o,
                above_normal(o, above, positive, negative, normal),
                "ANA not measured as an immunofluorescence titer (the protocol asks for IF)",
            )
            for o in other
        ),
    )


# --------------------------------------------------------------------------- anti-dsDNA, anti-Sm
def _above_normal_criterion(ctx: Context, valueset_id: str, what: str, missing: str) -> Finding:
    unavailable = category_unavailable(ctx, "Observation")
    if unavailable is not None:
        return unavailable
    above = ctx.valueset("interpretation-above-normal")
    normal = ctx.valueset("interpretation-not-above-normal")
    positive = ctx.valueset("positive-result-answers")
    negative = ctx.valueset("negative-result-answers")
    results = ctx.record.with_code("Observation", ctx.valueset(valueset_id))
    return decide_serology(
        ctx,
        what,
        ((o, above_normal(o, above, positive, negative, normal)) for o in results),
        requirement="above the normal range of the reporting assay required",
        missing=missing,
    )


def anti_dsdna(ctx: Context) -> Finding:
    """inc-anti-dsdna: anti-dsDNA above normal (interpretation, coded answer or own reference range)."""
    return _above_normal_criterion(
        ctx, "anti-dsdna", "anti-dsDNA", "anti-dsDNA antibody result with a reference range"
    )


def anti_sm(ctx: Context) -> Finding:
    """inc-anti-sm: anti-Smith above normal (interpretation, coded answer or own reference range)."""
    return _above_normal_criterion(
        ctx, "anti-sm", "anti-Smith", "anti-Smith antibody result with a reference range"
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-ana": ana,
    "inc-anti-dsdna": anti_dsdna,
    "inc-anti-sm": anti_sm,
}
