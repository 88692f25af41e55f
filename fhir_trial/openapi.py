"""The service's OpenAPI 3.1 description, served at ``GET /openapi.json``.

Every route the app registers is described (``tests/test_openapi.py`` compares this document with
``app.url_map``): CDS Hooks discovery, the hook, feedback and the worksheet page; the SMART
worksheet app (launch, callback, worksheet, decisions: HTML pages and redirects); the /fhir reads,
searches (GET and ``POST _search``), ``$expand`` and the two registry operations; ``/healthz`` and
this document. Request and response bodies have schemas: the CDS Hooks ones are the JSON Schemas
in ``cds_hooks/schemas/`` (draft 2020-12, the dialect of OpenAPI 3.1), the FHIR ones name the
resource type and the elements clients rely on (the full FHIR structure is checked by the FHIR JSON
Schema elsewhere). Errors have one shape per family: an ``OperationOutcome`` under /fhir, ``{"error",
"message"}`` under /cds-services, a bare 401 with ``WWW-Authenticate`` for a CDS client that failed
authentication, an HTML page for worksheet links.

Security schemes: ``cdsClientJwt`` (the CDS Hooks client JWT, ``aud`` = the URL called) and
``accessToken`` (a SMART Backend Services access token on the registry operations, ``aud`` = the
service or its FHIR base, with the scopes listed on each operation).

The catch-all ``/fhir/<path:rest>`` (404 for anything else under /fhir) is not a path of its own:
OpenAPI path templates cannot span slashes and it would collide with ``/fhir/{type}``.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.cds_hooks.discovery import PREFETCH_KEYS
from fhir_trial.fhir_api.access import required_scope

__all__ = ["UNDOCUMENTED_ENDPOINTS", "openapi_document"]

# Routes deliberately left out of the document (see the module docstring).
UNDOCUMENTED_ENDPOINTS = frozenset({"fhir.anything_else", "static"})

FHIR_JSON = "application/fhir+json"
_REF = "#/components/schemas/"
_CDS_SCHEMAS = {
    "request": "CdsHookRequest",
    "response": "CdsHookResponse",
    "discovery": "CdsDiscovery",
    "feedback": "CdsFeedback",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{_REF}{name}"}


def _json(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


# ------------------------------------------------------------------------------------ schemas
def _cds_schemas() -> dict[str, Any]:
    """The CDS Hooks JSON Schemas, their ``$defs`` hoisted into components (refs rewritten)."""
    out: dict[str, Any] = {}
    folder = resources.files("fhir_trial.cds_hooks") / "schemas"
    for file_name, name in _CDS_SCHEMAS.items():
        schema = json.loads((folder / f"{file_name}.schema.json").read_text(encoding="utf-8"))
        defs = schema.pop("$defs", {})
        for key in ("$schema", "$id"):  # an $id would change how refs resolve
            schema.pop(key, None)
        prefix = f"{name}_"
        renamed = {f"#/$defs/{d}": f"{_REF}{prefix}{d}" for d in defs}
        if name == "CdsFeedback":
            _feedback_without_if_then(schema)
        out[name] = _rewrite_refs(schema, renamed)
        for def_name, definition in defs.items():
            out[f"{prefix}{def_name}"] = _rewrite_refs(definition, renamed)
    return out


def _feedback_without_if_then(schema: dict[str, Any]) -> None:
    """The feedback item's ``if accepted then acceptedSuggestions`` as an equivalent ``anyOf``.

    Same instances, but generators (schemathesis, via hypothesis-jsonschema) draw from each
    branch instead of filtering: generating 5 feedback bodies took 65 s with ``if``/``then``.
    """
    item = schema["properties"]["feedback"]["items"]
    if item.pop("allOf", None) is None:
        return
    item["anyOf"] = [
        {"properties": {"outcome": {"const": "overridden"}}},
        {
            "required": ["acceptedSuggestions"],
            "properties": {
                "outcome": {"const": "accepted"},
                "acceptedSuggestions": {"minItems": 1},
            },
        },
    ]


def _rewrite_refs(value: Any, renamed: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (renamed.get(v, v) if k == "$ref" else _rewrite_refs(v, renamed))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_refs(v, renamed) for v in value]
    return value


def _resource(resource_type: str | None, description: str, **properties: Any) -> dict[str, Any]:
    rt: dict[str, Any] = (
        {"const": resource_type} if resource_type else {"type": "string", "pattern": "^[A-Z]"}
    )
    return {
        "type": "object",
        "description": description,
        "required": ["resourceType"],
        "properties": {"resourceType": rt, "id": {"type": "string"}, **properties},
    }


def _schemas() -> dict[str, Any]:
    issue = {
        "type": "object",
        "required": ["severity", "code"],
        "properties": {
            "severity": {"enum": ["fatal", "error", "warning", "information"]},
            "code": {"type": "string"},
            "diagnostics": {"type": "string"},
            "expression": {"type": "array", "items": {"type": "string"}},
        },
    }
    schemas: dict[str, Any] = {
        "OperationOutcome": _resource(
            "OperationOutcome",
            "Every error under /fhir (FHIR R4 OperationOutcome).",
            issue={"type": "array", "minItems": 1, "items": issue},
        ),
        "Resource": _resource(None, "A FHIR R4 resource of a type this endpoint serves."),
        "Bundle": _resource(
            "Bundle",
            "A searchset Bundle (paging links carry _offset).",
            type={"const": "searchset"},
            total={"type": "integer", "minimum": 0},
            link={"type": "array", "items": {"type": "object"}},
            entry={"type": "array", "items": {"type": "object"}},
        ),
        "CapabilityStatement": _resource(
            "CapabilityStatement", "What /fhir serves: types, interactions, search parameters."
        ),
        "Parameters": _resource(
            "Parameters",
            "FHIR Parameters (operation input or output).",
            parameter={
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
        ),
        "ValueSet": _resource(
            "ValueSet", "A ValueSet with its expansion.", expansion={"type": "object"}
        ),
        "CarePlan": _resource(
            "CarePlan",
            "The $apply result: a CarePlan with a contained RequestGroup and GuidanceResponse.",
        ),
        "ScreenPopulationResult": {
            "oneOf": [_ref("Parameters"), _ref("Bundle"), _ref("Resource")],
            "description": "Per-patient verdicts and the feasibility counts (Parameters).",
        },
        "CdsError": {
            "type": "object",
            "description": "Every error of the CDS Hooks routes except 401.",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "FeedbackResult": {
            "type": "object",
            "required": ["stored", "duplicates", "unissued"],
            "properties": {
                "stored": {"type": "integer", "minimum": 0},
                "duplicates": {"type": "integer", "minimum": 0},
                "unissued": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "items naming a card never issued to this client "
                    "(stored, marked card_issued = 0)",
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "SearchForm": {
            "type": "object",
            "description": "Search parameters as a form (combined with those in the URL).",
            "additionalProperties": {"type": "string"},
        },
    }
    schemas.update(_cds_schemas())
    return schemas


# ------------------------------------------------------------------------------------ responses
def _outcome(description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        **_json(_ref("OperationOutcome"), FHIR_JSON),
    }
    if headers:
        response["headers"] = headers
    return response


def _fhir_errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "a bad parameter or body",
        401: "no valid access token",
        403: "the access token lacks the scope",
        404: "unknown type, id or ValueSet",
        405: "a method this route does not take",
        406: "only JSON is served",
        412: "a precondition failed",
        413: "the body is over the size limit",
        415: "an unsupported content type or encoding",
        422: "the data cannot be processed",
        503: "the service could not process the request; try again",
    }
    out: dict[str, Any] = {}
    for status in statuses:
        if status in (401, 403):
            out[str(status)] = _outcome(
                texts[status],
                **{
                    "WWW-Authenticate": {
                        "schema": {"type": "string", "pattern": "^Bearer "},
                        "required": True,
                    }
                },
            )
        else:
            out[str(status)] = _outcome(texts[status])
    return out


def _cds_errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        if status == 401:
            out["401"] = {
                "description": "authentication failed (the reason is logged, not returned)",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
            }
        else:
            out[str(status)] = {"description": "refused", **_json(_ref("CdsError"))}
    return out


# ------------------------------------------------------------------------------------ parameters
def _likely(*values: str) -> dict[str, Any]:
    """A string, most usefully one of ``values``: generators then hit both real and unknown ones."""
    return {"anyOf": [{"enum": list(values)}, {"type": "string", "minLength": 1}]}


# What the shipped resources/ holds (other values answer 404, as documented).
SERVED_TYPES = (
    "CodeSystem",
    "Group",
    "Library",
    "OperationDefinition",
    "PlanDefinition",
    "ResearchStudy",
    "StructureDefinition",
    "ValueSet",
)


def _path(
    name: str, description: str, example: str | None = None, likely: tuple[str, ...] = ()
) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _likely(*likely) if likely else {"type": "string", "minLength": 1},
    }
    if example:
        param["example"] = example
    return param


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_FORMAT = _query(
    "_format", "json only; anything else is 406", _likely("json", "application/fhir+json")
)
_SEARCH_PARAMS = [
    _query("_id", "resource id (comma: OR)"),
    _query("identifier", "system|value, |value, value or system|"),
    _query("url", "canonical URL (url|version)"),
    _query("_count", "page size (0: total only)", {"type": "string", "pattern": "^[0-9]{1,6}$"}),
    _query("_offset", "first result of the page", {"type": "string", "pattern": "^[0-9]{1,9}$"}),
    _query("_summary", "true, text, data, count, false"),
    _query("_elements", "comma-separated element names"),
    _query("_sort", "_id, url, name, title, version, date, status (- for descending)"),
    _query("_total", "accepted and ignored (the total is always given)"),
    _FORMAT,
]
_EXPAND_PARAMS = [
    _query("url", "the ValueSet canonical (url|version)"),
    _query("valueSetVersion", "the ValueSet version"),
    _query("filter", "case-insensitive substring of code or display"),
    _query("offset", "first code of the page", {"type": "string", "pattern": "^[0-9]{1,9}$"}),
    _query(
        "count", "codes per page (0: total only)", {"type": "string", "pattern": "^[0-9]{1,6}$"}
    ),
    _FORMAT,
]
_DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_POPULATION_PARAMS = [
    _query("asOf", "screening date (YYYY-MM-DD)", _DATE),
    _query("infusionDate", "planned infusion date (YYYY-MM-DD)", _DATE),
    _query("missing", "comma-separated data categories known not to be in the upload"),
    _query("guidance", "true: a GuidanceResponse per patient", {"enum": ["true", "false"]}),
    _FORMAT,
]


# ------------------------------------------------------------------------------------ operations
_EXAMPLE_PATIENT = {
    "resourceType": "Patient",
    "id": "example",
    "gender": "female",
    "birthDate": "1990-06-15",
}
HOOK_EXAMPLE = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/example", "patientId": "example"},
    # Every prefetch key filled: the patient, and empty searchsets for the rest.
    "prefetch": {
        key: _EXAMPLE_PATIENT
        if key == "patient"
        else {"resourceType": "Bundle", "type": "searchset", "entry": []}
        for key in PREFETCH_KEYS
    },
}
APPLY_EXAMPLE = {
    "resourceType": "Parameters",
    "parameter": [
        {
            "name": "data",
            "resource": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": _EXAMPLE_PATIENT}],
            },
        }
    ],
}


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _registry_security(resource_type: str) -> list[dict[str, list[str]]]:
    # OpenAPI 3.1 lets a non-OAuth scheme list the roles (here: scopes) it needs.
    return [{"accessToken": [required_scope(resource_type)]}, {"accessToken": ["system/*.read"]}]


def _paths() -> dict[str, Any]:
    plan_id = f"{STUDY_RESOURCE_ID}-eligibility"
    service = _path("service_id", "the CDS service id", plan_id, likely=(plan_id,))
    rtype = _path(
        "type", "a FHIR resource type served here (see /fhir/metadata)", likely=SERVED_TYPES
    )
    rid = _path("id", "a resource id", likely=(STUDY_RESOURCE_ID, plan_id, "active-infections"))
    read_errors = _fhir_errors(400, 404, 406)
    apply_body = {
        "required": True,
        "content": {
            FHIR_JSON: {"schema": _ref("Parameters"), "example": APPLY_EXAMPLE},
            "application/json": {"schema": _ref("Parameters")},
        },
    }
    apply_responses = {
        "200": {"description": "the screening as a CarePlan", **_json(_ref("CarePlan"), FHIR_JSON)},
        **_fhir_errors(400, 401, 403, 404, 405, 413, 415, 422, 503),
    }
    population_body = {
        "required": True,
        "content": {
            FHIR_JSON: {"schema": _ref("Bundle")},
            "application/json": {"schema": _ref("Resource")},
            "application/fhir+ndjson": {
                "schema": {"type": "string", "description": "one resource per line"}
            },
        },
    }
    expand_get = _operation(
        "The shipped expansion of a ValueSet",
        {"200": {"description": "the expansion", **_json(_ref("ValueSet"), FHIR_JSON)}}
        | _fhir_errors(400, 404, 406),
    )
    expand_post = {
        **expand_get,
        "requestBody": {
            "required": False,
            "content": {FHIR_JSON: {"schema": _ref("Parameters")}},
        },
    }
    expand_post = _with(expand_post, responses=expand_get["responses"] | _fhir_errors(413, 415))

    return {
        "/healthz": {
            "get": _operation(
                "Health check", {"200": {"description": "up", **_json(_ref("Health"))}}
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                {"200": {"description": "OpenAPI 3.1", **_json({"type": "object"})}},
            )
        },
        "/cds-services": {
            "get": _operation(
                "CDS Hooks discovery (a presented JWT is verified)",
                {"200": {"description": "the services", **_json(_ref("CdsDiscovery"))}}
                | _cds_errors(401),
                security=[{}, {"cdsClientJwt": []}],
            )
        },
        "/cds-services/{service_id}": {
            "parameters": [service],
            "post": _operation(
                "The patient-view hook: cards for a potentially eligible patient",
                {"200": {"description": "cards", **_json(_ref("CdsHookResponse"))}}
                | _cds_errors(400, 401, 404, 412, 413),
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("CdsHookRequest"),
                            "example": HOOK_EXAMPLE,
                        }
                    },
                },
                security=[{"cdsClientJwt": []}],
            ),
        },
        "/cds-services/{service_id}/feedback": {
            "parameters": [service],
            "post": _operation(
                "Card outcomes, stored before the answer (aud = this feedback URL)",
                {"200": {"description": "stored", **_json(_ref("FeedbackResult"))}}
                | _cds_errors(400, 401, 404, 413, 503),
                requestBody={"required": True, **_json(_ref("CdsFeedback"))},
                security=[{"cdsClientJwt": []}],
            ),
        },
        "/cds-services/{service_id}/worksheet/{token}": {
            "parameters": [service, _path("token", "the signed, short-lived link token")],
            "get": _operation(
                "The read-only screening worksheet behind a card's link",
                {
                    str(status): {
                        "description": text,
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                    for status, text in (
                        (200, "the worksheet"),
                        (400, "a malformed link"),
                        (403, "a link that was tampered with"),
                        (410, "an expired link"),
                        (503, "the report could not be read"),
                    )
                }
                | {
                    "404": {
                        "description": "an unknown report (a page) or an unknown service (JSON)",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "application/json": {"schema": _ref("CdsError")},
                        },
                    }
                },
            ),
        },
        "/fhir/metadata": {
            "get": _operation(
                "The CapabilityStatement",
                {
                    "200": {
                        "description": "what is served",
                        **_json(_ref("CapabilityStatement"), FHIR_JSON),
                    }
                }
                | _fhir_errors(406),
                parameters=[_FORMAT],
            )
        },
        "/fhir/{type}": {
            "parameters": [rtype],
            "get": _operation(
                "Search the study resources of a type",
                {"200": {"description": "a searchset", **_json(_ref("Bundle"), FHIR_JSON)}}
                | read_errors,
                parameters=_SEARCH_PARAMS,
            ),
        },
        "/fhir/{type}/_search": {
            "parameters": [rtype],
            "post": _operation(
                "Search with the parameters in a form body (same answer as the GET)",
                {"200": {"description": "a searchset", **_json(_ref("Bundle"), FHIR_JSON)}}
                | _fhir_errors(400, 404, 406, 413, 415),
                parameters=_SEARCH_PARAMS,
                requestBody={
                    "required": False,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": _ref("SearchForm")}
                    },
                },
            ),
        },
        "/fhir/{type}/{id}": {
            "parameters": [rtype, rid],
            "get": _operation(
                "Read a study resource",
                {
                    "200": {
                        "description": "the resource (ETag from meta.versionId)",
                        **_json(_ref("Resource"), FHIR_JSON),
                    }
                }
                | read_errors,
                parameters=[
                    _query("_summary", "true, text, data, false"),
                    _query("_elements", "comma-separated element names"),
                    _FORMAT,
                ],
            ),
        },
        "/fhir/ValueSet/$expand": {
            "get": _with(expand_get, parameters=_EXPAND_PARAMS),
            "post": _with(expand_post, parameters=_EXPAND_PARAMS),
        },
        "/fhir/ValueSet/{id}/$expand": {
            "parameters": [_path("id", "a ValueSet id", likely=("active-infections", "sle"))],
            "get": _with(expand_get, parameters=_EXPAND_PARAMS),
            "post": _with(expand_post, parameters=_EXPAND_PARAMS),
        },
        "/fhir/PlanDefinition/$apply": {
            "post": _operation(
                "Screen one patient (type level: the url parameter names the PlanDefinition)",
                apply_responses,
                requestBody=apply_body,
                security=_registry_security("PlanDefinition"),
            ),
        },
        "/fhir/PlanDefinition/{id}/$apply": {
            "parameters": [_path("id", "the PlanDefinition id", likely=(plan_id,))],
            "post": _operation(
                "Screen one patient (Parameters with a data Bundle)",
                apply_responses,
                requestBody=apply_body,
                security=_registry_security("PlanDefinition"),
            ),
        },
        "/fhir/ResearchStudy/{id}/$screen-population": {
            "parameters": [_path("id", "the ResearchStudy id", likely=(STUDY_RESOURCE_ID,))],
            "post": _operation(
                "Screen a population (a Bundle or an NDJSON stream)",
                {
                    "200": {
                        "description": "verdicts and feasibility",
                        **_json(_ref("ScreenPopulationResult"), FHIR_JSON),
                    }
                }
                | _fhir_errors(400, 401, 403, 404, 405, 413, 415, 422, 503),
                parameters=_POPULATION_PARAMS,
                requestBody=population_body,
                security=_registry_security("ResearchStudy"),
            ),
        },
    }


def _page(status: str, text: str) -> dict[str, Any]:
    return {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}


def _redirect(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
    }


def _smart_pages(*extra: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The SMART app's answers: HTML pages (a problem page for every refusal) and redirects."""
    out = {
        "200": _page("200", "the page"),
        **{
            status: _page(status, text)
            for status, text in (
                ("400", "a launch, callback or form the app cannot use (a problem page)"),
                ("401", "no session: open the worksheet from the EHR again"),
                ("403", "a CSRF token or session that does not match"),
                ("404", "an unknown decision"),
                ("409", "an answer or write that conflicts with what is recorded"),
                ("413", "the form is over the size limit"),
                ("502", "the EHR's authorization server or FHIR endpoint failed"),
                ("503", "the app's store could not be read or written"),
            )
        },
    }
    out.update(dict(extra))
    return out


