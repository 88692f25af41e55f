"""What every criterion function receives, and the record filters CRITERIA.md prescribes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fhir_trial.config import Settings
from fhir_trial.elements import child
from fhir_trial.fhirdates import DateSpan, parse_span
from fhir_trial.record import PatientRecord, Resource
from fhir_trial.report import Finding
from fhir_trial.terminology import Terminology, ValueSet, codings

IGNORED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
# German ICD-10-GM diagnoses carry their certainty ("Diagnosesicherheit") in an extension on the
# ICD-10-GM coding (de.basisprofil: KBV code system, letters G/V/A/Z), often with no
# verificationStatus at all. CRITERIA.md: A (ausgeschlossen, ruled out) is ignored like refuted;
# V (Verdacht, suspected) is provisional; Z (Zustand nach, status after) is history: resolved.
GM_CERTAINTY_URLS = frozenset(
    {
        "http://fhir.de/StructureDefinition/icd-10-gm-diagnosesicherheit",
        "https://fhir.de/StructureDefinition/icd-10-gm-diagnosesicherheit",
    }
)
GM_RULED_OUT, GM_SUSPECTED, GM_STATUS_AFTER = "A", "V", "Z"
ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """The record, the settings and the terminology, plus the two dates all windows hang on."""

    record: PatientRecord
    settings: Settings
    terminology: Terminology
    as_of: dt.date
    infusion_date: dt.date
    # What several criteria derive from the record alike (the medication history, the drug
    # ValueSets), kept for the life of this Context: one evaluate() call, during which the
    # record does not change. See :meth:`remember`.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def remember(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, once per Context and ``key`` (the same ``key`` must always mean the
        same computation)."""
        memo = self.memo
        if key in memo:
            return cast(T, memo[key])
        found = memo[key] = compute()
        return found

    def valueset(self, valueset_id: str) -> ValueSet:
        """A ValueSet by id (codes come only from the shipped ValueSets)."""
        return self.terminology.get(valueset_id)

    def days_before(self, days: int, anchor: dt.date | None = None) -> dt.date:
        """The first day of a window of ``days`` ending at ``anchor`` (default as_of), inclusive."""
        return (anchor or self.as_of) - dt.timedelta(days=days)


def first_code(concept: Mapping[str, Any] | None) -> str:
    """``code`` of the first coding, or the text: for readable reasons."""
    if not (type(concept) is dict or isinstance(concept, Mapping)):
        return "?"
    for coding in codings(concept):
        label = coding.get("display") or coding.get("code")
        if label:
            return str(label)
    return str(concept.get("text") or "?")


def _code_of(concept: Mapping[str, Any] | None) -> str | None:
    if type(concept) is dict:
        # The usual status concept: its first coding, a plain object with a code, is the first
        # coding codings() gives and has the code the loop below returns.
        found = concept.get("coding")
        if type(found) is list and found and type(found[0]) is dict:
            code = found[0].get("code")
            if code:
                return str(code)
    return _first_coded(concept)


def _first_coded(concept: Mapping[str, Any] | None) -> str | None:
    """The ``code`` of the first coding that has one (the rule behind :func:`_code_of`)."""
    for coding in codings(concept):
        if coding.get("code"):
            return str(coding["code"])
    return None


# ----------------------------------------------------------------------------- Conditions
def gm_certainty(condition: Mapping[str, Any]) -> str | None:
    """The ICD-10-GM Diagnosesicherheit letter (G, V, A, Z) of a Condition, else None.

    Read from the extension on a coding of ``code`` (where de.basisprofil puts it) or, as some
    exporters write it, on the Condition itself; its value a Coding or a bare code.
    """
    concept = condition.get("code")
    if "extension" not in condition and type(concept) is dict:
        # The usual Condition carries no extension at all: nothing to read, and no need to
        # gather its codings (only the ones below a plain object are looked at here; any other
        # shape takes the rule in _gm_certainty_of).
        found = concept.get("coding")
        if type(found) is list:
            for coding in found:
                if type(coding) is not dict or "extension" in coding:
                    break
            else:
                return None
    return _gm_certainty_of(condition, concept)


def _gm_certainty_of(condition: Mapping[str, Any], concept: Any) -> str | None:
    """The rule behind :func:`gm_certainty`: the extension on the Condition or a coding."""
    holders: list[Any] = [condition, *codings(concept)]
    for holder in holders:
        # type() first: isinstance against the Mapping ABC costs a Python-level call.
        is_object = type(holder) is dict or isinstance(holder, Mapping)
        extensions = holder.get("extension") if is_object else None
        if not isinstance(extensions, list):
            continue
        for extension in extensions:
            if not isinstance(extension, Mapping) or extension.get("url") not in GM_CERTAINTY_URLS:
                continue
            value = child(extension.get("valueCoding"), "code") or extension.get("valueCode")
            if isinstance(value, str) and value:
                return value.upper()
    return None


