"""The read-only FHIR R4 endpoint for the study's resources (mounted at ``/fhir`` by app.py).

    GET metadata                CapabilityStatement: exactly what is served (below)
    GET|HEAD <Type>/<id>        read (ETag from meta.versionId); ``_summary``/``_elements`` apply
    GET|HEAD <Type>?<params>    search: a searchset Bundle with ``total`` and paging links
    POST <Type>/_search         the same search, parameters in an
                                ``application/x-www-form-urlencoded`` body (and/or the URL)
    GET|POST ValueSet/$expand, ValueSet/<id>/$expand   see :mod:`.expand`
    POST PlanDefinition/$apply, ResearchStudy/<id>/$screen-population: see :mod:`.apply`,
                                :mod:`.population_operation` (routed by :mod:`.operations`)

Search parameters: ``_id``, ``identifier`` and (for canonical types) ``url`` (see
:mod:`.store`); result parameters ``_count`` (page size; ``0`` answers ``total`` only) with
``_offset`` in the ``first``/``previous``/``next``/``last`` links, ``_summary``
(true/text/data/count/false), ``_elements``, ``_sort`` (``_id``, ``url``, ``name``, ``title``,
``version``, ``date``, ``status``; ``-`` for descending), ``_total`` (accepted; the total is always
given). Subsets carry the SUBSETTED tag (see :mod:`.subsetting`).

Everything answers ``application/fhir+json``; HEAD answers the headers of the GET. Errors are
OperationOutcomes: unknown type or id 404, unsupported search parameter, modifier or bad value 400
(``Prefer: handling=lenient`` ignores unknown parameters instead, as FHIR allows), any write 405,
XML or another format (``_format`` or an ``Accept`` header without JSON) 406, a ``_search`` body
that is not a form 415.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError
from fhir_trial.fhir_api.expand import (
    EXPAND_DEFINITION,
    EXPAND_DOC,
    ExpansionIndex,
    expand_parameters,
)
from fhir_trial.fhir_api.operations import register_operations, resource_operations
from fhir_trial.fhir_api.requests_io import OperationError, fhir_response, operation_outcome
from fhir_trial.fhir_api.store import ResourceStore
from fhir_trial.fhir_api.subsetting import SUMMARY_VALUES, elements_subset, summary_subset

__all__ = ["create_fhir_blueprint"]

log = logging.getLogger(__name__)

FHIR_VERSION = "4.0.1"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
READS = frozenset({"GET", "HEAD"})
JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir", "text/json"}
)
FORM = "application/x-www-form-urlencoded"
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Parameters that change nothing about a search result and are always accepted.
_IGNORED = frozenset({"_format", "_total"})
RESULT_PARAMETERS = frozenset({"_count", "_offset", "_summary", "_elements", "_sort"})
SORTABLE = ("_id", "url", "name", "title", "version", "date", "status")
RESULT_DOCS = [
    ("_count", "number", "Page size; 0 answers the total only. Paging links use _offset."),
    ("_offset", "number", "Where the page starts (0-based), as in the paging links"),
    ("_summary", "token", "true | text | data | count | false; subsets are tagged SUBSETTED"),
    ("_elements", "string", "Top-level elements to return (mandatory ones always come)"),
    ("_sort", "string", "One of " + ", ".join(SORTABLE) + "; prefix - for descending"),
]
SEARCH_DOC = (
    "GET [base]/[Type]?params or POST [base]/[Type]/_search with an "
    "application/x-www-form-urlencoded body; HEAD answers the headers only"
)


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


def _expand_operation(store: ResourceStore, resource_type: str) -> list[dict[str, str]]:
    if resource_type != "ValueSet" or not store.search("ValueSet", []):
        return []
    return [{"name": "expand", "definition": EXPAND_DEFINITION, "documentation": EXPAND_DOC}]


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
        operations = _expand_operation(store, rtype) + resource_operations(store, rtype).get(
            "operation", []
        )
        resources.append(
            {
                "type": rtype,
                "interaction": [
                    {"code": "read", "documentation": "GET or HEAD [base]/[Type]/[id]"},
                    {"code": "search-type", "documentation": SEARCH_DOC},
                ],
                "searchParam": params,
                **({"operation": operations} if operations else {}),
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
                "the operations listed under their types. Writes answer 405; XML answers 406.",
                "resource": resources,
                "searchParam": [
                    {"name": name, "type": kind, "documentation": doc}
                    for name, kind, doc in RESULT_DOCS
                ],
            }
        ],
    }


@dataclass
class SearchRequest:
    """A search's criteria and result parameters, as parsed from the URL and/or a form body."""

    criteria: list[tuple[str, str]] = field(default_factory=list)
    count: int | None = None
    offset: int = 0
    summary: str | None = None
    elements: list[str] | None = None
    sort: str | None = None

    def query(self, **changes: Any) -> list[tuple[str, str]]:
        """The parameters as a query string would carry them (``changes``: _count, _offset)."""
        pairs = list(self.criteria)
        values: dict[str, Any] = {
            "_summary": self.summary,
            "_elements": ",".join(self.elements) if self.elements is not None else None,
            "_sort": self.sort,
            "_count": self.count,
            "_offset": self.offset or None,
        }
        values.update(changes)
        pairs += [(name, str(value)) for name, value in values.items() if value is not None]
        return pairs


