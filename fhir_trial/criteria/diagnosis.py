"""inc-sle-diagnosis: a previous diagnosis of systemic lupus erythematosus.

SLE is the ``sle`` ValueSet minus drug-induced lupus (``drug-induced-lupus``: it sits under the SLE
codes in SNOMED CT, and it is an exclusion, exc-skin-disease). Generic or cutaneous-only lupus
(``lupus-unspecified-or-cutaneous``) needs a person. The protocol asks for SLE "according to the
1997 ACR criteria": classification criteria cannot be computed from diagnosis codes, and every
reason says so.

Lupus recorded only in words (a Condition with ``code.text`` and no coding, or codings in none of
the three lupus ValueSets whose display or text names lupus) needs a person too, rather than the
not-met of absence rule 3: the diagnosis is there, in a form the screening cannot read. The words
come from the shared display safety net (:mod:`fhir_trial.criteria.labels`); "lupus
anticoagulant", "family history of lupus", "drug-induced lupus" and other qualified mentions do
not count, and a coded qualifying SLE decides before any of this is looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fhir_trial.criteria.context import (
    GM_SUSPECTED,
    Context,
    category_unavailable,
    condition_counts,
    first_code,
    gm_certainty,
)
from fhir_trial.criteria.labels import LUPUS_WORDS, NOT_SLE, uncoded_suggestions
from fhir_trial.elements import child
from fhir_trial.record import Resource
from fhir_trial.report import Finding
from fhir_trial.terminology import codings

# Absence of the target diagnosis from a problem list that was read decides (CRITERIA.md's rule 3).
_ABSENT = "; the problem list was retrieved, so an absent SLE diagnosis counts as not met"
_ACR = "the 1997 ACR classification criteria cannot be verified from diagnosis codes"
_UNCONFIRMED = frozenset({"unconfirmed", "provisional", "differential"})


def _verification(condition: Mapping[str, Any]) -> str | None:
    if gm_certainty(condition) == GM_SUSPECTED:
        return "provisional"  # ICD-10-GM Diagnosesicherheit V (Verdacht)
    for coding in codings(condition.get("verificationStatus")):
        if coding.get("code"):
            return str(coding["code"])
    return None


def _where(ctx: Context, condition: Resource) -> str:
    """The Condition's reference and, when recorded, since when."""
    when = (
        condition.get("onsetDateTime")
        or child(condition.get("onsetPeriod"), "start")
        or condition.get("recordedDate")
    )
    date = f" since {str(when)[:10]}" if when else ""
    return f"{ctx.record.reference_to(condition)}{date}"


def _describe(ctx: Context, condition: Resource) -> str:
    return f"{first_code(condition.get('code'))} ({_where(ctx, condition)})"


def sle_diagnosis(ctx: Context) -> Finding:
    """inc-sle-diagnosis: SLE Condition (not drug-induced) -> met; generic/cutaneous -> needs-review."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable is not None:
        return unavailable
    record = ctx.record
    drug_induced_vs = ctx.valueset("drug-induced-lupus")
    coded_sle = record.with_code("Condition", ctx.valueset("sle"))
    drug_induced = [
        c for c in record.with_code("Condition", drug_induced_vs) if condition_counts(c)
    ]
    dropped = [c for c in coded_sle if not condition_counts(c)]
    sle = [
        c for c in coded_sle if condition_counts(c) and not drug_induced_vs.matches(c.get("code"))
    ]
    notes: list[str] = []
    if dropped:
        notes.append(
            f"ignored as refuted/entered-in-error: {', '.join(_describe(ctx, c) for c in dropped)}"
        )
    confirmed = [c for c in sle if _verification(c) not in _UNCONFIRMED]
    tail = "".join(f"; {n}" for n in notes)
    if confirmed:
        return Finding(
            "met",
            f"SLE on the problem list: {', '.join(_describe(ctx, c) for c in confirmed)}; {_ACR}"
            f"{tail}",
            tuple(record.reference_to(c) for c in confirmed),
        )
    if sle:
        return Finding(
            "needs-review",
            f"SLE recorded but not confirmed (verification status "
            f"{', '.join(sorted({str(_verification(c)) for c in sle}))}): "
            f"{', '.join(_describe(ctx, c) for c in sle)}; {_ACR}{tail}",
            tuple(record.reference_to(c) for c in sle),
        )
    unspecified = [
        c
        for c in record.with_code("Condition", ctx.valueset("lupus-unspecified-or-cutaneous"))
        if condition_counts(c) and not drug_induced_vs.matches(c.get("code"))
    ]
    if unspecified:
        return Finding(
            "needs-review",
            f"only lupus erythematosus without a specific systemic (SLE) code (e.g. the bare "
            f"ICD-10 category M32, which also covers drug-induced lupus M32.0), or cutaneous "
            f"lupus, is recorded: {', '.join(_describe(ctx, c) for c in unspecified)}; whether "
            f"this is SLE "
            f"by the 1997 ACR criteria cannot be computed from codes and needs a clinician{tail}",
            tuple(record.reference_to(c) for c in unspecified),
        )
    in_words = uncoded_suggestions(
        ctx,
        LUPUS_WORDS,
        (ctx.valueset("sle"), ctx.valueset("lupus-unspecified-or-cutaneous"), drug_induced_vs),
        NOT_SLE,
    )
    if in_words:
        named = ", ".join(f"{label!r} ({_where(ctx, c)})" for c, label in in_words)
        return Finding(
            "needs-review",
            f"lupus is recorded in words but not with a code the screening can read (text only, "
            f"or a code outside the SLE ValueSets): {named}; a person must check whether this is "
            f"SLE; {_ACR}{tail}",
            tuple(record.reference_to(c) for c, _ in in_words),
        )
    if drug_induced:
        return Finding(
            "not-met",
            f"only drug-induced lupus is recorded: "
            f"{', '.join(_describe(ctx, c) for c in drug_induced)}; it is not SLE for this study "
            f"(it is an exclusion, exc-skin-disease); no SLE diagnosis in "
            f"{record.count('Condition')} retrieved Condition resources{_ABSENT}{tail}",
            tuple(record.reference_to(c) for c in drug_induced),
        )
    return Finding(
        "not-met",
        f"no SLE diagnosis in {record.count('Condition')} retrieved Condition resources "
        f"{_ABSENT}{tail}",
        tuple(record.reference_to(c) for c in dropped),
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-sle-diagnosis": sle_diagnosis,
}
