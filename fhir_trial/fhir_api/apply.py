"""R4 PlanDefinition/$apply for the study's eligibility PlanDefinition: screen one patient.

``POST PlanDefinition/nct06010472-eligibility/$apply`` and ``POST PlanDefinition/$apply``
(routed by :func:`~fhir_trial.fhir_api.operations.register_operations`). Body: a Parameters
resource with

- ``subject`` (valueString or valueReference): the Patient, ``Patient/<id>``; may be left out
  when ``data`` holds a single Patient;
- ``data`` (``resource``): a Bundle with the patient's record (as in CPG-on-FHIR ``$apply``);
- ``url`` (valueUri/valueCanonical/valueString): the PlanDefinition canonical, ``url|version``
  allowed; required at type level, checked when given at instance level;
- custom: ``asOf`` and ``infusionDate`` (valueDate): the screening date (default today) and
  the planned infusion date (default asOf);
- R4's context parameters (encounter, practitioner, organization, userType, userLanguage,
  userTaskContext, setting, settingContext) are accepted and ignored; any other name is 400.

Answer: a CarePlan (status draft, intent proposal, ``instantiatesCanonical`` the
PlanDefinition) whose ``contained`` holds the RequestGroup (one action per PlanDefinition
action that applies: "alive at screening" unless the patient was deceased on the screening
date, then each criterion that is ``met``, plus the verdict action carrying the
proposed ResearchSubject as its ``resource``), the GuidanceResponse with every criterion, the
Parameters it points to, and the ResearchSubject. Contained resources do not nest (dom-2):
the GuidanceResponse's Parameters sits beside it in the CarePlan.

Errors (:class:`~fhir_trial.fhir_api.requests_io.OperationError`, with FHIRPath expressions):
400 bad or missing parameters, input that is not JSON / not FHIR / holds no Patient, several
Patients and no ``subject`` (the candidates are named); 404 another PlanDefinition; 422 a
``subject`` that is not in ``data``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Response

from fhir_trial.config import Settings
from fhir_trial.errors import InputError, PatientSelectionError
from fhir_trial.evaluate import evaluate
from fhir_trial.fhir_api.requests_io import (
    OperationError,
    dated_settings,
    fhir_response,
    parameter_path,
    parse_date,
    read_json_body,
)
from fhir_trial.fhir_api.store import ResourceStore, matches_url
from fhir_trial.outputs.fhir import (
    PLAN_DEFINITION_URL,
    report_guidance_response,
    report_research_subject,
)
from fhir_trial.record import PatientRecord
from fhir_trial.report import EligibilityReport
from fhir_trial.sources.bundle import patients_in_bundle, record_from_bundle
from fhir_trial.study.plan_definition import ALIVE_ACTION_ID

__all__ = [
    "APPLY_DEFINITION",
    "APPLY_DOC",
    "PLAN_ID",
    "ApplyInput",
    "apply_care_plan",
    "apply_operation",
    "parse_apply_parameters",
    "record_for",
]

APPLY_DEFINITION = "http://hl7.org/fhir/OperationDefinition/PlanDefinition-apply"
PLAN_ID = PLAN_DEFINITION_URL.rsplit("/", 1)[-1]
CONTEXT_PARAMETERS = frozenset(
    {
        "encounter",
        "practitioner",
        "organization",
        "userType",
        "userLanguage",
        "userTaskContext",
        "setting",
        "settingContext",
    }
)
APPLY_PARAMETERS = frozenset({"subject", "data", "url", "asOf", "infusionDate"})
_OTHER_TYPE = re.compile(r"^([A-Z][A-Za-z]+)/")

APPLY_DOC = (
    "R4 PlanDefinition/$apply for the study's eligibility PlanDefinition. In: subject (Patient "
    "reference; optional when data holds one Patient), data (a Bundle with the patient's "
    "record), url (the PlanDefinition canonical; required at type level) and two custom "
    "parameters, asOf and infusionDate (valueDate: screening date, default today; planned "
    "infusion, default asOf). Out: a draft CarePlan whose contained RequestGroup, "
    "GuidanceResponse (+ its Parameters) and proposed ResearchSubject carry the result."
)


@dataclass
class ApplyInput:
    """The parameters of one ``$apply`` call, checked."""

    data: dict[str, Any]
    data_path: str
    subject: str | None = None
    subject_path: str = field(default_factory=lambda: parameter_path("subject"))
    url: str | None = None
    url_path: str = field(default_factory=lambda: parameter_path("url"))
    as_of: dt.date | None = None
    infusion_date: dt.date | None = None


def _one_value(param: Mapping[str, Any], index: int, types: tuple[str, ...]) -> tuple[Any, str]:
    """The value of a parameter among ``value<Type>`` for ``types``, with its FHIRPath."""
    name = param["name"]
    for type_ in types:
        key = f"value{type_}"
        if key in param:
            return param[key], f"Parameters.parameter[{index}].{key}"
    wanted = " or ".join(f"value{t}" for t in types)
    raise OperationError(
        400, "invalid", f"parameter {name!r} needs {wanted}", f"Parameters.parameter[{index}]"
    )


def parse_apply_parameters(body: Mapping[str, Any]) -> ApplyInput:
    """Check a ``$apply`` Parameters resource; :class:`OperationError` 400 names the FHIRPath."""
    if body.get("resourceType") != "Parameters":
        raise OperationError(
            400,
            "invalid",
            f"$apply expects a Parameters resource, got a {body.get('resourceType')}",
            "Parameters",
        )
    params = body.get("parameter", [])
    if not isinstance(params, list):
        raise OperationError(
            400, "structure", "Parameters.parameter is not a list", "Parameters.parameter"
        )
    seen: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for index, param in enumerate(params):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise OperationError(400, "structure", "a parameter without a name", where)
        name = param["name"]
        if name in CONTEXT_PARAMETERS:
            continue
        if name not in APPLY_PARAMETERS:
            known = ", ".join(sorted(APPLY_PARAMETERS | CONTEXT_PARAMETERS))
            raise OperationError(
                400, "not-supported", f"unknown parameter {name!r}; $apply takes: {known}", where
            )
        seen.setdefault(name, []).append((index, param))
    for name, found in seen.items():
        if len(found) > 1:
            hint = (
                "; screen several patients with ResearchStudy/$screen-population"
                if name == "subject"
                else ""
            )
            raise OperationError(
                400,
                "invalid",
                f"parameter {name!r} is given {len(found)} times (once only){hint}",
                parameter_path(name),
            )
    if "data" not in seen:
        raise OperationError(
            400,
            "required",
            "parameter 'data' (a Bundle with the patient's record, in parameter.resource) is required",
            parameter_path("data"),
        )
    data_index, data_param = seen["data"][0]
    data = data_param.get("resource")
    data_path = f"Parameters.parameter[{data_index}].resource"
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise OperationError(
            400, "invalid", "parameter 'data' must carry a Bundle in parameter.resource", data_path
        )
    inputs = ApplyInput(data=data, data_path=data_path)
    if "subject" in seen:
        index, param = seen["subject"][0]
        value, path = _one_value(param, index, ("String", "Reference"))
        subject = value.get("reference") if isinstance(value, dict) else value
        if not isinstance(subject, str) or not subject.strip():
            raise OperationError(400, "invalid", "subject must be a Patient reference", path)
        other = _OTHER_TYPE.match(subject)
        if other and other.group(1) != "Patient":
            raise OperationError(
                400, "invalid", f"subject must be a Patient, not a {other.group(1)}", path
            )
        inputs.subject, inputs.subject_path = subject.strip(), path
    if "url" in seen:
        index, param = seen["url"][0]
        value, path = _one_value(param, index, ("Uri", "Canonical", "Url", "String"))
        if not isinstance(value, str) or not value:
            raise OperationError(400, "invalid", "url must be a canonical URL", path)
        inputs.url, inputs.url_path = value, path
    for name in ("asOf", "infusionDate"):
        if name in seen:
            index, param = seen[name][0]
            value, path = _one_value(param, index, ("Date",))
            day = parse_date(value, path, name)
            if name == "asOf":
                inputs.as_of = day
            else:
                inputs.infusion_date = day
    return inputs


def record_for(inputs: ApplyInput) -> PatientRecord:
    """The subject's record from ``data``: 400 when ambiguous, 422 when the subject is not there."""
    try:
        candidates = patients_in_bundle(inputs.data)
    except InputError as exc:
        raise OperationError(400, "invalid", f"data: {exc.message}", inputs.data_path) from None
    if not candidates:
        raise OperationError(
            422, "not-found", "the data Bundle holds no Patient resource", inputs.data_path
        )
    if inputs.subject is None and len(candidates) > 1:
        raise OperationError(
            400,
            "required",
            f"the data Bundle holds {len(candidates)} Patients ({', '.join(candidates)}); "
            "say which one with the subject parameter",
            parameter_path("subject"),
        )
    try:
        return record_from_bundle(inputs.data, patient=inputs.subject)
    except PatientSelectionError as exc:
        raise OperationError(
            422,
            "not-found",
            f"subject {inputs.subject} is not in the data Bundle; its Patients are: "
            f"{', '.join(exc.candidates or candidates)}",
            inputs.subject_path,
        ) from None