def _smart_paths() -> dict[str, Any]:
    form = {
        "required": False,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
    }
    session: list[dict[str, list[str]]] = [{"smartSession": []}]
    return {
        "/smart/launch": {
            "get": _operation(
                "SMART App Launch: EHR launch (iss + launch) or standalone (iss)",
                _smart_pages(("302", _redirect("to the EHR's authorization endpoint"))),
                parameters=[
                    _query("iss", "the EHR's FHIR base (must be registered)"),
                    _query("launch", "the EHR's launch id"),
                ],
            )
        },
        "/smart/callback": {
            "get": _operation(
                "The authorization server's redirect back to the app",
                _smart_pages(("303", _redirect("to the worksheet"))),
                parameters=[
                    _query("code", "the authorization code"),
                    _query("state", "the launch's single-use state"),
                    _query("error", "an OAuth error code"),
                    _query("error_description", "its text"),
                ],
            )
        },
        "/smart/worksheet": {
            "get": _operation(
                "The worksheet of the launch's patient, with the answer form",
                _smart_pages(),
                security=session,
            ),
            "post": _operation(
                "Record the coordinator's answers and decision",
                _smart_pages(("303", _redirect("to the recorded decision"))),
                requestBody=form,
                security=session,
            ),
        },
        "/smart/decisions/{decision_id}": {
            "parameters": [_path("decision_id", "a recorded decision")],
            "get": _operation(
                "A recorded decision and its write state", _smart_pages(), security=session
            ),
        },
        "/smart/decisions/{decision_id}/write": {
            "parameters": [_path("decision_id", "a recorded decision")],
            "post": _operation(
                "Write a recorded decision to the EHR (once)",
                _smart_pages(("303", _redirect("back to the decision"))),
                requestBody=form,
                security=session,
            ),
        },
    }


