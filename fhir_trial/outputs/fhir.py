"""A report as FHIR R4: a GuidanceResponse (results in contained Parameters) and a ResearchSubject.

The GuidanceResponse names the PlanDefinition it ran (``moduleCanonical``); its ``outputParameters``
point at a contained Parameters resource with one ``criterion`` part per criterion (id, kind, status,
reason, evidence references, missing data) plus the ``verdict``. Unknown criteria are also listed
as ``dataRequirement`` entries so a FHIR client can see what data would decide them. A patient
deceased on the screening date gets ``deceased`` and ``reason`` parameters and the reason as the
GuidanceResponse's ``reasonCode`` (SNOMED CT 419099009 Dead) and ``note``; the ResearchSubject
then follows the verdict, ``ineligible``, never ``candidate``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fhir_trial.canonical import CODESYSTEM_URL, NCT_SYSTEM, STUDY_ID, STUDY_RESOURCE_ID, canonical
from fhir_trial.deceased import DEAD_CODING, fhir_date_time
from fhir_trial.report import CriterionResult, EligibilityReport

PLAN_DEFINITION_URL = canonical("PlanDefinition", f"{STUDY_RESOURCE_ID}-eligibility")

# CRITERIA.md verdict -> R4 ResearchSubject.status (required binding research-subject-status).
SUBJECT_STATUS = {
    "eligible": "eligible",
    "ineligible": "ineligible",
    "potentially-eligible": "candidate",
}


def _criterion_parameter(result: CriterionResult) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "id", "valueCoding": {"system": CODESYSTEM_URL, "code": result.id}},
        {"name": "kind", "valueCode": result.kind},
        {"name": "ref", "valueString": result.ref},
        {"name": "status", "valueCode": result.status},
        {"name": "reason", "valueString": result.reason},
    ]
    parts += [{"name": "evidence", "valueReference": {"reference": ref}} for ref in result.evidence]
    parts += [{"name": "missing", "valueString": item} for item in result.missing]
    if result.part_of:
        parts.append({"name": "partOf", "valueCode": result.part_of})
    return {"name": "criterion", "part": parts}


def _deceased_parameter(deceased: str | bool) -> dict[str, Any]:
    """``deceased``: the death date as recorded (valueDateTime when FHIR-valid as written), or true."""
    if deceased is True or not isinstance(deceased, str):
        return {"name": "deceased", "valueBoolean": True}
    if fhir_date_time(deceased):
        return {"name": "deceased", "valueDateTime": deceased}
    return {"name": "deceased", "valueString": deceased}


def report_parameters(report: EligibilityReport) -> dict[str, Any]:
    """The per-criterion results as a Parameters resource."""
    parameters: list[dict[str, Any]] = [
        {"name": "study", "valueString": report.study},
        {"name": "verdict", "valueCode": report.verdict},
        {"name": "asOf", "valueDate": report.as_of},
    ]
    if report.reason:
        parameters.append({"name": "reason", "valueString": report.reason})
    if report.deceased is not None:
        parameters.append(_deceased_parameter(report.deceased))
    parameters += [_criterion_parameter(r) for r in report.criteria]
    parameters += [{"name": "warning", "valueString": w} for w in report.warnings]
    return {"resourceType": "Parameters", "id": "results", "parameter": parameters}


def report_guidance_response(
    report: EligibilityReport, *, request_id: str | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The report as a GuidanceResponse with a contained Parameters holding every criterion."""
    request_id = request_id or str(uuid.uuid4())
    when = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0).isoformat()
    unknown = [r for r in report.criteria if r.status == "unknown"]
    response: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": f"screening-{request_id}",
        "contained": [report_parameters(report)],
        "requestIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{request_id}"},
        "moduleCanonical": PLAN_DEFINITION_URL,
        # success: the rule ran; data-required would mean it could not run at all.
        "status": "success",
        "subject": {"reference": report.patient},
        "occurrenceDateTime": when,
        "outputParameters": {"reference": "#results"},
    }
    if report.reason:
        # Why the verdict does not follow from the criteria alone (deceased, or vital status unclear).
        reason: dict[str, Any] = {"text": report.reason}
        if report.deceased is not None:
            reason["coding"] = [dict(DEAD_CODING)]
        response["reasonCode"] = [reason]
        response["note"] = [{"text": report.reason}]
    if unknown:
        response["dataRequirement"] = [
            {
                "type": "Resource",
                "extension": [
                    {
                        "url": canonical("StructureDefinition", "missing-for-criterion"),
                        "valueCode": r.id,
                    }
                ],
            }
            for r in unknown
        ]
    return response


def report_research_subject(report: EligibilityReport) -> dict[str, Any]:
    """A proposed ResearchSubject: candidate, eligible or ineligible per the verdict."""
    return {
        "resourceType": "ResearchSubject",
        "id": f"{STUDY_RESOURCE_ID}-{report.patient.split('/')[-1]}",
        "status": SUBJECT_STATUS[report.verdict],
        # By identifier: servers that assign their own ids hold the study under another id.
        "study": {"identifier": {"system": NCT_SYSTEM, "value": STUDY_ID}, "display": STUDY_ID},
        "individual": {"reference": report.patient},
    }


def report_bundle(report: EligibilityReport, *, request_id: str | None = None) -> dict[str, Any]:
    """GuidanceResponse and proposed ResearchSubject together in a collection Bundle."""
    resources = [
        report_guidance_response(report, request_id=request_id),
        report_research_subject(report),
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource} for resource in resources
        ],
    }
