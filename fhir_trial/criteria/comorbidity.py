"""Comorbidities: exc-immunodeficiency, exc-heart-failure, exc-cns-disease, exc-malignancy,
exc-skin-disease, exc-major-comorbidity and exc-investigator-judgement (Excl 3, 4, 5, 7-9, 10, 12, 16).

Conditions whose verificationStatus is refuted or entered-in-error are ignored everywhere. "History
of" criteria (immunodeficiency, CNS disease, malignancy) count a Condition whatever its clinical
status; "active" criteria (skin disease) need clinicalStatus active/recurrence/relapse.

- exc-immunodeficiency: immunodeficiency disorders, HIV, AIDS -> met. "Patient immunosuppressed"
  (``immunosuppressed-state``) is expected in treated lupus -> needs-review, never met; it is checked
  first, so a code present in both ValueSets still only asks for review.
- exc-heart-failure: the latest NYHA class III/IV finding (a Condition so coded, or a final
  Observation whose value is one) -> met; if that latest finding is a Condition no longer active, or
  a preliminary Observation -> needs-review. Heart failure without a class finding -> needs-review.
  Limitation: only classes III and IV have a ValueSet, so a later class I/II finding is not seen.
- exc-cns-disease: epilepsy / seizure disorder -> met; other nervous-system disorders and
  neuropsychiatric lupus -> needs-review.
- exc-malignancy: a malignancy other than the carve-outs -> met (any clinical status: history); a
  carve-out (non-melanoma skin, cervix, superficial bladder, breast) active -> met, not active ->
  needs-review, because whether it was "cured" is for a person to say.
- exc-skin-disease: active psoriasis, dermatomyositis, systemic sclerosis, drug-induced lupus ... -> met.
- exc-major-comorbidity and exc-investigator-judgement: always needs-review, with the active
  Conditions (for the former, those that are not lupus) as evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fhir_trial.criteria.context import (
    Context,
    category_unavailable,
    condition_counts,
    condition_is_active,
    condition_onset,
    conditions_in,
    first_code,
    none_found,
    observation_counts,
    observation_time,
)
from fhir_trial.fhirdates import DateSpan
from fhir_trial.record import Resource
from fhir_trial.report import Finding
from fhir_trial.terminology import codings

MAX_LISTED = 12  # how many conditions a reason names before saying "and N more"


def _ref(ctx: Context, resource: Mapping[str, Any]) -> str:
    return ctx.record.reference_to(resource)


def _status(condition: Mapping[str, Any]) -> str:
    for coding in codings(condition.get("clinicalStatus")):
        if coding.get("code"):
            return str(coding["code"])
    return "no clinical status"


def _describe(condition: Mapping[str, Any]) -> str:
    onset = condition_onset(condition)
    when = ""
    if onset is not None:
        when = (
            f", since {onset.start.isoformat()}" if onset.exact else f", since {onset.start.year}"
        )
    return f"{first_code(condition.get('code'))} ({_status(condition)}{when})"


def _listing(conditions: Sequence[Mapping[str, Any]]) -> str:
    names = [_describe(c) for c in conditions[:MAX_LISTED]]
    more = len(conditions) - MAX_LISTED
    return "; ".join(names) + (f"; and {more} more" if more > 0 else "")


def _unique(conditions: Sequence[Resource]) -> list[Resource]:
    return list({id(c): c for c in conditions}.values())


# ----------------------------------------------------------------------------- exc-immunodeficiency
def immunodeficiency(ctx: Context) -> Finding:
    """exc-immunodeficiency: congenital or acquired immunodeficiency disease."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    suppressed = conditions_in(ctx, "immunosuppressed-state")
    suppressed_ids = {id(c) for c in suppressed}
    disease = [c for c in conditions_in(ctx, "immunodeficiency") if id(c) not in suppressed_ids]
    if disease:
        return Finding(
            "met",
            f"immunodeficiency disease: {_listing(disease)}",
            tuple(_ref(ctx, c) for c in disease),
        )
    if suppressed:
        return Finding(
            "needs-review",
            f"recorded as immunosuppressed ({_listing(suppressed)}): expected under lupus "
            "treatment and not itself an immunodeficiency disease; a person must judge",
            tuple(_ref(ctx, c) for c in suppressed),
        )
    return none_found(ctx, "Condition", "immunodeficiency disease")


