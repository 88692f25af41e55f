"""The read-only FHIR R4 endpoint for the study's resources (mounted at ``/fhir`` by app.py).

    GET metadata            CapabilityStatement: exactly the types served, read + search-type,
                            search parameters _id, identifier and (for canonical types) url
    GET <Type>/<id>         read (ETag from meta.versionId when present)
    GET <Type>?<params>     searchset Bundle with ``total`` and a self link of the parameters used
    POST PlanDefinition/$apply, ResearchStudy/<id>/$screen-population: see :mod:`.apply`,
                            :mod:`.population_operation` (routed by :mod:`.operations`)

Everything answers ``application/fhir+json``. Errors are OperationOutcomes: unknown type or id
404, unsupported search parameter or modifier 400 (``Prefer: handling=lenient`` ignores them
instead, as FHIR allows), any write 405, a non-JSON ``_format`` 406.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError
from fhir_trial.fhir_api.operations import register_operations, resource_operations
from fhir_trial.fhir_api.requests_io import fhir_response, operation_outcome
from fhir_trial.fhir_api.store import ResourceStore

__all__ = ["create_fhir_blueprint"]

log = logging.getLogger(__name__)

FHIR_VERSION = "4.0.1"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir", "text/json"}
)
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Parameters that change nothing about a search result and are always accepted.
_IGNORED = frozenset({"_format"})


def _software_version() -> str:
    try:
        return version("fhir-trial")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "0"


def _load_store(settings: Settings) -> ResourceStore:
    try:
        return ResourceStore.load(settings.resources_dir)
    except ConfigurationError as exc:
        if "does not exist" not in exc.message:
            raise
        log.warning("serving no study resources: %s", exc.message)
        return ResourceStore([])


def capability_statement(store: ResourceStore, base_url: str, date: str) -> dict[str, Any]:
    """What this endpoint does, and nothing more."""
    resources = []
    for rtype in store.types():
        params: list[dict[str, str]] = [
            {"name": "_id", "type": "token", "documentation": "The resource id"},
            {"name": "identifier", "type": "token", "documentation": "Any identifier"},
        ]
        if store.has_url(rtype):
            params.append(
                {"name": "url", "type": "uri", "documentation": "Canonical URL, `url|version` too"}
            )
        resources.append(
            {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": params,
                **resource_operations(store, rtype),
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhir-trial",
        "kind": "instance",
        "software": {"name": "fhir-trial", "version": _software_version()},
        "implementation": {
            "description": "NCT06010472 study resources (read-only)",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only access to the study's published resources, and "
                "the screening operations listed under PlanDefinition and ResearchStudy.",
                "resource": resources,
            }
        ],
    }


def create_fhir_blueprint(settings: Settings) -> Blueprint:
    """The ``/fhir`` blueprint; loads ``settings.resources_dir`` once, now.

    A missing resources folder serves nothing (and says so in the log); a corrupt one raises
    :class:`~fhir_trial.errors.ConfigurationError` so the service does not start half-broken.
    """
    store = _load_store(settings)
    loaded_on = dt.date.today().isoformat()
    bp = Blueprint("fhir", __name__)
    register_operations(bp, settings, store)

    def base_url(suffix: str) -> str:
        """The FHIR base URL as the client sees it (``suffix`` is the path after the base)."""
        path = request.path
        prefix = path[: len(path) - len(suffix)] if suffix and path.endswith(suffix) else path
        prefix = prefix.rstrip("/")
        root = settings.public_base_url or request.host_url.rstrip("/") + request.script_root
        return root.rstrip("/") + prefix

    def check_format() -> Response | None:
        wanted = request.args.get("_format")
        if wanted is not None and wanted.split(";")[0].strip().lower() not in JSON_FORMATS:
            return operation_outcome(
                "error", "not-supported", "only JSON is served (_format=json)", status=406
            )
        return None

    def read_only(method: str) -> Response:
        resp = operation_outcome(
            "error",
            "not-supported",
            f"{method} is not supported: this endpoint is read-only",
            status=405,
        )
        resp.headers["Allow"] = "GET, HEAD"
        return resp

    @bp.route("/metadata", methods=ALL_METHODS)
    def metadata() -> Response:
        if request.method != "GET":
            return read_only(request.method)
        return check_format() or fhir_response(
            capability_statement(store, base_url("/metadata"), loaded_on)
        )

    @bp.route("/<rtype>", methods=ALL_METHODS)
    def search(rtype: str) -> Response:
        if request.method != "GET":
            return read_only(request.method)
        problem = check_format() or unknown_type(rtype)
        if problem:
            return problem
        lenient = "handling=lenient" in request.headers.get("Prefer", "").replace(" ", "")
        allowed = {"_id", "identifier"} | ({"url"} if store.has_url(rtype) else set())
        criteria: list[tuple[str, str]] = []
        for name, value in request.args.items(multi=True):
            if name in _IGNORED:
                continue
            if name not in allowed:
                if lenient:
                    continue
                return operation_outcome(
                    "error",
                    "not-supported",
                    f"search parameter {name!r} is not supported for {rtype}; "
                    f"supported: {', '.join(sorted(allowed))}",
                    status=400,
                )
            criteria.append((name, value))
        found = store.search(rtype, criteria)
        base = base_url(f"/{rtype}")
        query = urlencode(criteria)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [
                {"relation": "self", "url": f"{base}/{rtype}" + (f"?{query}" if query else "")}
            ],
            "entry": [
                {
                    "fullUrl": f"{base}/{rtype}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in found
            ],
        }
        return fhir_response(bundle)

    @bp.route("/<rtype>/<rid>", methods=ALL_METHODS)
    def read(rtype: str, rid: str) -> Response:
        if request.method != "GET":
            return read_only(request.method)
        problem = check_format() or unknown_type(rtype)
        if problem:
            return problem
        resource = store.read(rtype, rid) if _ID_RE.match(rid) else None
        if resource is None:
            return operation_outcome(
                "error", "not-found", f"{rtype}/{rid} is not known here", status=404
            )
        resp = fhir_response(resource)
        version_id = (resource.get("meta") or {}).get("versionId")
        if version_id:
            resp.headers["ETag"] = f'W/"{version_id}"'
        return resp

    @bp.route("/", defaults={"rest": ""}, methods=ALL_METHODS)
    @bp.route("/<path:rest>", methods=ALL_METHODS)
    def anything_else(rest: str) -> Response:
        return operation_outcome(
            "error", "not-found", "not a supported FHIR interaction on this endpoint", status=404
        )

    def unknown_type(rtype: str) -> Response | None:
        if _TYPE_RE.match(rtype) and rtype in store.types():
            return None
        served = ", ".join(store.types()) or "none"
        return operation_outcome(
            "error",
            "not-supported",
            f"resource type {rtype!r} is not served here (served: {served})",
            status=404,
        )

    return bp
