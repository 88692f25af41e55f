"""evaluate(record, settings) -> EligibilityReport: pure, no I/O, no globals beyond loaded ValueSets.

Each clinical-area module under :mod:`fhir_trial.criteria` exports ``CRITERIA_FUNCTIONS``, a mapping
from criterion id to a function ``(Context) -> Finding``. This module runs them in CRITERIA.md order,
derives inc-autoantibody from its three parts, and applies the verdict rules (a patient deceased on
the screening date is ineligible whatever the criteria say: :mod:`fhir_trial.deceased`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fhir_trial.canonical import STUDY_ID
from fhir_trial.config import Settings
from fhir_trial.criteria import (
    allergy,
    comorbidity,
    demographics,
    diagnosis,
    disease_activity,
    infection,
    labs,
    reproductive,
    serology,
    therapy,
    trials,
)
from fhir_trial.criteria.catalog import CRITERIA, CriterionSpec
from fhir_trial.criteria.context import Context
from fhir_trial.deceased import VitalStatus, vital_status
from fhir_trial.record import PatientRecord
from fhir_trial.report import (
    CriterionResult,
    EligibilityReport,
    Finding,
    Verdict,
    frozen_instance,
)
from fhir_trial.terminology import Terminology, load_terminology

CriterionFunction = Callable[[Context], Finding]

DERIVED = "inc-autoantibody"
AUTOANTIBODY_PARTS = ("inc-ana", "inc-anti-dsdna", "inc-anti-sm")


def _registry() -> dict[str, CriterionFunction]:
    functions: dict[str, CriterionFunction] = {}
    for module in (
        demographics,
        diagnosis,
        disease_activity,
        serology,
        labs,
        therapy,
        allergy,
        infection,
        comorbidity,
        reproductive,
        trials,
    ):
        functions.update(module.CRITERIA_FUNCTIONS)
    expected = {spec.id for spec in CRITERIA} - {DERIVED}
    if set(functions) != expected:
        raise RuntimeError(
            f"criterion functions do not match the catalog: {set(functions) ^ expected}"
        )
    return functions


FUNCTIONS: Mapping[str, CriterionFunction] = _registry()


def derive_autoantibody(parts: Mapping[str, Finding]) -> Finding:
    """inc-autoantibody from inc-ana, inc-anti-dsdna and inc-anti-sm (CRITERIA.md, Incl 6)."""
    statuses = {cid: parts[cid].status for cid in AUTOANTIBODY_PARTS}
    evidence = tuple(dict.fromkeys(e for cid in AUTOANTIBODY_PARTS for e in parts[cid].evidence))
    met = [cid for cid, s in statuses.items() if s == "met"]
    if met:
        return Finding("met", f"qualifying autoantibody: {', '.join(met)} met", evidence)
    if all(s == "not-met" for s in statuses.values()):
        return Finding("not-met", "ANA, anti-dsDNA and anti-Smith all below threshold", evidence)
    if any(s == "needs-review" for s in statuses.values()):
        review = [cid for cid, s in statuses.items() if s == "needs-review"]
        return Finding("needs-review", f"needs review: {', '.join(review)}", evidence)
    missing = tuple(m for cid in AUTOANTIBODY_PARTS for m in parts[cid].missing)
    return Finding(
        "unknown", "no readable ANA, anti-dsDNA or anti-Smith result decides it", evidence, missing
    )


def verdict_of(results: tuple[CriterionResult, ...]) -> Verdict:
    """CRITERIA.md verdict rules; parts of inc-autoantibody do not vote on their own."""
    # One pass: a ruling result decides at once (ineligible); else eligible when every voting
    # result is fine (inclusion met or not applicable, exclusion not met or not applicable).
    all_fine = True
    for r in results:
        if r.part_of is not None:
            continue
        status = r.status
        if r.kind == "inclusion":
            if status == "not-met":
                return "ineligible"
            if status != "met" and status != "not-applicable":
                all_fine = False
        else:
            if status == "met" and r.kind == "exclusion":
                return "ineligible"
            if status != "not-met" and status != "not-applicable":
                all_fine = False
    return "eligible" if all_fine else "potentially-eligible"


def final_verdict(criteria_verdict: Verdict, vital: VitalStatus) -> Verdict:
    """The verdict once the vital status is known (CRITERIA.md, "Real-world records").

    A patient deceased on the screening date is ineligible whatever the criteria say; one whose
    vital status cannot be read is at best potentially eligible (a person checks), never
    ineligible for that reason alone.
    """
    if vital.state == "deceased":
        return "ineligible"
    if vital.state == "unclear" and criteria_verdict == "eligible":
        return "potentially-eligible"
    return criteria_verdict


def evaluate(
    record: PatientRecord,
    settings: Settings | None = None,
    terminology: Terminology | None = None,
) -> EligibilityReport:
    """Decide all 29 criteria for one patient record. Pure: reads only its arguments."""
    settings = settings or Settings()
    terminology = terminology or load_terminology(settings.resources_dir)
    as_of = settings.screening_date()
    # Context(...) without the per-field object.__setattr__ of its frozen __init__.
    ctx = frozen_instance(
        Context,
        {
            "record": record,
            "settings": settings,
            "terminology": terminology,
            "as_of": as_of,
            "infusion_date": settings.infusion_date or as_of,
            "memo": {},
        },
    )

    findings: dict[str, Finding] = {}
    functions = FUNCTIONS
    for spec in _DECIDED:
        criterion_id = spec.id
        function = functions[criterion_id]
        # Malformed data a criterion cannot read becomes needs-review, never a crash.
        try:
            findings[criterion_id] = function(ctx)
        except _UNREADABLE as exc:
            findings[criterion_id] = _unreadable(exc)
    findings[DERIVED] = derive_autoantibody(findings)

    # Each criterion's report entry: its spec's identity, its finding's decision (29 per patient;
    # frozen_instance is CriterionResult(**fields) without the per-field object.__setattr__).
    results = tuple(
        [
            frozen_instance(
                CriterionResult,
                {
                    "id": spec.id,
                    "kind": spec.kind,
                    "ref": spec.ref,
                    "status": (finding := findings[spec.id]).status,
                    "reason": finding.reason,
                    "evidence": finding.evidence,
                    "missing": finding.missing,
                    "part_of": spec.part_of,
                },
            )
            for spec in CRITERIA
        ]
    )
    vital = vital_status(record.patient, as_of)
    warnings = (
        tuple(record.warnings)
        + tuple(
            f"{category} could not be obtained: {why}"
            for category, why in sorted(record.failed.items())
        )
        + ((vital.warning,) if vital.warning else ())
    )
    # EligibilityReport(...) given every field, without the per-field object.__setattr__.
    return frozen_instance(
        EligibilityReport,
        {
            "study": STUDY_ID,
            "patient": record.patient_reference,
            "as_of": as_of.isoformat(),
            "verdict": final_verdict(verdict_of(results), vital),
            "criteria": results,
            "warnings": warnings,
            "deceased": vital.deceased,
            "reason": vital.reason,
            "answers": (),
            "not_obtained": tuple(sorted(record.failed)),
        },
    )


# Errors a criterion raises on data it cannot read. Criterion code is written to handle bad
# values itself; catching these is the last line of defence, so that one unreadable resource
# cannot take down the whole screening (and never turns into not-met): see evaluate().
_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)
# The criteria decided by a function of their own, in CRITERIA.md order.
_DECIDED: tuple[CriterionSpec, ...] = tuple(spec for spec in CRITERIA if spec.id != DERIVED)


def _unreadable(exc: Exception) -> Finding:
    """The finding of a criterion that raised on data it could not read (see _UNREADABLE)."""
    return Finding(
        "needs-review",
        f"the record holds data this criterion could not read ({type(exc).__name__}); review by hand",
    )
