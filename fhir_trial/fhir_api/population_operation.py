"""ResearchStudy/$screen-population: screen a whole population posted in one request.

``POST ResearchStudy/nct06010472/$screen-population`` (custom; definition canonical
:data:`~fhir_trial.study.operation_definition.SCREEN_POPULATION_DEFINITION`, routed by
:func:`~fhir_trial.fhir_api.operations.register_operations`). Body: a Bundle (collection,
transaction, batch, searchset) as ``application/fhir+json``, or Bulk NDJSON as
``application/fhir+ndjson`` (one stream, resource types mixed, any order). NDJSON is spooled to
a temporary folder (one file per resource type) and indexed on disk by
:class:`~fhir_trial.sources.ndjson.NdjsonExport`, so memory stays flat. Query parameters:
``asOf``, ``infusionDate`` (dates), ``missing`` (comma-separated data categories known not to
be in the data: criteria needing them become unknown), ``guidance=true`` (add each patient's
full GuidanceResponse).

Answer (streamed): a Parameters resource with one ``patient`` parameter per patient
(``subject``, ``verdict``, ``researchSubjectStatus``, one ``criterion`` part per criterion with
``id`` and ``status``, ``warning``s; ``deceased`` and ``reason`` for a patient deceased on the
screening date) followed by ``asOf``, ``patients``, ``deceased`` and ``living`` (the funnel's first
step), one ``verdict`` count per verdict and one ``feasibility`` parameter per criterion
(``removes``, ``remaining`` and a count per status over the living patients, as
``fhir-trial screen-population`` prints them).

Errors (:class:`~fhir_trial.fhir_api.requests_io.OperationError`): 400 bad query parameters,
input that is not JSON / not FHIR / holds no Patient; 404 another ResearchStudy; 413 a body
larger than ``settings.population_max_ndjson_bytes`` (NDJSON) or
``settings.population_max_bundle_bytes`` (Bundle); 415 an unsupported content type or encoding.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flask import Response, request

from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.config import Settings
from fhir_trial.errors import InputError
from fhir_trial.evaluate import evaluate
from fhir_trial.fhir_api.requests_io import (
    FHIR_JSON,
    OperationError,
    check_encoding,
    copy_body,
    dated_settings,
    parse_date,
    read_json_body,
)
from fhir_trial.fhir_api.store import ResourceStore
from fhir_trial.outputs.fhir import SUBJECT_STATUS, report_guidance_response
from fhir_trial.population import VERDICTS, Feasibility
from fhir_trial.record import CATEGORIES, PatientRecord
from fhir_trial.report import STATUSES, EligibilityReport
from fhir_trial.sources._common import is_known_type
from fhir_trial.sources.bundle import patients_in_bundle, records_from_bundle
from fhir_trial.sources.ndjson import NdjsonExport

__all__ = ["feasibility_parameters", "screen_population_operation"]

log = logging.getLogger(__name__)

NDJSON_TYPES = frozenset({"application/fhir+ndjson", "application/ndjson", "application/x-ndjson"})
POPULATION_QUERY = frozenset({"asOf", "infusionDate", "missing", "guidance", "_format"})
UPLOAD_NAME = "request-body"
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]{1,64})"')


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
    bundle = read_json_body(settings.population_max_bundle_bytes)
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

        copy_body(limit, write)
        route(bytes(pending))


def _ndjson_population(settings: Settings, missing: list[str]) -> _Population:
    check_encoding()
    folder = Path(tempfile.mkdtemp(prefix="fhir-trial-upload-"))
    export: NdjsonExport | None = None

    def cleanup() -> None:
        if export is not None:
            export.close()
        shutil.rmtree(folder, ignore_errors=True)

    try:
        _spool_ndjson(settings.population_max_ndjson_bytes, folder)
        if not any(folder.iterdir()):
            raise OperationError(400, "required", "the NDJSON body holds no lines")
        export = NdjsonExport(folder, missing)
        count = export.count_patients()  # a line nested too deeply is one unreadable line
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
    if report.deceased is not None:  # the death date as recorded, or "true"
        deceased = "true" if report.deceased is True else str(report.deceased)
        parts.append({"name": "deceased", "valueString": deceased})
    if report.reason:
        parts.append({"name": "reason", "valueString": report.reason})
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
    # The funnel's first step: deceased patients; the feasibility rows count the living ones.
    out.append({"name": "deceased", "valueInteger": feasibility.deceased})
    out.append({"name": "living", "valueInteger": feasibility.living})
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


def screen_population_operation(store: ResourceStore, settings: Settings, rid: str) -> Response:
    """Answer one ``$screen-population`` request on ``ResearchStudy/<rid>`` (streamed)."""
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
    as_of = parse_date(args["asOf"], "asOf", "asOf") if "asOf" in args else None
    infusion = (
        parse_date(args["infusionDate"], "infusionDate", "infusionDate")
        if "infusionDate" in args
        else None
    )
    guidance_arg = args.get("guidance", "false").lower()
    if guidance_arg not in ("true", "false"):
        raise OperationError(400, "value", f"guidance must be true or false, got {guidance_arg!r}")
    missing = _categories(args.get("missing"))
    mimetype = request.mimetype.lower()
    if mimetype in NDJSON_TYPES:
        population = _ndjson_population(settings, missing)
    else:
        population = _bundle_population(settings, missing)
    stream = _stream_answer(
        population, dated_settings(settings, as_of, infusion), guidance_arg == "true"
    )
    return Response(stream, status=200, content_type=FHIR_JSON)