def condition_counts(condition: Mapping[str, Any]) -> bool:
    """False for refuted / entered-in-error Conditions, and ICD-10-GM diagnoses ruled out (A)."""
    if _code_of(condition.get("verificationStatus")) in IGNORED_VERIFICATION:
        return False
    return gm_certainty(condition) != GM_RULED_OUT


def condition_activity(condition: Mapping[str, Any]) -> str:
    """'active', 'inactive' or 'unrecorded': what the record says about a Condition being current.

    clinicalStatus active/recurrence/relapse is 'active'; any other status is 'inactive'. Without a
    clinicalStatus, an abatement[x] still says the condition ended (FHIR invariant con-4 allows an
    abatement only with an inactive status), so 'inactive'; with neither, the record does not say:
    'unrecorded'. "Active" criteria never read 'unrecorded' as active: it needs review (README).
    An ICD-10-GM diagnosis marked Z ("Zustand nach", status after) is 'inactive' whatever its
    clinicalStatus says.
    """
    if gm_certainty(condition) == GM_STATUS_AFTER:
        return "inactive"  # "Zustand nach": the condition is history
    status = _code_of(condition.get("clinicalStatus"))
    if status is None:
        return "inactive" if any(k.startswith("abatement") for k in condition) else "unrecorded"
    return "active" if status in ACTIVE_CLINICAL else "inactive"


def condition_is_active(condition: Mapping[str, Any]) -> bool:
    """clinicalStatus active/recurrence/relapse (a Condition without clinicalStatus is not)."""
    return condition_activity(condition) == "active"


def conditions_in(ctx: Context, valueset_id: str, *, active_only: bool = False) -> list[Resource]:
    """Conditions coded in a ValueSet, without refuted/entered-in-error ones.

    ``active_only`` drops the Conditions known to be inactive; one without clinicalStatus is kept
    (it may be current), so a caller that decides ``met`` on it checks :func:`condition_activity`.
    """
    found = ctx.record.with_code("Condition", ctx.valueset(valueset_id))
    return [
        c
        for c in found
        if condition_counts(c) and (not active_only or condition_activity(c) != "inactive")
    ]


def condition_onset(condition: Mapping[str, Any]) -> DateSpan | None:
    """onsetDateTime / onsetPeriod.start, else recordedDate."""
    onset = condition.get("onsetDateTime") or child(condition.get("onsetPeriod"), "start")
    return parse_span(onset) or parse_span(condition.get("recordedDate"))


# ----------------------------------------------------------------------------- Observations
def observation_counts(observation: Mapping[str, Any]) -> bool:
    """Final/amended/corrected count; preliminary counts only as needs-review (see callers)."""
    return observation.get("status") in FINAL_OBSERVATION


def observation_time(observation: Mapping[str, Any]) -> DateSpan | None:
    """effective[x] (dateTime, Period start, instant), else issued."""
    value = (
        observation.get("effectiveDateTime")
        or child(observation.get("effectivePeriod"), "start")
        or observation.get("effectiveInstant")
        or observation.get("issued")
    )
    return parse_span(value)


# ----------------------------------------------------------------------------- absence rules
# The reasons state what each absence rule of CRITERIA.md says, never its number: coordinators do not
# have that file. These phrases are shared so that every criterion words a rule the same way.
NOT_OBTAINED = "so this stays unknown rather than not met"
NO_MEASUREMENT = "a missing measurement leaves this unknown rather than not met"


def category_unavailable(ctx: Context, *categories: str) -> Finding | None:
    """Rule 1: a needed category that could not be obtained makes the criterion unknown."""
    record = ctx.record
    for category in categories:
        # record.state(category) != "obtained", written out: asked by most criteria.
        if category in record.failed or category not in record.obtained:
            why = record.failed.get(category, "it was not requested")
            return Finding(
                "unknown",
                f"{category} data could not be obtained ({why}), {NOT_OBTAINED}",
                missing=(f"{category} resources",),
            )
    return None


def none_found(ctx: Context, resource_type: str, what: str) -> Finding:
    """Rule 4: a retrieved category with no qualifying record -> not-met, saying how many were seen."""
    count = ctx.record.count(resource_type)
    return Finding(
        "not-met",
        f"no qualifying record ({what}) in {count} retrieved {resource_type} resources",
    )
