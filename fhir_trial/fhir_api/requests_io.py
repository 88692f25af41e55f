"""Reading requests and writing responses for the ``/fhir`` endpoint and its operations.

One home for what every handler shares: :class:`OperationError` (a request that cannot be
served, with its HTTP status, issue code and FHIRPath), :func:`operation_outcome` and
:func:`fhir_response` (``application/fhir+json`` answers), reading a request body under the
size limit (:func:`copy_body`, :func:`read_json_body`), parsing a FHIR resource
(:func:`parse_resource`) and date parameters (:func:`parse_date`).

Status codes raised here: 400 a body that is empty, unreadable, not JSON or not a FHIR resource,
or a date that is not ``YYYY-MM-DD``; 413 a body larger than the limit; 415 an unsupported
content type or encoding.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from fhir_trial.config import Settings
from fhir_trial.errors import FhirTrialError
from fhir_trial.json_input import JsonSyntaxError, parse_json

__all__ = [
    "FHIR_JSON",
    "OperationError",
    "check_encoding",
    "copy_body",
    "dated_settings",
    "fhir_response",
    "operation_outcome",
    "parameter_path",
    "parse_date",
    "parse_resource",
    "read_json_body",
]

FHIR_JSON = "application/fhir+json; charset=utf-8"
JSON_TYPES = frozenset({"", "application/fhir+json", "application/json", "application/json+fhir"})
CHUNK = 64 * 1024
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class OperationError(FhirTrialError):
    """A request the operation cannot serve; becomes an OperationOutcome with ``status``."""

    def __init__(self, status: int, code: str, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.expression = expression


def operation_outcome(
    severity: str, code: str, diagnostics: str, *, status: int, expression: str | None = None
) -> Response:
    """An OperationOutcome response with one issue (``expression``: its FHIRPath, if any)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return fhir_response({"resourceType": "OperationOutcome", "issue": [issue]}, status)


def fhir_response(body: Mapping[str, Any], status: int = 200) -> Response:
    """``body`` as an ``application/fhir+json`` response."""
    return Response(json.dumps(body, ensure_ascii=False), status=status, content_type=FHIR_JSON)


def parameter_path(name: str) -> str:
    """The FHIRPath of the Parameters entries called ``name``."""
    return f"Parameters.parameter.where(name = '{name}')"


def check_encoding() -> None:
    """415 unless the request body is sent without a Content-Encoding."""
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise OperationError(
            415, "not-supported", f"Content-Encoding {encoding!r} is not supported; send it plain"
        )


def copy_body(limit: int, write: Callable[[bytes], Any]) -> int:
    """Pass the request body to ``write`` in chunks; 413 beyond ``limit`` bytes. Returns the size."""
    too_large = OperationError(
        413, "too-costly", f"the request body is larger than the limit of {limit} bytes"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    # This operation's own limit, not the app-wide one (which is sized for one patient).
    request.max_content_length = limit
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


def read_json_body(limit: int) -> dict[str, Any]:
    """The body as one FHIR resource (JSON object with a resourceType)."""
    mimetype = request.mimetype.lower()
    if mimetype not in JSON_TYPES:
        raise OperationError(
            415,
            "not-supported",
            f"Content-Type {mimetype!r} is not supported here; send application/fhir+json",
        )
    check_encoding()
    chunks: list[bytes] = []
    copy_body(limit, chunks.append)
    return parse_resource(b"".join(chunks), "the request body")


def parse_resource(raw: bytes, what: str) -> dict[str, Any]:
    """JSON bytes -> a FHIR resource dict; :class:`OperationError` 400 with a one-line reason."""
    try:
        data = parse_json(raw)
    except JsonSyntaxError as exc:
        raise OperationError(400, "structure", f"{what} {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise OperationError(
            400, "structure", f"{what} is JSON but not a FHIR resource (no resourceType)"
        )
    return data


def parse_date(value: Any, where: str, name: str) -> dt.date:
    """``value`` as a ``YYYY-MM-DD`` date; 400 naming parameter ``name`` at FHIRPath ``where``."""
    text = value if isinstance(value, str) else ""
    try:
        if not _DATE.match(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise OperationError(
            400, "value", f"{name} must be a date written YYYY-MM-DD, got {value!r}", where
        ) from None


def dated_settings(settings: Settings, as_of: dt.date | None, infusion: dt.date | None) -> Settings:
    """``settings`` with the screening and infusion dates a request gave (others kept)."""
    return settings.replace(
        as_of=as_of or settings.as_of, infusion_date=infusion or settings.infusion_date
    )