# ----------------------------------------------------------------------------- exc-heart-failure
def heart_failure(ctx: Context) -> Finding:
    """exc-heart-failure: latest NYHA class III/IV finding, else heart failure without a class."""
    nyha = ctx.valueset("nyha-class-iii-iv")
    milder = ctx.valueset("nyha-class-i-ii")  # a later class I/II finding supersedes III/IV
    findings: list[tuple[DateSpan | None, str, Resource]] = []
    if ctx.record.usable("Condition"):
        for valueset in (nyha, milder):
            for condition in ctx.record.with_code("Condition", valueset):
                if condition_counts(condition):
                    findings.append((condition_onset(condition), "Condition", condition))
    if ctx.record.usable("Observation"):
        for observation in ctx.record.resources("Observation"):
            value = observation.get("valueCodeableConcept")
            if (
                value
                and observation.get("status") != "entered-in-error"
                and (nyha.matches(value) or milder.matches(value))
            ):
                findings.append((observation_time(observation), "Observation", observation))
    if findings:
        when, kind, latest = max(
            findings, key=lambda f: f[0].end.toordinal() if f[0] is not None else 0
        )
        day = "undated" if when is None else when.start.isoformat()
        evidence = tuple(_ref(ctx, f[2]) for f in findings)
        concept = latest.get("code" if kind == "Condition" else "valueCodeableConcept")
        if milder.matches(concept):
            return Finding(
                "not-met",
                f"latest NYHA class finding is {first_code(concept)} ({day}), not class III/IV",
                evidence,
            )
        if kind == "Condition":
            label = first_code(latest.get("code"))
            if condition_is_active(latest):
                return Finding(
                    "met", f"NYHA {label} recorded {day} (latest class finding)", evidence
                )
            return Finding(
                "needs-review",
                f"latest NYHA class finding {label} ({day}) is recorded as {_status(latest)}: "
                "is the heart failure still class III/IV?",
                evidence,
            )
        label = first_code(latest.get("valueCodeableConcept"))
        if observation_counts(latest):
            return Finding("met", f"NYHA {label} observed {day} (latest class finding)", evidence)
        return Finding(
            "needs-review",
            f"latest NYHA class finding {label} ({day}) has status {latest.get('status')}, "
            "not final",
            evidence,
        )

    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    failing = conditions_in(ctx, "heart-failure")
    if failing:
        return Finding(
            "needs-review",
            f"heart failure without a NYHA class finding: {_listing(failing)}; the class decides",
            tuple(_ref(ctx, c) for c in failing),
        )
    unavailable = category_unavailable(ctx, "Observation")
    if unavailable:
        return Finding(
            "unknown",
            "no heart failure Condition, but " + unavailable.reason,
            missing=unavailable.missing,
        )
    return Finding(
        "not-met",
        "no qualifying record (heart failure or NYHA class III/IV) in "
        f"{ctx.record.count('Condition')} retrieved Condition and "
        f"{ctx.record.count('Observation')} retrieved Observation resources (absence rule 4)",
    )


# ----------------------------------------------------------------------------- exc-cns-disease
def cns_disease(ctx: Context) -> Finding:
    """exc-cns-disease: epilepsy -> met; other CNS disease or neuropsychiatric lupus -> review."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    epilepsy = conditions_in(ctx, "epilepsy")
    if epilepsy:
        return Finding(
            "met",
            f"history of epilepsy: {_listing(epilepsy)}",
            tuple(_ref(ctx, c) for c in epilepsy),
        )
    other = conditions_in(ctx, "cns-disorders")
    if other:
        return Finding(
            "needs-review",
            f"central nervous system disease other than epilepsy: {_listing(other)}; whether it "
            "excludes the patient is for the investigator",
            tuple(_ref(ctx, c) for c in other),
        )
    return none_found(ctx, "Condition", "epilepsy or other CNS disease")


# ----------------------------------------------------------------------------- exc-malignancy
def malignancy(ctx: Context) -> Finding:
    """exc-malignancy: other primary malignancy; carve-outs only when still active."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    carve_out_vs = ctx.valueset("malignancy-carve-outs")
    found = _unique(conditions_in(ctx, "malignancy") + conditions_in(ctx, "malignancy-carve-outs"))
    met: list[Resource] = []
    review: list[Resource] = []
    for condition in found:
        carve_out = carve_out_vs.matches(condition.get("code"))
        if not carve_out or condition_is_active(condition):
            met.append(condition)
        else:
            review.append(condition)
    if met:
        return Finding(
            "met",
            f"malignancy: {_listing(met)} (any malignancy other than a cured carve-out counts; "
            "carve-outs count while active)",
            tuple(_ref(ctx, c) for c in met),
        )
    if review:
        return Finding(
            "needs-review",
            f"malignancy of a carve-out type no longer active: {_listing(review)}; whether it was "
            "cured (e.g. by surgical excision) needs a person",
            tuple(_ref(ctx, c) for c in review),
        )
    return none_found(ctx, "Condition", "malignant neoplasm")


