"""Who the patient is and what they agreed to: inc-age, inc-consent, inc-contraception."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fhir_trial.canonical import STUDY_ID
from fhir_trial.criteria.context import Context, category_unavailable, first_code
from fhir_trial.fhirdates import completed_years, parse_span
from fhir_trial.record import Resource
from fhir_trial.report import Finding

# Consent elements that may name the study (CRITERIA.md: provision, source or policy).
_CONSENT_NAMING_ELEMENTS = (
    "provision",
    "sourceReference",
    "sourceAttachment",
    "sourceIdentifier",
    "policy",
    "policyRule",
)


def _patient_or_finding(ctx: Context) -> Resource | Finding:
    unavailable = category_unavailable(ctx, "Patient")
    if unavailable is not None:
        return unavailable
    patient = ctx.record.patient
    if patient is None:
        return Finding(
            "unknown", "the record holds no Patient resource", missing=("Patient resource",)
        )
    return patient


# --------------------------------------------------------------------------- inc-age
# Older than anyone has been documented to live: such a birth date is a placeholder some systems
# write for an unknown date of birth (1900-01-01), not an age that makes the patient ineligible.
MAX_PLAUSIBLE_AGE = 120


def age(ctx: Context) -> Finding:
    """inc-age: completed years at as_of within [min_age, max_age]; partial dates unknown only if ambiguous."""
    patient = _patient_or_finding(ctx)
    if isinstance(patient, Finding):
        return patient
    low, high = ctx.settings.min_age, ctx.settings.max_age
    ref = ctx.record.patient_reference
    required = f"{low} to {high} years required"
    birth = patient.get("birthDate")
    span = parse_span(birth)
    if span is None:
        said = "no birth date" if not birth else f"an unreadable birth date {birth!r}"
        return Finding(
            "unknown",
            f"Patient has {said}; age cannot be computed ({required})",
            (ref,),
            ("Patient.birthDate",),
        )
    if span.start > ctx.as_of:
        return Finding(
            "needs-review",
            f"birth date {birth} is after the screening date {ctx.as_of.isoformat()}: "
            "a data error to correct before the age can be judged",
            (ref,),
            ("a correct Patient.birthDate",),
        )
    oldest = completed_years(span.start, ctx.as_of)
    youngest = completed_years(span.end, ctx.as_of)
    if youngest > MAX_PLAUSIBLE_AGE:
        return Finding(
            "needs-review",
            f"birth date {birth} makes the patient at least {youngest} on "
            f"{ctx.as_of.isoformat()}: most likely a placeholder for an unknown date of birth "
            "(1900-01-01 is common), to correct before the age can be judged",
            (ref,),
            ("a correct Patient.birthDate",),
        )
    on = ctx.as_of.isoformat()
    if span.exact:
        said = f"age {oldest} on {on} (born {birth}; {required})"
    else:
        ages = f"{youngest}" if youngest == oldest else f"{youngest} to {oldest}"
        said = f"age {ages} on {on} (birth date recorded only as {birth}; {required})"
    if low <= youngest and oldest <= high:
        return Finding("met", said, (ref,))
    if oldest < low or youngest > high:
        return Finding("not-met", said, (ref,))
    return Finding(
        "unknown",
        f"{said}: the partial birth date leaves it unclear whether the age is within range",
        (ref,),
        ("full Patient.birthDate (day precision)",),
    )


# --------------------------------------------------------------------------- inc-consent
def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _names_study(consent: Mapping[str, Any]) -> bool:
    """A reference to the ResearchStudy or the identifier NCT06010472 in provision/source/policy."""
    needle = STUDY_ID.lower()
    return any(
        needle in text.lower()
        for element in _CONSENT_NAMING_ELEMENTS
        for text in _strings(consent.get(element))
    )


def _denying_provisions(
    provision: Mapping[str, Any], inherited: str | None
) -> Iterator[Mapping[str, Any]]:
    """Nested provisions (at any depth) whose type is deny; an untyped one keeps its parent's type."""
    nested = provision.get("provision")
    for child_provision in nested if isinstance(nested, list) else []:
        if not isinstance(child_provision, Mapping):
            continue
        kind = child_provision.get("type") or inherited
        if kind == "deny":
            yield child_provision
        yield from _denying_provisions(child_provision, kind)


