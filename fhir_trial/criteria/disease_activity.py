"""Disease activity scores: inc-sledai (SLEDAI-2K total) and inc-bilag (BILAG-2004 organ grades).

Neither score has a LOINC or SNOMED code: both are coded with the project's own CodeSystem (see
the ``sledai-2k-total``, ``bilag-2004-panel``, ``bilag-2004-organ-systems`` and
``bilag-2004-grades`` ValueSets). The latest assessment within the window decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fhir_trial.canonical import CODESYSTEM_URL
from fhir_trial.criteria.context import Context
from fhir_trial.criteria.labs import Judgement, latest_in_window, text_judgement
from fhir_trial.observations import (
    Resource,
    meets_at_least,
    observation_status,
    parse_number,
    quantity_of,
    value_beside_absent_reason,
)
from fhir_trial.report import Finding
from fhir_trial.terminology import ValueSet, codings

_SCORE_UNITS = frozenset({"", "{score}", "score", "{points}", "points", "1"})
_BILAG_A_MIN = 1  # organ systems graded A that qualify (protocol: ">= 1 ... Class A")
_BILAG_B_MIN = 2  # organ systems graded B that qualify (protocol: ">= 2 ... Class B")
SLEDAI_2K_MAX = 105  # the sum of all 24 SLEDAI-2K item weights: a larger total is a data error


# --------------------------------------------------------------------------- SLEDAI-2K
def _sledai_judge(threshold: int) -> Callable[[Resource], Judgement]:
    def judge(obs: Resource) -> Judgement:
        quantity = quantity_of(obs)
        if quantity is None:
            parsed = parse_number(obs.get("valueString"))
            if parsed is None:
                return text_judgement(obs.get("valueString"), "no numeric score")
            value, comparator = parsed
            unit = ""
        else:
            value, comparator, unit = quantity.value, quantity.comparator, quantity.unit
        shown = f"{comparator}{value:.6g}"
        absent = value_beside_absent_reason(obs)
        if absent is not None:
            return Judgement("unreadable", f"{shown}: {absent}")
        if unit.lower() not in _SCORE_UNITS:
            return Judgement("unreadable", f"{shown} with unit {unit!r}, not a score")
        if not 0 <= value <= SLEDAI_2K_MAX:
            return Judgement("unreadable", f"{shown}, outside the possible 0-{SLEDAI_2K_MAX}")
        ok = meets_at_least(value, comparator, threshold)
        if ok is None:
            return Judgement("unreadable", f"{shown} (cannot be compared with {threshold})")
        return Judgement("pass" if ok else "fail", shown)

    return judge


def sledai(ctx: Context) -> Finding:
    """inc-sledai: latest SLEDAI-2K total within the window >= the minimum score."""
    s = ctx.settings
    return latest_in_window(
        ctx,
        ctx.record.with_code("Observation", ctx.valueset("sledai-2k-total")),
        what="SLEDAI-2K total score",
        window_days=s.sledai_window_days,
        requirement=f">= {s.sledai_min_score} required",
        judge=_sledai_judge(s.sledai_min_score),
        missing=f"SLEDAI-2K total score within {s.sledai_window_days} days",
    )


# --------------------------------------------------------------------------- BILAG-2004
def _label(concept: Mapping[str, Any] | None) -> str:
    for coding in codings(concept):
        label = coding.get("display") or coding.get("code")
        if label:
            return str(label)
    return "organ system"


def _concept(value: object) -> bool:
    """Whether a value is a CodeableConcept-shaped dict (malformed data is skipped, not a crash)."""
    return isinstance(value, Mapping) and isinstance(value.get("coding", []), list)


def _grade(item: Mapping[str, Any], grades: ValueSet) -> str | None:
    """The grade letter of a component or member Observation, if it is a BILAG grade."""
    value = item.get("valueCodeableConcept")
    coding = grades.matching_coding(value) if _concept(value) else None
    if coding is not None:
        return str(coding.get("code"))
    text = item.get("valueString")
    if isinstance(text, str) and grades.contains(CODESYSTEM_URL, text.strip().upper()):
        return text.strip().upper()
    return None


def _bilag_members(
    ctx: Context, panel: Resource, organs: ValueSet, grades: ValueSet
) -> tuple[list[Resource], list[str], list[str]]:
    """The panel's final organ-system members, why others are pending, and which were ignored.

    Members follow the Observation status rule: final/amended/corrected count, preliminary ones
    need review, others (entered-in-error, cancelled, ...) are ignored. A member the record does
    not hold cannot be read: it might carry the grade that decides.
    """
    final: list[Resource] = []
    pending: list[str] = []
    ignored: list[str] = []
    members = panel.get("hasMember")
    for member in members if isinstance(members, list) else []:
        ref = member.get("reference") if isinstance(member, Mapping) else None
        resolved = ctx.record.resolve(ref, panel) if isinstance(ref, str) else None
        if resolved is None:
            pending.append(f"member {ref or '(no reference)'} is not in the record")
            continue
        if not (_concept(resolved.get("code")) and organs.matches(resolved.get("code"))):
            continue
        status = observation_status(resolved)
        if status == "final":
            final.append(resolved)
        elif status == "ignored":
            organ = _label(resolved.get("code"))
            ignored.append(f"member {organ} with status {resolved.get('status')} ignored")
        else:
            grade = _grade(resolved, grades)
            pending.append(
                f"preliminary organ-system result: {_label(resolved.get('code'))} "
                f"{grade or 'ungraded'} (only final results decide)"
            )
    return final, pending, ignored


def _bilag_judge(ctx: Context) -> Callable[[Resource], Judgement]:
    organs = ctx.valueset("bilag-2004-organ-systems")
    grades = ctx.valueset("bilag-2004-grades")

    def judge(panel: Resource) -> Judgement:
        components = panel.get("component")
        items: list[Mapping[str, Any]] = [
            c
            for c in (components if isinstance(components, list) else [])
            if isinstance(c, Mapping) and _concept(c.get("code")) and organs.matches(c.get("code"))
        ]
        members, pending, ignored = _bilag_members(ctx, panel, organs, grades)
        items.extend(members)
        graded: dict[str, str] = {}
        unreadable: list[str] = []
        for item in items:
            organ = _label(item.get("code"))
            grade = _grade(item, grades)
            if grade is None:
                unreadable.append(organ)
            else:
                graded.setdefault(organ, grade)
        count_a = sum(1 for g in graded.values() if g == "A")
        count_b = sum(1 for g in graded.values() if g == "B")
        listed = ", ".join(f"{organ} {g}" for organ, g in graded.items() if g in ("A", "B"))
        rest = len(graded) - count_a - count_b
        summary = f"{count_a} A, {count_b} B" + (f" ({listed})" if listed else "")
        summary += f", {rest} organ system(s) graded C-E" if rest else ""
        summary += "".join(f"; {note}" for note in ignored)
        if count_a >= _BILAG_A_MIN or count_b >= _BILAG_B_MIN:
            return Judgement("pass", summary)
        if pending:
            # Final grades alone do not qualify; the pending ones might.
            return Judgement("unreadable", f"{summary}; {'; '.join(pending)}")
        if unreadable or not graded:
            what = ", ".join(unreadable) if unreadable else "no organ-system component"
            return Judgement("unreadable", f"{summary}; unreadable grade: {what}")
        return Judgement("fail", summary)

    return judge


def bilag(ctx: Context) -> Finding:
    """inc-bilag: latest BILAG-2004 assessment within the window has >= 1 A or >= 2 B."""
    s = ctx.settings
    return latest_in_window(
        ctx,
        ctx.record.with_code("Observation", ctx.valueset("bilag-2004-panel")),
        what="BILAG-2004 assessment",
        window_days=s.bilag_window_days,
        requirement=f">= {_BILAG_A_MIN} organ system graded A or >= {_BILAG_B_MIN} graded B required",
        judge=_bilag_judge(ctx),
        missing=f"BILAG-2004 assessment (all organ-system grades) within {s.bilag_window_days} days",
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-sledai": sledai,
    "inc-bilag": bilag,
}
