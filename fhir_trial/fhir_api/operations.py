"""FHIR operations for registries: screen one patient (``$apply``) or a population, over HTTP.

Registered on the ``/fhir`` blueprint by :func:`register_operations`; each one is answered only
when the study's own resource (the PlanDefinition or the ResearchStudy) is served by the store, so
the CapabilityStatement (:func:`resource_operations`) never claims an operation that is not there.

``POST PlanDefinition/nct06010472-eligibility/$apply`` and ``POST PlanDefinition/$apply``
    R4 PlanDefinition/$apply. Body: a Parameters resource with

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
    action that applies, i.e. whose criterion is ``met``, plus the verdict action carrying the
    proposed ResearchSubject as its ``resource``), the GuidanceResponse with every criterion, the
    Parameters it points to, and the ResearchSubject. Contained resources do not nest (dom-2):
    the GuidanceResponse's Parameters sits beside it in the CarePlan.

``POST ResearchStudy/nct06010472/$screen-population`` (custom; definition canonical
:data:`SCREEN_POPULATION_DEFINITION`, see :func:`screen_population_operation_definition`)
    Body: a Bundle (collection, transaction, batch, searchset) as ``application/fhir+json``, or
    Bulk NDJSON as ``application/fhir+ndjson`` (one stream, resource types mixed, any order).
    NDJSON is spooled to a temporary folder (one file per resource type) and indexed on disk by
    :class:`~fhir_trial.sources.ndjson.NdjsonExport`, so memory stays flat. Query parameters:
    ``asOf``, ``infusionDate`` (dates), ``missing`` (comma-separated data categories known not to
    be in the data: criteria needing them become unknown), ``guidance=true`` (add each patient's
    full GuidanceResponse).

    Answer (streamed): a Parameters resource with one ``patient`` parameter per patient
    (``subject``, ``verdict``, ``researchSubjectStatus``, one ``criterion`` part per criterion
    with ``id`` and ``status``, ``warning``s) followed by ``asOf``, ``patients``, one ``verdict``
    count per verdict and one ``feasibility`` parameter per criterion (``removes``,
    ``remaining`` and a count per status, as ``fhir-trial screen-population`` prints them).

Errors are OperationOutcomes with FHIRPath expressions: 400 bad or missing parameters, input that
is not JSON / not FHIR / holds no Patient, several Patients and no ``subject`` (the candidates are
named); 404 another PlanDefinition or ResearchStudy; 405 other methods; 413 a body larger than
``settings.max_request_bytes``; 415 an unsupported content type or encoding; 422 a ``subject``
that is not in ``data``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.config import Settings
from fhir_trial.errors import FhirTrialError, InputError, PatientSelectionError
from fhir_trial.evaluate import evaluate
from fhir_trial.fhir_api.store import ResourceStore, matches_url
from fhir_trial.outputs.fhir import (
    PLAN_DEFINITION_URL,
    SUBJECT_STATUS,
    report_guidance_response,
    report_research_subject,
)
from fhir_trial.population import VERDICTS, Feasibility
from fhir_trial.record import CATEGORIES, PatientRecord
from fhir_trial.report import STATUSES, EligibilityReport
from fhir_trial.sources._common import is_known_type
from fhir_trial.sources.bundle import patients_in_bundle, record_from_bundle, records_from_bundle
from fhir_trial.sources.ndjson import NdjsonExport

__all__ = [
    "APPLY_DEFINITION",
    "SCREEN_POPULATION_DEFINITION",
    "register_operations",
    "resource_operations",
    "screen_population_operation_definition",
]

from fhir_trial.study.operation_definition import (
    POPULATION_DOC,
    SCREEN_POPULATION_DEFINITION,
    screen_population_operation_definition,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json; charset=utf-8"
APPLY_DEFINITION = "http://hl7.org/fhir/OperationDefinition/PlanDefinition-apply"
PLAN_ID = PLAN_DEFINITION_URL.rsplit("/", 1)[-1]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

JSON_TYPES = frozenset({"", "application/fhir+json", "application/json", "application/json+fhir"})
NDJSON_TYPES = frozenset({"application/fhir+ndjson", "application/ndjson", "application/x-ndjson"})
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
POPULATION_QUERY = frozenset({"asOf", "infusionDate", "missing", "guidance", "_format"})
CHUNK = 64 * 1024
UPLOAD_NAME = "request-body"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_OTHER_TYPE = re.compile(r"^([A-Z][A-Za-z]+)/")
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]{1,64})"')

APPLY_DOC = (
    "R4 PlanDefinition/$apply for the study's eligibility PlanDefinition. In: subject (Patient "
    "reference; optional when data holds one Patient), data (a Bundle with the patient's "
    "record), url (the PlanDefinition canonical; required at type level) and two custom "
    "parameters, asOf and infusionDate (valueDate: screening date, default today; planned "
    "infusion, default asOf). Out: a draft CarePlan whose contained RequestGroup, "
    "GuidanceResponse (+ its Parameters) and proposed ResearchSubject carry the result."
)


class OperationError(FhirTrialError):
    """A request the operation cannot serve; becomes an OperationOutcome with ``status``."""

    def __init__(self, status: int, code: str, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.expression = expression


def _outcome(status: int, code: str, diagnostics: str, expression: str | None = None) -> Response:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return _fhir(body, status)


def _fhir(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, content_type=FHIR_JSON)


def _where(name: str) -> str:
    return f"Parameters.parameter.where(name = '{name}')"


# --------------------------------------------------------------------------- CapabilityStatement
def resource_operations(store: ResourceStore, resource_type: str) -> dict[str, Any]:
    """``{"operation": [...]}`` for a CapabilityStatement resource entry, or ``{}``."""
    if resource_type == "PlanDefinition" and store.read("PlanDefinition", PLAN_ID):
        return {
            "operation": [
                {"name": "apply", "definition": APPLY_DEFINITION, "documentation": APPLY_DOC}
            ]
        }
    if resource_type == "ResearchStudy" and store.read("ResearchStudy", STUDY_RESOURCE_ID):
        return {
            "operation": [
                {
                    "name": "screen-population",
                    "definition": SCREEN_POPULATION_DEFINITION,
                    "documentation": POPULATION_DOC,
                }
            ]
        }
    return {}


def _check_encoding() -> None:
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise OperationError(
            415, "not-supported", f"Content-Encoding {encoding!r} is not supported; send it plain"
        )


def _copy_body(limit: int, write: Callable[[bytes], Any]) -> int:
    """Pass the request body to ``write`` in chunks; 413 beyond ``limit`` bytes. Returns the size."""
    too_large = OperationError(
        413, "too-costly", f"the request body is larger than the limit of {limit} bytes"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    total = 0
    try:
        stream = request.stream
        while chunk := stream.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_large
            write(chunk)
    except RequestEntityTooLarge:
        raise too_large from None
    except HTTPException as exc:  # e.g. the client went away mid-body
        raise OperationError(
            400, "incomplete", f"the request body could not be read ({exc.name})"
        ) from None
    if total == 0:
        raise OperationError(400, "required", "the request body is empty")
    return total


def _read_json_body(limit: int) -> dict[str, Any]:
    """The body as one FHIR resource (JSON object with a resourceType)."""
    mimetype = request.mimetype.lower()
    if mimetype not in JSON_TYPES:
        raise OperationError(
            415,
            "not-supported",
            f"Content-Type {mimetype!r} is not supported here; send application/fhir+json",
        )
    _check_encoding()
    chunks: list[bytes] = []
    _copy_body(limit, chunks.append)
    return parse_resource(b"".join(chunks), "the request body")


def parse_resource(raw: bytes, what: str) -> dict[str, Any]:
    """JSON bytes -> a FHIR resource dict; :class:`OperationError` 400 with a one-line reason."""
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise OperationError(400, "structure", f"{what} is not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise OperationError(
            400,
            "structure",
            f"{what} is not JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
        ) from None
    except RecursionError:
        raise OperationError(400, "structure", f"{what} is JSON nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise OperationError(
            400, "structure", f"{what} is JSON but not a FHIR resource (no resourceType)"
        )
    return data


def _date(value: Any, where: str, name: str) -> dt.date:
    text = value if isinstance(value, str) else ""
    try:
        if not _DATE.match(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise OperationError(
            400, "value", f"{name} must be a date written YYYY-MM-DD, got {value!r}", where
        ) from None


# --------------------------------------------------------------------------- $apply
@dataclass
class ApplyInput:
    """The parameters of one ``$apply`` call, checked."""

    data: dict[str, Any]
    data_path: str
    subject: str | None = None
    subject_path: str = field(default_factory=lambda: _where("subject"))
    url: str | None = None
    url_path: str = field(default_factory=lambda: _where("url"))
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
                _where(name),
            )
    if "data" not in seen:
        raise OperationError(
            400,
            "required",
            "parameter 'data' (a Bundle with the patient's record, in parameter.resource) is required",
            _where("data"),
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
            day = _date(value, path, name)
            if name == "asOf":
                inputs.as_of = day
            else:
                inputs.infusion_date = day
    return inputs


def _record_for(inputs: ApplyInput) -> PatientRecord:
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
            _where("subject"),
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
        "description": f"{report.study} screening as of {report.as_of}: {report.verdict}",
        "subject": {"reference": report.patient},
        "created": authored,
        "supportingInfo": [{"reference": "#guidance"}],
        "activity": [{"reference": {"reference": "#request-group"}}],
    }


# --------------------------------------------------------------------------- population
@dataclass
class _Population:
    """Records to screen and how to clean up after them."""

    records: Iterator[PatientRecord]
    cleanup: Callable[[], None] = lambda: None


def _categories(raw: str | None) -> list[str]:
    names = [part.strip() for part in (raw or "").split(",") if part.strip()]
    unknown = sorted(set(names) - set(CATEGORIES))
    if unknown:
        raise OperationError(
            400,
            "value",
            f"missing: unknown data categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; choose from: {', '.join(CATEGORIES)}",
        )
    return names


def _bundle_population(settings: Settings, missing: list[str]) -> _Population:
    bundle = _read_json_body(settings.max_request_bytes)
    if bundle["resourceType"] != "Bundle":
        raise OperationError(
            400,
            "invalid",
            f"expected a Bundle (or Bulk NDJSON as application/fhir+ndjson), got a "
            f"{bundle['resourceType']}",
            bundle["resourceType"],
        )
    try:
        patients = patients_in_bundle(bundle)
    except InputError as exc:
        raise OperationError(400, "invalid", exc.message, "Bundle") from None
    if not patients:
        raise OperationError(400, "invalid", "the Bundle holds no Patient resource", "Bundle.entry")

    def records() -> Iterator[PatientRecord]:
        for record in records_from_bundle(bundle):
            for category in missing:
                record.mark_failed(category, f"{category} is not in the data (as the caller said)")
            yield record

    return _Population(records())


def _spool_ndjson(limit: int, folder: Path) -> None:
    """Write the body into ``folder``, one ``<Type>.<name>.ndjson`` per resource type.

    Lines are routed by the first ``resourceType`` they spell, so that a line that cannot be read
    still fails its own data category (see :mod:`fhir_trial.sources.ndjson`); a line naming no
    known type goes to ``unknown.<name>.ndjson`` and becomes a warning on every record.
    """
    with ExitStack() as stack:
        handles: dict[str, IO[bytes]] = {}
        pending = bytearray()

        def route(line: bytes) -> None:
            if not line.strip():
                return
            match = _RESOURCE_TYPE.search(line)
            rtype = match.group(1).decode("ascii") if match else ""
            key = rtype if is_known_type(rtype) else "unknown"
            handle = handles.get(key)
            if handle is None:
                handle = stack.enter_context((folder / f"{key}.{UPLOAD_NAME}.ndjson").open("wb"))
                handles[key] = handle
            handle.write(line.rstrip(b"\r\n") + b"\n")

        def write(chunk: bytes) -> None:
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                pending.extend(chunk[start:end])
                route(bytes(pending))
                pending.clear()
                start = end + 1
            pending.extend(chunk[start:])

        _copy_body(limit, write)
        route(bytes(pending))


def _ndjson_population(settings: Settings, missing: list[str]) -> _Population:
    _check_encoding()
    folder = Path(tempfile.mkdtemp(prefix="fhir-trial-upload-"))
    export: NdjsonExport | None = None

    def cleanup() -> None:
        if export is not None:
            export.close()
        shutil.rmtree(folder, ignore_errors=True)

    try:
        _spool_ndjson(settings.max_request_bytes, folder)
        if not any(folder.iterdir()):
            raise OperationError(400, "required", "the NDJSON body holds no lines")
        export = NdjsonExport(folder, missing)
        try:
            count = export.count_patients()
        except RecursionError:
            raise OperationError(
                400, "structure", "an NDJSON line is JSON nested too deeply"
            ) from None
        if count == 0:
            problems = export.problems.summary()
            detail = f" (first problem: {problems[0]})" if problems else ""
            raise OperationError(
                400,
                "invalid",
                f"the NDJSON body holds no Patient resource with an id{detail}",
            )
    except BaseException:
        cleanup()
        raise
    return _Population(iter(export), cleanup)


def _patient_parameter(report: EligibilityReport, guidance: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "subject", "valueReference": {"reference": report.patient}},
        {"name": "verdict", "valueCode": report.verdict},
        {"name": "researchSubjectStatus", "valueCode": SUBJECT_STATUS[report.verdict]},
    ]
    parts += [
        {
            "name": "criterion",
            "part": [
                {"name": "id", "valueCode": result.id},
                {"name": "status", "valueCode": result.status},
            ],
        }
        for result in report.criteria
    ]
    parts += [{"name": "warning", "valueString": warning} for warning in report.warnings]
    if guidance:
        parts.append({"name": "guidanceResponse", "resource": report_guidance_response(report)})
    return {"name": "patient", "part": parts}


def feasibility_parameters(feasibility: Feasibility) -> list[dict[str, Any]]:
    """The feasibility report as Parameters.parameter entries (see the module docstring)."""
    out: list[dict[str, Any]] = []
    if feasibility.as_of:
        out.append({"name": "asOf", "valueDate": feasibility.as_of})
    out.append({"name": "patients", "valueInteger": feasibility.total})
    out += [
        {
            "name": "verdict",
            "part": [
                {"name": "code", "valueCode": verdict},
                {"name": "count", "valueInteger": feasibility.verdicts[verdict]},
            ],
        }
        for verdict in VERDICTS
    ]
    for row in feasibility.rows():
        parts: list[dict[str, Any]] = [
            {"name": "id", "valueCode": row["id"]},
            {"name": "kind", "valueCode": row["kind"]},
            {"name": "ref", "valueString": row["ref"]},
        ]
        if row["partOf"]:
            parts.append({"name": "partOf", "valueCode": row["partOf"]})
        for key in ("removes", "remaining"):
            if row[key] is not None:
                parts.append({"name": key, "valueInteger": row[key]})
        parts += [{"name": status, "valueInteger": row[status]} for status in STATUSES]
        out.append({"name": "feasibility", "part": parts})
    return out


def _stream_answer(population: _Population, settings: Settings, guidance: bool) -> Iterator[str]:
    """The Parameters answer, written patient by patient; cleans up when done or abandoned."""
    feasibility = Feasibility()
    try:
        yield '{"resourceType":"Parameters","parameter":['
        separator = ""
        for number, record in enumerate(population.records, 1):
            try:
                report = evaluate(record, settings)
            except Exception as exc:  # one record must not truncate a streamed answer
                log.error(
                    "population screening: patient #%d failed (%s)", number, type(exc).__name__
                )
                failed = {
                    "name": "patient",
                    "part": [
                        {
                            "name": "subject",
                            "valueReference": {"reference": record.patient_reference},
                        },
                        {"name": "warning", "valueString": "this patient could not be screened"},
                    ],
                }
                yield separator + json.dumps(failed, ensure_ascii=False)
                separator = ","
                continue
            feasibility.add(report)
            yield separator + json.dumps(_patient_parameter(report, guidance), ensure_ascii=False)
            separator = ","
        for param in feasibility_parameters(feasibility):
            yield separator + json.dumps(param, ensure_ascii=False)
            separator = ","
        yield "]}"
    finally:
        population.cleanup()


# --------------------------------------------------------------------------- routes
def register_operations(bp: Blueprint, settings: Settings, store: ResourceStore) -> None:
    """Add the ``$apply`` and ``$screen-population`` routes to the ``/fhir`` blueprint."""

    def post_only() -> None:
        if request.method != "POST":
            raise OperationError(
                405,
                "not-supported",
                f"{request.method} is not supported: this operation takes POST",
            )

    def answer(run: Callable[[], Response]) -> Response:
        try:
            post_only()
            return run()
        except OperationError as exc:
            response = _outcome(exc.status, exc.code, exc.message, exc.expression)
            if exc.status == 405:
                response.headers["Allow"] = "POST"
            return response
        except FhirTrialError as exc:  # e.g. resources/ without ValueSets: our fault, said plainly
            log.error("operation failed: %s", exc.message)
            return _outcome(500, "exception", exc.message)

    def run_settings(as_of: dt.date | None, infusion: dt.date | None) -> Settings:
        return settings.replace(
            as_of=as_of or settings.as_of, infusion_date=infusion or settings.infusion_date
        )

    def apply(instance: str | None) -> Response:
        plan = store.read("PlanDefinition", PLAN_ID)
        if plan is None or (instance is not None and instance != PLAN_ID):
            what = f"PlanDefinition/{instance}" if instance else f"PlanDefinition/{PLAN_ID}"
            raise OperationError(404, "not-found", f"{what} is not known here")
        inputs = parse_apply_parameters(_read_json_body(settings.max_request_bytes))
        if inputs.url is None and instance is None:
            raise OperationError(
                400,
                "required",
                f"type-level $apply needs the url parameter (the PlanDefinition canonical, "
                f"{PLAN_DEFINITION_URL})",
                _where("url"),
            )
        if inputs.url is not None and not matches_url(plan, inputs.url):
            raise OperationError(
                404,
                "not-found",
                f"no PlanDefinition {inputs.url} here; this server applies {PLAN_DEFINITION_URL}"
                f"|{plan.get('version')}",
                inputs.url_path,
            )
        record = _record_for(inputs)
        report = evaluate(record, run_settings(inputs.as_of, inputs.infusion_date))
        return _fhir(apply_care_plan(report, plan))

    @bp.route("/PlanDefinition/$apply", methods=METHODS)
    def apply_type() -> Response:
        return answer(lambda: apply(None))

    @bp.route("/PlanDefinition/<rid>/$apply", methods=METHODS)
    def apply_instance(rid: str) -> Response:
        return answer(lambda: apply(rid))

    def screen(rid: str) -> Response:
        if rid != STUDY_RESOURCE_ID or store.read("ResearchStudy", rid) is None:
            raise OperationError(404, "not-found", f"ResearchStudy/{rid} is not known here")
        unknown = sorted(set(request.args) - POPULATION_QUERY)
        if unknown:
            raise OperationError(
                400,
                "not-supported",
                f"unknown parameter {unknown[0]!r}; $screen-population takes: "
                f"{', '.join(sorted(POPULATION_QUERY - {'_format'}))}",
            )
        args = request.args
        as_of = _date(args["asOf"], "asOf", "asOf") if "asOf" in args else None
        infusion = (
            _date(args["infusionDate"], "infusionDate", "infusionDate")
            if "infusionDate" in args
            else None
        )
        guidance_arg = args.get("guidance", "false").lower()
        if guidance_arg not in ("true", "false"):
            raise OperationError(
                400, "value", f"guidance must be true or false, got {guidance_arg!r}"
            )
        missing = _categories(args.get("missing"))
        mimetype = request.mimetype.lower()
        if mimetype in NDJSON_TYPES:
            population = _ndjson_population(settings, missing)
        else:
            population = _bundle_population(settings, missing)
        stream = _stream_answer(population, run_settings(as_of, infusion), guidance_arg == "true")
        return Response(stream, status=200, content_type=FHIR_JSON)

    @bp.route("/ResearchStudy/<rid>/$screen-population", methods=METHODS)
    def screen_population(rid: str) -> Response:
        return answer(lambda: screen(rid))
