"""exc-pregnancy-lactation: pregnant, breastfeeding, or planning a pregnancy within six months.

Male -> not-applicable. Within the pregnancy-test window: a pregnancy status answered "pregnant",
a positive hCG, or breastfeeding -> met. An active pregnancy Condition -> met, unless its onset is
older than ``Settings.pregnancy_max_days`` (a stale entry: needs-review). A positive hCG followed
by a later final negative one in the window, a "pregnant" status answer followed by a later final
"not pregnant" one (``not-pregnant-answers``), or a breastfeeding "yes" followed by a later final
"no" (``no-answers``, or valueBoolean false), is needs-review (a false positive or a wrong answer,
or a pregnancy or breastfeeding that has ended: a person decides which result stands). Anything else ->
needs-review: a planned pregnancy cannot be computed from the record, so this exclusion is never
``not-met`` for a patient who may be female.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from fhir_trial.criteria.context import (
    Context,
    category_unavailable,
    condition_activity,
    condition_onset,
    conditions_in,
    first_code,
)
from fhir_trial.criteria.labs import reference
from fhir_trial.observations import (
    Dated,
    above_normal,
    coded_value,
    date_text,
    describe_quantity,
    observed_on,
    quantity_of,
    split_by_window,
)
from fhir_trial.record import OBSERVATION_COMPONENTS, Resource
from fhir_trial.report import Finding
from fhir_trial.terminology import ValueSet


def pregnancy_lactation(ctx: Context) -> Finding:
    """exc-pregnancy-lactation (see the module docstring)."""
    unavailable = category_unavailable(ctx, "Patient")
    if unavailable is not None:
        return unavailable
    patient = ctx.record.patient or {}
    if patient.get("gender") == "male":
        return Finding(
            "not-applicable",
            "male patient: pregnancy and lactation do not apply",
            (ctx.record.patient_reference,),
        )
    unavailable = category_unavailable(ctx, "Observation", "Condition")
    if unavailable is not None:
        return unavailable
    days = ctx.settings.pregnancy_test_window_days
    start = ctx.days_before(days)
    window = f"within {days} days (from {start.isoformat()})"
    above = ctx.valueset("interpretation-above-normal")
    positive = ctx.valueset("positive-result-answers")
    negative = ctx.valueset("negative-result-answers")
    pregnant_answers = ctx.valueset("pregnant-answers")
    not_pregnant_answers = ctx.valueset("not-pregnant-answers")
    breastfeeding = ctx.valueset("breastfeeding-status")
    yes_answers = ctx.valueset("yes-answers")
    no_answers = ctx.valueset("no-answers")

    met: list[tuple[Dated, str]] = []
    review: list[tuple[Dated, str]] = []
    seen: list[tuple[Dated, str]] = []
    # The answers below are functions of the module given their ValueSets (not functions nested
    # here: compiled, see setup.py, a nested function and this frame would hold each other).
    status_answer = partial(_status_answer, pregnant_answers)
    status_negative = partial(_status_negative, not_pregnant_answers)
    hcg_answer = partial(_hcg_answer, above, positive, negative)
    hcg_negative = partial(_hcg_negative, above, positive, negative)
    breastfeeding_answer = partial(
        _breastfeeding_answer, breastfeeding, yes_answers, above, positive, negative
    )
    breastfeeding_negative = partial(_breastfeeding_negative, no_answers)

    record = ctx.record
    # (what, ValueSet, positive answer, negative answer that a later result may contradict with,
    # how the reason words that later result)
    groups: tuple[
        tuple[str, str, Callable[[Dated], str | None], Callable[[Dated], bool], str], ...
    ] = (
        (
            "pregnancy status",
            "pregnancy-status",
            status_answer,
            status_negative,
            "said not pregnant",
        ),
        ("hCG test", "hcg-tests", hcg_answer, hcg_negative, "was negative"),
        (
            "breastfeeding status",
            "breastfeeding-status",
            breastfeeding_answer,
            breastfeeding_negative,
            "answered no",
        ),
    )
    for what, valueset_id, answer, contradicts, contradiction in groups:
        split = split_by_window(
            record.with_code("Observation", ctx.valueset(valueset_id)), start, ctx.as_of
        )
        _sort(split.inside, what, answer, contradicts, contradiction, met, review, seen)
        for item in split.ambiguous:
            if answer(item) is not None:
                review.append(
                    (
                        item,
                        f"{what} {answer(item)} dated {observed_on(item.resource)} "
                        f"(too imprecise to place {window})",
                    )
                )
        for item in split.before:
            found = answer(item)
            if found is not None:
                seen.append(
                    (
                        item,
                        f"{what} {found} on {observed_on(item.resource)} is older than {days} days",
                    )
                )
    # An "active" pregnancy recorded longer ago than a pregnancy lasts is a stale problem-list entry
    # (common in exported records): a person must check it rather than the patient being excluded.
    oldest_current = ctx.days_before(ctx.settings.pregnancy_max_days)
    stale: list[Resource] = []
    conditions: list[Resource] = []
    # Without clinicalStatus a pregnancy or breastfeeding Condition is not known to be current.
    unrecorded: list[Resource] = []
    for condition in conditions_in(ctx, "pregnancy-findings", active_only=True):
        onset = condition_onset(condition)
        if condition_activity(condition) == "unrecorded":
            unrecorded.append(condition)
        elif onset is not None and onset.end < oldest_current:
            stale.append(condition)
        else:
            conditions.append(condition)
    for condition in conditions_in(ctx, "breastfeeding-status", active_only=True):
        (unrecorded if condition_activity(condition) == "unrecorded" else conditions).append(
            condition
        )
    if met or conditions:
        said = [s for _, s in met] + [
            f"active {first_code(c.get('code'))} ({record.reference_to(c)})" for c in conditions
        ]
        return Finding(
            "met",
            f"{'; '.join(said)} ({window} for tests and status observations)",
            tuple(reference(d.resource) for d, _ in met)
            + tuple(record.reference_to(c) for c in conditions),
        )
    planned = "a pregnancy planned within six months cannot be computed from the record"
    if unrecorded:
        return Finding(
            "needs-review",
            "; ".join(
                [
                    f"{first_code(c.get('code'))} ({record.reference_to(c)}) is recorded without a "
                    "clinical status: is it current?"
                    for c in unrecorded
                ]
                + [s for _, s in review]
            )
            + f"; {planned}",
            tuple(record.reference_to(c) for c in unrecorded + stale)
            + tuple(reference(d.resource) for d, _ in review),
        )
    if stale:
        return Finding(
            "needs-review",
            "; ".join(
                f"{first_code(c.get('code'))} recorded as active since "
                f"{condition_onset(c).start.isoformat()}"  # type: ignore[union-attr]
                f", longer than {ctx.settings.pregnancy_max_days} days: is she still pregnant?"
                for c in stale
            )
            + f"; {planned}",
            tuple(record.reference_to(c) for c in stale)
            + tuple(reference(d.resource) for d, _ in review),
        )
    if review:
        return Finding(
            "needs-review",
            f"{'; '.join(s for _, s in review)}; {planned}",
            tuple(reference(d.resource) for d, _ in review),
        )
    found = (
        "; ".join(s for _, s in seen)
        if seen
        else f"no pregnancy, hCG or breastfeeding record {window}"
    )
    if record.state(OBSERVATION_COMPONENTS) == "failed":
        # Never not-met anyway (the attestation is needed): say what the search could not see.
        found += (
            "; results sent only as components of panels could not be searched on this server, "
            "so a positive hCG or a pregnancy status inside a panel may have been missed"
        )
    return Finding(
        "needs-review",
        f"{found}; {planned}",
        tuple(reference(d.resource) for d, _ in seen),
        (f"pregnancy test within {days} days", "attestation: not lactating, no pregnancy planned"),
    )


def _sort(
    items: list[Dated],
    what: str,
    is_positive: Callable[[Dated], str | None],
    is_negative: Callable[[Dated], bool],
    negative_said: str,
    met: list[tuple[Dated, str]],
    review: list[tuple[Dated, str]],
    seen: list[tuple[Dated, str]],
) -> None:
    """Sort the results in the window into ``met``, ``review`` and ``seen`` (each with its words)."""
    for item in items:
        found = is_positive(item)
        said = f"{what} {found or _value_text(item.resource)} on {observed_on(item.resource)}"
        if found is None:
            seen.append((item, said))
            continue
        if item.preliminary:
            review.append((item, f"preliminary {said}"))
            continue
        later = _later_negative(item, items, is_negative)
        if later is None:
            met.append((item, said))
        else:
            # A positive result contradicted by a later negative one (a false positive or a
            # wrong answer, or a pregnancy or breastfeeding that has ended): a person decides
            # which stands.
            negative_on = date_text(later.resource)
            review.append((item, f"{said}, but a later {what} on {negative_on} {negative_said}"))


def _status_answer(pregnant_answers: ValueSet, item: Dated) -> str | None:
    concept = coded_value(item.resource)
    return "pregnant" if concept is not None and pregnant_answers.matches(concept) else None


def _status_negative(not_pregnant_answers: ValueSet, item: Dated) -> bool:
    concept = coded_value(item.resource)
    return concept is not None and not_pregnant_answers.matches(concept)


def _hcg_answer(above: ValueSet, positive: ValueSet, negative: ValueSet, item: Dated) -> str | None:
    reading = above_normal(item.resource, above, positive, negative)
    return f"positive ({reading.detail})" if reading.outcome == "positive" else None


def _hcg_negative(above: ValueSet, positive: ValueSet, negative: ValueSet, item: Dated) -> bool:
    return above_normal(item.resource, above, positive, negative).outcome == "negative"


def _breastfeeding_answer(
    breastfeeding: ValueSet,
    yes_answers: ValueSet,
    above: ValueSet,
    positive: ValueSet,
    negative: ValueSet,
    item: Dated,
) -> str | None:
    obs = item.resource
    concept = coded_value(obs)
    if obs.get("valueBoolean") is True:
        return "yes"
    if concept is not None and breastfeeding.matches(concept):
        return first_code(concept)
    if concept is not None and yes_answers.matches(concept):  # 63895-7 answered "Yes"
        return "yes"
    reading = above_normal(obs, above, positive, negative)
    return "yes" if reading.outcome == "positive" else None


def _breastfeeding_negative(no_answers: ValueSet, item: Dated) -> bool:
    # Only an explicit "no" contradicts an earlier "yes"; an unreadable answer does not.
    obs = item.resource
    if obs.get("valueBoolean") is False:
        return True
    concept = coded_value(obs)
    return concept is not None and no_answers.matches(concept)


def _later_negative(
    item: Dated, items: Sequence[Dated], is_negative: Callable[[Dated], bool]
) -> Dated | None:
    """A final result dated on a later day than ``item`` that reads negative, else None."""
    if item.span is None:
        return None
    for other in items:
        if (
            other.span is not None
            and other.span.start > item.span.end
            and not other.preliminary
            and is_negative(other)
        ):
            return other
    return None


def _value_text(observation: Mapping[str, Any]) -> str:
    """The result as written (coded answer, quantity or text), for reasons."""
    concept = coded_value(observation)
    if concept is not None:
        return first_code(concept)
    quantity = quantity_of(observation)
    if quantity is not None:
        return describe_quantity(quantity)
    text = observation.get("valueString")
    return repr(text) if isinstance(text, str) else "without a value"


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-pregnancy-lactation": pregnancy_lactation,
}
