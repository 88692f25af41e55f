"""Allergies: exc-drug-allergy (Excl 1).

- An AllergyIntolerance to a trial medication (cyclophosphamide, fludarabine, obinutuzumab: the
  ``trial-medication-allergens`` ValueSet, matched on the allergy's code or a reaction's substance)
  -> met; when its criticality is low and no reaction is severe or anaphylactic -> needs-review.
- Any allergy with criticality high, a severe reaction, or an anaphylaxis manifestation
  (``anaphylaxis-reactions``) -> met ("history of severe allergic reactions").
- An allergy that names a trial medication only in words (code text, the display of a local
  allergen code, a reaction substance so written) and is in none of the ValueSets -> needs-review,
  never met: free-text allergy entries are common, and "no qualifying record" would hide one.
- Records whose verificationStatus is refuted or entered-in-error are ignored. A resolved or
  inactive allergy still counts as history.
- AllergyIntolerance data that could not be obtained -> unknown (rule 1); none qualifying in the
  retrieved list -> not-met (rule 4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fhir_trial.criteria.context import (
    IGNORED_VERIFICATION,
    Context,
    category_unavailable,
    first_code,
    none_found,
)
from fhir_trial.criteria.labels import TRIAL_DRUG_WORDS, naming_label
from fhir_trial.report import Finding
from fhir_trial.terminology import ValueSet, codings


def _status_code(concept: Mapping[str, Any] | None) -> str | None:
    for coding in codings(concept):
        if coding.get("code"):
            return str(coding["code"])
    return None


def allergy_counts(allergy: Mapping[str, Any]) -> bool:
    """False for refuted / entered-in-error AllergyIntolerance records."""
    return _status_code(allergy.get("verificationStatus")) not in IGNORED_VERIFICATION


def _severe_signs(allergy: Mapping[str, Any], anaphylaxis: ValueSet) -> list[str]:
    """Why an allergy counts as severe: high criticality, severe reaction, anaphylaxis."""
    signs: list[str] = []
    if allergy.get("criticality") == "high":
        signs.append("criticality high")
    for reaction in allergy.get("reaction", []) or []:
        if not isinstance(reaction, dict):
            continue
        if reaction.get("severity") == "severe":
            signs.append("a severe reaction")
        for manifestation in reaction.get("manifestation", []) or []:
            if anaphylaxis.matches(manifestation):
                signs.append(f"reaction {first_code(manifestation)}")
    return list(dict.fromkeys(signs))


def _is_trial_drug(allergy: Mapping[str, Any], trial: ValueSet) -> bool:
    if trial.matches(allergy.get("code")):
        return True
    return any(
        trial.matches(reaction.get("substance"))
        for reaction in allergy.get("reaction", []) or []
        if isinstance(reaction, dict)
    )


def _label_naming_trial_drug(allergy: Mapping[str, Any]) -> str | None:
    """The first display or text of the allergy's code or reaction substances naming a trial drug."""
    concepts = [allergy.get("code")] + [
        reaction.get("substance")
        for reaction in allergy.get("reaction", []) or []
        if isinstance(reaction, dict)
    ]
    for concept in concepts:
        label = naming_label(concept, TRIAL_DRUG_WORDS)
        if label is not None:
            return label
    return None


def drug_allergy(ctx: Context) -> Finding:
    """exc-drug-allergy: allergy to a trial medication, or any severe allergy."""
    unavailable = category_unavailable(ctx, "AllergyIntolerance")
    if unavailable:
        return unavailable
    trial = ctx.valueset("trial-medication-allergens")
    anaphylaxis = ctx.valueset("anaphylaxis-reactions")
    record = ctx.record

    met: list[str] = []
    met_refs: list[str] = []
    review: list[str] = []
    review_refs: list[str] = []
    trial_ids = {id(a) for a in record.with_code("AllergyIntolerance", trial)}
    for allergy in record.resources("AllergyIntolerance"):
        if not allergy_counts(allergy):
            continue
        label = first_code(allergy.get("code"))
        ref = record.reference_to(allergy)
        signs = _severe_signs(allergy, anaphylaxis)
        if id(allergy) in trial_ids or _is_trial_drug(allergy, trial):
            if signs or allergy.get("criticality") != "low":
                crit = allergy.get("criticality") or "not stated"
                why = ", ".join(signs) or f"criticality {crit}"
                met.append(f"allergy to trial medication {label} ({why})")
                met_refs.append(ref)
            else:
                review.append(
                    f"allergy to trial medication {label} with low criticality and no severe "
                    "reaction: is it a contraindication?"
                )
                review_refs.append(ref)
        elif signs:
            met.append(f"severe allergy to {label} ({', '.join(signs)})")
            met_refs.append(ref)
        elif (named := _label_naming_trial_drug(allergy)) is not None:
            review.append(
                f"allergy recorded as {named!r}, which names a trial medication, but not with a "
                "code the screening can read: a person confirms whether it is an allergy to "
                "cyclophosphamide, fludarabine or obinutuzumab"
            )
            review_refs.append(ref)
    if met:
        return Finding("met", "; ".join(met), tuple(met_refs))
    if review:
        return Finding("needs-review", "; ".join(review), tuple(review_refs))
    return none_found(
        ctx,
        "AllergyIntolerance",
        "allergy to cyclophosphamide, fludarabine or obinutuzumab, or a severe allergy",
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-drug-allergy": drug_allergy,
}