# ----------------------------------------------------------------------------- exc-skin-disease
def skin_disease(ctx: Context) -> Finding:
    """exc-skin-disease: active skin disease that may interfere with SLE assessment."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    found = _unique(
        conditions_in(ctx, "skin-disease-exclusion") + conditions_in(ctx, "drug-induced-lupus")
    )
    active = [c for c in found if condition_is_active(c)]
    if active:
        return Finding(
            "met",
            f"active skin disease that may interfere with SLE assessment: {_listing(active)}",
            tuple(_ref(ctx, c) for c in active),
        )
    finding = none_found(
        ctx,
        "Condition",
        "active psoriasis, dermatomyositis, systemic sclerosis, drug-induced lupus or similar",
    )
    if found:
        return Finding(
            "not-met",
            f"{finding.reason}; not active: {_listing(found)}",
            tuple(_ref(ctx, c) for c in found),
        )
    return finding


# ----------------------------------------------------------------------------- judgement items
def _active_conditions(ctx: Context, exclude_lupus: bool) -> list[Resource]:
    lupus_ids: set[int] = set()
    if exclude_lupus:
        for vs_id in ("sle", "lupus-unspecified-or-cutaneous"):
            lupus_ids.update(id(c) for c in ctx.record.with_code("Condition", ctx.valueset(vs_id)))
    return [
        c
        for c in ctx.record.resources("Condition")
        if condition_counts(c) and condition_is_active(c) and id(c) not in lupus_ids
    ]


def _judgement(ctx: Context, what: str, exclude_lupus: bool) -> Finding:
    if not ctx.record.usable("Condition"):
        why = ctx.record.failed.get("Condition", "not requested")
        return Finding(
            "needs-review",
            f"{what}; the Condition list could not be obtained ({why}), so no conditions are listed",
            missing=("Condition resources (the problem list) to support the review",),
        )
    active = _active_conditions(ctx, exclude_lupus)
    other = " other than lupus" if exclude_lupus else ""
    if not active:
        return Finding("needs-review", f"{what}; no active conditions{other} recorded")
    noun = "condition" if len(active) == 1 else "conditions"
    return Finding(
        "needs-review",
        f"{what}; {len(active)} active {noun}{other} to consider: {_listing(active)}",
        tuple(_ref(ctx, c) for c in active),
    )


def major_comorbidity(ctx: Context) -> Finding:
    """exc-major-comorbidity: always needs-review; active non-lupus Conditions as evidence."""
    return _judgement(
        ctx,
        "whether a comorbidity would prevent administration of KN5501 is for the investigator",
        exclude_lupus=True,
    )


def investigator_judgement(ctx: Context) -> Finding:
    """exc-investigator-judgement: always needs-review; active Conditions as evidence."""
    return _judgement(
        ctx,
        "any situation that may increase the risk or interfere with the trial is for the "
        "investigator to judge",
        exclude_lupus=False,
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-immunodeficiency": immunodeficiency,
    "exc-heart-failure": heart_failure,
    "exc-cns-disease": cns_disease,
    "exc-malignancy": malignancy,
    "exc-skin-disease": skin_disease,
    "exc-major-comorbidity": major_comorbidity,
    "exc-investigator-judgement": investigator_judgement,
}