def _with(operation: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(operation)
    out.update(changes)
    return out


@cache
def _document() -> str:
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "fhir-trial: NCT06010472 eligibility service",
            "version": "1",
            "description": (
                "CDS Hooks service, the study's read-only FHIR R4 endpoint with $expand, "
                "and the registry operations $apply and $screen-population."
            ),
        },
        "paths": _paths() | _smart_paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "cdsClientJwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "CDS Hooks 2.0 client JWT: ES384 or RS384, a trusted iss, "
                    "aud = the URL called, exp, iat, a jti used once.",
                },
                "smartSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "fhir_trial_smart",
                    "description": "The SMART worksheet app's session (set by /smart/callback); "
                    "every form also carries the session's CSRF token.",
                },
                "accessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "SMART Backend Services access token (JWT) from a trusted "
                    "issuer: aud = the service or its /fhir base, exp/iat current, and a scope "
                    "granting system-level read on the operation's resource type "
                    "(system/PlanDefinition.read for $apply, system/ResearchStudy.read for "
                    "$screen-population; system/*.read and SMART v2 .rs forms too).",
                },
            },
        },
    }
    return json.dumps(document, separators=(",", ":"))


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document (a fresh copy), with ``servers`` set to ``server_url`` if given."""
    document: dict[str, Any] = json.loads(_document())
    if server_url:
        document["servers"] = [{"url": server_url.rstrip("/")}]
    return document