def _denies_study(provision: Mapping[str, Any]) -> bool:
    """Whether a nested deny provision names this study (its own elements, not its exceptions)."""
    needle = STUDY_ID.lower()
    for deny in _denying_provisions(provision, provision.get("type")):
        own = {k: v for k, v in deny.items() if k != "provision"}
        if any(needle in text.lower() for text in _strings(own)):
            return True
    return False


def _consent_problem(ctx: Context, consent: Mapping[str, Any]) -> str | None:
    """Why a research Consent does not count, or None when it is an active consent to this study."""
    if consent.get("status") != "active":
        return f"status {consent.get('status') or 'missing'}"
    provision = consent.get("provision")
    if not isinstance(provision, Mapping):
        provision = {}
    if provision.get("type") == "deny":
        return "its provision denies consent"
    if _denies_study(provision):
        return f"a nested provision denies consent for this study ({STUDY_ID})"
    period = provision.get("period")
    if not isinstance(period, Mapping):
        period = {}
    start, end = (parse_span(v) for v in (period.get(k) for k in ("start", "end")))
    if end is not None and end.end < ctx.as_of:
        return f"its period ended {end.end.isoformat()}"
    if start is not None and start.start > ctx.as_of:
        return f"its period starts {start.start.isoformat()}"
    if not _names_study(consent):
        return f"it does not name this study ({STUDY_ID})"
    return None


def _scope(consent: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Consent.scope when it is a well-formed CodeableConcept (malformed data is not a crash)."""
    scope = consent.get("scope")
    if not isinstance(scope, Mapping):
        return None
    found = scope.get("coding", [])
    if isinstance(found, list) and all(isinstance(c, Mapping) for c in found):
        return scope
    return None


def consent(ctx: Context) -> Finding:
    """inc-consent: met only with an active research Consent naming this study; else needs-review."""
    unavailable = category_unavailable(ctx, "Consent")
    if unavailable is not None:
        return unavailable
    scope = ctx.valueset("research-consent-scope")
    consents = ctx.record.resources("Consent")
    research = [c for c in consents if scope.matches(_scope(c))]
    for item in research:
        if _consent_problem(ctx, item) is None:
            signed = item.get("dateTime")
            when = (
                f"dated {signed[:10]}" if isinstance(signed, str) and signed else "without a date"
            )
            return Finding(
                "met",
                f"active research Consent naming {STUDY_ID} {when}",
                (ctx.record.reference_to(item),),
            )
    signing = "the signed informed consent form must be checked by the study team"
    if research:
        problems = "; ".join(
            f"{ctx.record.reference_to(c)}: {_consent_problem(ctx, c)}" for c in research
        )
        return Finding(
            "needs-review",
            f"no active research Consent for this study ({problems}); {signing}",
            tuple(ctx.record.reference_to(c) for c in research),
        )
    others = "".join(
        f"; {ctx.record.reference_to(c)} has scope {first_code(_scope(c))}" for c in consents
    )
    return Finding(
        "needs-review",
        f"no research Consent among {len(consents)} retrieved Consent resources{others}; {signing}",
        tuple(ctx.record.reference_to(c) for c in consents),
        (f"active research Consent naming {STUDY_ID}",),
    )


# --------------------------------------------------------------------------- inc-contraception
def contraception(ctx: Context) -> Finding:
    """inc-contraception: not-applicable for male patients; otherwise attested, so needs-review."""
    patient = _patient_or_finding(ctx)
    if isinstance(patient, Finding):
        return patient
    gender = patient.get("gender")
    ref = ctx.record.patient_reference
    if gender == "male":
        return Finding(
            "not-applicable", "male patient: the contraception requirement is for females", (ref,)
        )
    who = f"{gender} patient" if gender else "gender not recorded"
    return Finding(
        "needs-review",
        f"{who}: effective contraception (and no egg donation) during treatment and for 90 days "
        "after the last dose is attested at screening, not computable from the record",
        (ref,),
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "inc-age": age,
    "inc-consent": consent,
    "inc-contraception": contraception,
}