def apply_care_plan(
    report: EligibilityReport,
    plan: Mapping[str, Any] | None = None,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The ``$apply`` answer for one report: a draft CarePlan with everything contained.

    ``plan`` (the PlanDefinition) gives the titles, prefixes and codes of the actions that apply.
    """
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    request_id = str(uuid.uuid4())
    guidance = report_guidance_response(report, request_id=request_id, now=now)
    parameters = guidance.pop("contained")
    guidance["id"] = "guidance"
    subject = report_research_subject(report)
    subject["id"] = "research-subject"
    plan_actions = {a.get("id"): a for a in (plan or {}).get("action", []) if isinstance(a, dict)}
    actions: list[dict[str, Any]] = []
    if report.deceased is None:  # its condition: not "Deceased"
        source = plan_actions.get(ALIVE_ACTION_ID, {})
        alive = {key: source[key] for key in ("title", "description") if key in source}
        alive.setdefault("title", "Patient alive on the screening date")
        actions.append(alive)
    for result in report.criteria:
        if result.status != "met":  # the action's applicability condition is "met"
            continue
        source = plan_actions.get(result.id, {})
        action: dict[str, Any] = {
            key: source[key] for key in ("prefix", "title", "description", "code") if key in source
        }
        action.setdefault("title", result.id)
        actions.append(action)
    verdict_source = plan_actions.get("verdict", {})
    actions.append(
        {
            "title": verdict_source.get("title", "Eligibility verdict"),
            "description": report.verdict,
            "resource": {"reference": "#research-subject"},
        }
    )
    authored = now.isoformat()
    request_group = {
        "resourceType": "RequestGroup",
        "id": "request-group",
        "instantiatesCanonical": [PLAN_DEFINITION_URL],
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": report.patient},
        "authoredOn": authored,
        "action": actions,
    }
    return {
        "resourceType": "CarePlan",
        "id": f"apply-{request_id}",
        "contained": [request_group, guidance, *parameters, subject],
        "instantiatesCanonical": [PLAN_DEFINITION_URL],
        "status": "draft",
        "intent": "proposal",
        "title": f"{report.study} eligibility screening",
        "description": f"{report.study} screening as of {report.as_of}: {report.verdict}"
        + (f" ({report.reason})" if report.reason else ""),
        "subject": {"reference": report.patient},
        "created": authored,
        "supportingInfo": [{"reference": "#guidance"}],
        "activity": [{"reference": {"reference": "#request-group"}}],
    }


def apply_operation(store: ResourceStore, settings: Settings, instance: str | None) -> Response:
    """Answer one ``$apply`` request (``instance``: the PlanDefinition id in the path, if any)."""
    plan = store.read("PlanDefinition", PLAN_ID)
    if plan is None or (instance is not None and instance != PLAN_ID):
        what = f"PlanDefinition/{instance}" if instance else f"PlanDefinition/{PLAN_ID}"
        raise OperationError(404, "not-found", f"{what} is not known here")
    inputs = parse_apply_parameters(read_json_body(settings.max_request_bytes))
    if inputs.url is None and instance is None:
        raise OperationError(
            400,
            "required",
            f"type-level $apply needs the url parameter (the PlanDefinition canonical, "
            f"{PLAN_DEFINITION_URL})",
            parameter_path("url"),
        )
    if inputs.url is not None and not matches_url(plan, inputs.url):
        raise OperationError(
            404,
            "not-found",
            f"no PlanDefinition {inputs.url} here; this server applies {PLAN_DEFINITION_URL}"
            f"|{plan.get('version')}",
            inputs.url_path,
        )
    record = record_for(inputs)
    report = evaluate(record, dated_settings(settings, inputs.as_of, inputs.infusion_date))
    return fhir_response(apply_care_plan(report, plan))