def _bad(message: str, name: str | None = None) -> OperationError:
    return OperationError(400, "not-supported" if name is None else "value", message)


def _whole(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise _bad(f"{name} must be a whole number >= 0, got {value!r}", name)
    return int(value)


def parse_search(
    rtype: str, pairs: Sequence[tuple[str, str]], allowed: set[str], lenient: bool
) -> SearchRequest:
    """Criteria and result parameters; :class:`OperationError` 400 for what is not supported."""
    wanted = SearchRequest()
    seen: set[str] = set()
    for name, value in pairs:
        if name in _IGNORED:
            continue
        if name in RESULT_PARAMETERS:
            if name in seen:
                raise _bad(f"{name} is given more than once", name)
            seen.add(name)
            if name == "_count":
                wanted.count = _whole(name, value)
            elif name == "_offset":
                wanted.offset = _whole(name, value)
            elif name == "_summary":
                if value not in SUMMARY_VALUES:
                    raise _bad(f"_summary must be one of {', '.join(SUMMARY_VALUES)}", name)
                wanted.summary = value
            elif name == "_elements":
                wanted.elements = [e.strip() for e in value.split(",") if e.strip()]
            elif name == "_sort":
                if value.lstrip("-") not in SORTABLE or "," in value:
                    raise _bad(f"_sort supports one of {', '.join(SORTABLE)} (- to reverse)", name)
                wanted.sort = value
            continue
        if name not in allowed:
            if lenient:
                continue
            raise _bad(
                f"search parameter {name!r} is not supported for {rtype}; "
                f"supported: {', '.join(sorted(allowed | RESULT_PARAMETERS))}"
            )
        wanted.criteria.append((name, value))
    if wanted.elements is not None and wanted.summary not in (None, "false"):
        raise _bad("_summary and _elements cannot be combined; ask for one of them", "_elements")
    return wanted


def _sort_key(name: str) -> Callable[[Mapping[str, Any]], tuple[int, str]]:
    element = "id" if name == "_id" else name

    def key(resource: Mapping[str, Any]) -> tuple[int, str]:
        value = resource.get(element)
        return (0, str(value)) if value is not None else (1, "")

    return key


def _subset(resource: Mapping[str, Any], wanted: SearchRequest) -> Mapping[str, Any]:
    if wanted.summary:
        return summary_subset(resource, wanted.summary)
    if wanted.elements is not None:
        return elements_subset(resource, wanted.elements)
    return resource


def _page_links(url: str, wanted: SearchRequest, total: int) -> list[dict[str, str]]:
    def link(relation: str, **changes: Any) -> dict[str, str]:
        query = urlencode(wanted.query(**changes))
        return {"relation": relation, "url": url + (f"?{query}" if query else "")}

    links = [link("self")]
    count = wanted.count
    if not count or wanted.summary == "count":
        return links
    last = max(0, (total - 1) // count * count)
    links.append(link("first", _offset=None))
    if wanted.offset > 0:
        links.append(link("previous", _offset=max(0, wanted.offset - count) or None))
    if wanted.offset + count < total:
        links.append(link("next", _offset=wanted.offset + count))
    links.append(link("last", _offset=last or None))
    return links


def _accepts_json() -> bool:
    """Whether the Accept header (if any) lets us answer JSON."""
    accept = request.accept_mimetypes
    if not accept:
        return True
    for mimetype, quality in accept:
        kind = mimetype.split(";")[0].strip().lower()
        if quality > 0 and (
            kind in JSON_FORMATS or kind in ("*/*", "application/*") or kind.endswith("+json")
        ):
            return True
    return False


def create_fhir_blueprint(settings: Settings) -> Blueprint:
    """The ``/fhir`` blueprint; loads ``settings.resources_dir`` once, now.

    A missing resources folder serves nothing (and says so in the log); a corrupt one raises
    :class:`~fhir_trial.errors.ConfigurationError` so the service does not start half-broken.
    """
    store = _load_store(settings)
    expansions = ExpansionIndex(store)
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
        wanted = request.values.get("_format")
        if wanted is not None and wanted.split(";")[0].strip().lower() not in JSON_FORMATS:
            return operation_outcome(
                "error", "not-supported", "only JSON is served (_format=json)", status=406
            )
        if wanted is None and not _accepts_json():
            return operation_outcome(
                "error",
                "not-supported",
                "only JSON is served: ask for Accept: application/fhir+json "
                f"(asked: {request.headers.get('Accept', '')[:100]})",
                status=406,
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

    def refused(exc: OperationError) -> Response:
        return operation_outcome(
            "error", exc.code, exc.message, status=exc.status, expression=exc.expression
        )

    @bp.route("/metadata", methods=ALL_METHODS)
    def metadata() -> Response:
        if request.method not in READS:
            return read_only(request.method)
        return check_format() or fhir_response(
            capability_statement(store, base_url("/metadata"), loaded_on)
        )

    @bp.route("/<rtype>", methods=ALL_METHODS)
    def search(rtype: str) -> Response:
        if request.method not in READS:
            return read_only(request.method)
        return run_search(rtype, list(request.args.items(multi=True)), f"/{rtype}")

    @bp.route("/<rtype>/_search", methods=ALL_METHODS)
    def search_by_post(rtype: str) -> Response:
        if request.method != "POST":
            resp = read_only(request.method)
            resp.headers["Allow"] = "POST"
            return resp
        if request.mimetype.lower() != FORM:
            return operation_outcome(
                "error",
                "not-supported",
                f"POST _search takes an {FORM} body (got {request.mimetype or 'none'!r})",
                status=415,
            )
        # R4: the parameters may be in the URL, in the body, or both.
        pairs = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
        return run_search(rtype, pairs, f"/{rtype}/_search")

    def run_search(rtype: str, pairs: list[tuple[str, str]], suffix: str) -> Response:
        problem = check_format() or unknown_type(rtype)
        if problem:
            return problem
        lenient = "handling=lenient" in request.headers.get("Prefer", "").replace(" ", "")
        allowed = {"_id", "identifier"} | ({"url"} if store.has_url(rtype) else set())
        try:
            wanted = parse_search(rtype, pairs, allowed, lenient)
        except OperationError as exc:
            return refused(exc)
        found = store.search(rtype, wanted.criteria)
        if wanted.sort:
            found.sort(key=_sort_key(wanted.sort.lstrip("-")), reverse=wanted.sort[0] == "-")
        base = base_url(suffix)
        only_total = wanted.summary == "count" or wanted.count == 0
        end = None if wanted.count is None else wanted.offset + wanted.count
        page = [] if only_total else found[wanted.offset : end]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": _page_links(f"{base}/{rtype}", wanted, len(found)),
        }
        if page:
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{rtype}/{r['id']}",
                    "resource": _subset(r, wanted),
                    "search": {"mode": "match"},
                }
                for r in page
            ]
        return fhir_response(bundle)

    @bp.route("/<rtype>/<rid>", methods=ALL_METHODS)
    def read(rtype: str, rid: str) -> Response:
        if request.method not in READS:
            return read_only(request.method)
        problem = check_format() or unknown_type(rtype)
        if problem:
            return problem
        resource = store.read(rtype, rid) if _ID_RE.match(rid) else None
        if resource is None:
            return operation_outcome(
                "error", "not-found", f"{rtype}/{rid} is not known here", status=404
            )
        subset = [
            (k, v) for k, v in request.args.items(multi=True) if k in ("_summary", "_elements")
        ]
        try:
            wanted = parse_search(rtype, subset, set(), lenient=True)
        except OperationError as exc:
            return refused(exc)
        resp = fhir_response(_subset(resource, wanted))
        version_id = (resource.get("meta") or {}).get("versionId")
        if version_id:
            resp.headers["ETag"] = f'W/"{version_id}"'
        return resp

    def expand(rid: str | None) -> Response:
        if request.method not in ("GET", "POST"):
            resp = read_only(request.method)
            resp.headers["Allow"] = "GET, POST"
            return resp
        problem = check_format() or unknown_type("ValueSet")
        if problem:
            return problem
        try:
            return fhir_response(expansions.expand(rid, expand_parameters()))
        except OperationError as exc:
            return refused(exc)

    @bp.route("/ValueSet/$expand", methods=ALL_METHODS)
    def expand_type() -> Response:
        return expand(None)

    @bp.route("/ValueSet/<rid>/$expand", methods=ALL_METHODS)
    def expand_instance(rid: str) -> Response:
        return expand(rid)

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
