"""The project's JSON Schemas for CDS Hooks 2.0 messages (``schemas/``), loaded once.

The schemas are written from the CDS Hooks 2.0 text: ``discovery`` (the discovery response),
``request`` (a hook call), ``response`` (cards) and ``feedback``. The tests validate every
response the service sends with them, and the service validates feedback with its schema.

Hook calls are checked on every chart open, so :func:`request_problem` does the same checks as
``request.schema.json`` by hand (a jsonschema run costs about half a millisecond per call);
keep the two in step when either changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

__all__ = ["SCHEMA_NAMES", "first_error", "request_problem", "schema", "validator"]

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_NAMES = ("discovery", "request", "response", "feedback")
_MAX_MESSAGE = 300


@cache
def schema(name: str) -> dict[str, Any]:
    """The parsed schema ``schemas/<name>.schema.json``."""
    if name not in SCHEMA_NAMES:
        raise KeyError(name)
    loaded: dict[str, Any] = json.loads(
        (SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8")
    )
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    """A (checked) validator for one schema."""
    raw = schema(name)
    Draft202012Validator.check_schema(raw)
    return Draft202012Validator(raw)


def first_error(name: str, instance: Any) -> str | None:
    """A one-line description of the most relevant validation error, or None when valid."""
    checker = validator(name)
    if checker.is_valid(instance):
        return None
    error = best_match(checker.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    message = f"{where}: {error.message}"
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


_FHIR_SERVER = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s]+$")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr]$")


def request_problem(body: Mapping[str, Any]) -> str | None:
    """What makes a hook call invalid against ``request.schema.json`` (one line), or None.

    Hand-written twin of the schema (see the module docstring): the same required members, types,
    lengths and patterns, the ``fhirAuthorization`` -> ``fhirServer`` dependency, the patient-view
    context, and prefetch values that are null or objects with a ``resourceType``.
    """
    for name in ("hook", "hookInstance", "context"):
        if name not in body:
            return f"(top level): {name!r} is a required property"
    hook = body["hook"]
    if not isinstance(hook, str) or not hook:
        return "hook: must be a non-empty string"
    instance = body["hookInstance"]
    if not isinstance(instance, str) or not 1 <= len(instance) <= 256:
        return "hookInstance: must be a string of 1 to 256 characters"
    context = body["context"]
    if not isinstance(context, dict):
        return "context: must be an object"
    if "fhirServer" in body:
        server = body["fhirServer"]
        if not isinstance(server, str) or not _FHIR_SERVER.search(server):
            return "fhirServer: must be an http(s) URL"
    if "fhirAuthorization" in body:
        problem = _authorization_problem(body["fhirAuthorization"])
        if problem:
            return f"fhirAuthorization: {problem}"
        if "fhirServer" not in body:
            return "(top level): 'fhirServer' is a dependency of 'fhirAuthorization'"
    if "prefetch" in body:
        prefetch = body["prefetch"]
        if not isinstance(prefetch, dict):
            return "prefetch: must be an object"
        for key, value in prefetch.items():
            if value is None:
                continue
            rtype = value.get("resourceType") if isinstance(value, dict) else None
            if not isinstance(rtype, str) or not rtype:
                return (
                    f"prefetch/{key}: must be null or a FHIR resource (an object with resourceType)"
                )
    if "extension" in body and not isinstance(body["extension"], dict):
        return "extension: must be an object"
    if hook == "patient-view":
        if "patientId" not in context:
            return "context: 'patientId' is a required property"
        patient_id = context["patientId"]
        if not isinstance(patient_id, str) or not 1 <= len(patient_id) <= 512:
            return "context/patientId: must be a string of 1 to 512 characters"
        for name in ("userId", "encounterId"):
            if name in context and not isinstance(context[name], str):
                return f"context/{name}: must be a string"
    return None


def _authorization_problem(auth: Any) -> str | None:
    if not isinstance(auth, dict):
        return "must be an object"
    for name in ("access_token", "token_type"):
        if name not in auth:
            return f"{name!r} is a required property"
    token = auth["access_token"]
    if not isinstance(token, str) or not token:
        return "access_token: must be a non-empty string"
    token_type = auth["token_type"]
    if not isinstance(token_type, str) or not _BEARER.search(token_type):
        return "token_type: must be Bearer"
    if "expires_in" in auth:
        expires = auth["expires_in"]
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires < 0:
            return "expires_in: must be a number >= 0"
    for name in ("scope", "subject", "patient"):
        if name in auth and not isinstance(auth[name], str):
            return f"{name}: must be a string"
    return None
