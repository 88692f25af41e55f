"""``ValueSet/$expand`` over the shipped expansions (R4 ``OperationDefinition/ValueSet-expand``).

``GET|POST [base]/ValueSet/[id]/$expand`` and ``GET|POST [base]/ValueSet/$expand?url=...``
(``url|version`` or ``valueSetVersion`` select a version). Parameters, in the query string (GET) or
a Parameters body (POST, ``application/fhir+json``):

- ``url`` (uri): the ValueSet's canonical; required at type level, checked at instance level;
- ``filter`` (string): keeps the codes whose code or display contains it, ignoring case;
- ``offset``, ``count`` (integer >= 0): paging; ``count=0`` answers the ``total`` only;
- ``displayLanguage``, ``includeDesignations``, ``includeDefinition``, ``activeOnly``,
  ``excludeNested``, ``excludeNotForUI``, ``excludePostCoordinated``, ``limitedExpansion`` are
  accepted and change nothing (the expansions are flat, display in English, all codes active);
- ``valueSet``, ``context`` and any other name are 400.

The answer is the ValueSet with its expansion replaced: ``total`` (after the filter), ``offset``,
the ``parameter`` used, and the page of ``contains``. Errors: 400 bad or missing parameters,
404 an unknown ValueSet, 422 a ValueSet without a shipped expansion.

Speed: each ValueSet's codes are indexed once (a lower-cased ``code display`` key per code), so a
filter is one pass of substring tests and a page is a slice, also over thousands of codes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import request

from fhir_trial.fhir_api.requests_io import OperationError, parameter_path, read_json_body
from fhir_trial.fhir_api.store import ResourceStore, matches_url

__all__ = ["EXPAND_DEFINITION", "EXPAND_DOC", "ExpansionIndex", "expand_parameters"]

EXPAND_DEFINITION = "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
EXPAND_DOC = (
    "The shipped expansion of a ValueSet: `url` (or the instance), `filter` (substring of code or "
    "display, any case), `offset` and `count` paging; GET or POST (Parameters)."
)
IGNORED = frozenset(
    {
        "displayLanguage",
        "includeDesignations",
        "includeDefinition",
        "activeOnly",
        "excludeNested",
        "excludeNotForUI",
        "excludePostCoordinated",
        "limitedExpansion",
        "_format",
    }
)
KNOWN = frozenset({"url", "valueSetVersion", "filter", "offset", "count"})
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class ExpandRequest:
    """The parameters of one ``$expand`` call."""

    url: str | None = None
    version: str | None = None
    filter: str | None = None
    offset: int = 0
    count: int | None = None


def _flatten(contains: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """Codes of an expansion in order, nested ``contains`` lifted (their parents kept if codes)."""
    for item in contains:
        if not isinstance(item, dict):
            continue
        children = item.get("contains")
        if item.get("code"):
            yield {key: value for key, value in item.items() if key != "contains"}
        if isinstance(children, list):
            yield from _flatten(children)


@dataclass(frozen=True)
class _Expansion:
    codes: tuple[dict[str, Any], ...]
    keys: tuple[str, ...]  # "code display" lower-cased, one per code


class ExpansionIndex:
    """The shipped expansions of a store's ValueSets, indexed for filtering and paging."""

    def __init__(self, store: ResourceStore) -> None:
        self._store = store
        self._by_id: dict[str, _Expansion] = {}
        for resource in store.search("ValueSet", []):
            expansion = resource.get("expansion")
            if not isinstance(expansion, dict):
                continue
            codes = tuple(_flatten(expansion.get("contains") or []))
            keys = tuple(f"{c.get('code', '')}\x00{c.get('display', '')}".casefold() for c in codes)
            self._by_id[str(resource["id"])] = _Expansion(codes, keys)

    def resolve(self, rid: str | None, wanted: ExpandRequest) -> Mapping[str, Any]:
        """The ValueSet asked for (by id and/or url|version); 400/404 when there is none."""
        if rid is not None:
            resource = self._store.read("ValueSet", rid)
            if resource is None:
                raise OperationError(404, "not-found", f"ValueSet/{rid} is not known here")
            if wanted.url and not matches_url(resource, self._canonical(wanted)):
                raise OperationError(
                    400,
                    "invalid",
                    f"url {wanted.url} is not the canonical of ValueSet/{rid}",
                    parameter_path("url"),
                )
            return resource
        if not wanted.url:
            raise OperationError(
                400,
                "required",
                "ValueSet/$expand needs a url (or call ValueSet/[id]/$expand)",
                parameter_path("url"),
            )
        found = self._store.search("ValueSet", [("url", self._canonical(wanted))])
        if not found:
            raise OperationError(
                404,
                "not-found",
                f"no ValueSet with url {self._canonical(wanted)} is served here",
                parameter_path("url"),
            )
        return found[-1]

    @staticmethod
    def _canonical(wanted: ExpandRequest) -> str:
        url = wanted.url or ""
        if wanted.version and "|" not in url:
            return f"{url}|{wanted.version}"
        return url

    def expand(self, rid: str | None, wanted: ExpandRequest) -> dict[str, Any]:
        """The ValueSet with the requested page of its (filtered) expansion."""
        resource = self.resolve(rid, wanted)
        index = self._by_id.get(str(resource["id"]))
        if index is None:
            raise OperationError(
                422,
                "not-supported",
                f"ValueSet/{resource['id']} has no shipped expansion to serve",
            )
        codes: Sequence[dict[str, Any]] = index.codes
        if wanted.filter:
            needle = wanted.filter.casefold()
            codes = [c for c, key in zip(index.codes, index.keys, strict=True) if needle in key]
        end = None if wanted.count is None else wanted.offset + wanted.count
        page = codes[wanted.offset : end]
        shipped = resource.get("expansion") or {}
        whole = not wanted.filter and not wanted.offset and wanted.count is None
        # The shipped identifier names the whole expansion, not a filtered page of it.
        expansion: dict[str, Any] = (
            {"identifier": shipped["identifier"]} if whole and "identifier" in shipped else {}
        )
        expansion["timestamp"] = (
            shipped.get("timestamp") or dt.datetime.now(dt.timezone.utc).isoformat()
        )
        expansion["total"] = len(codes)
        if wanted.offset or wanted.count is not None:
            expansion["offset"] = wanted.offset
        parameters: list[dict[str, Any]] = []
        if wanted.filter:
            parameters.append({"name": "filter", "valueString": wanted.filter})
        if wanted.offset:
            parameters.append({"name": "offset", "valueInteger": wanted.offset})
        if wanted.count is not None:
            parameters.append({"name": "count", "valueInteger": wanted.count})
        if parameters:
            expansion["parameter"] = parameters
        if page:
            expansion["contains"] = [dict(code) for code in page]
        answer = {key: value for key, value in resource.items() if key not in ("expansion", "text")}
        answer["expansion"] = expansion
        return answer


def _integer(name: str, raw: Any) -> int:
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.isdigit():
        raise OperationError(
            400,
            "value",
            f"{name} must be a whole number >= 0, got {raw!r}",
            parameter_path(name),
        )
    return int(text)


def _from_pairs(pairs: Sequence[tuple[str, Any]]) -> ExpandRequest:
    values: dict[str, Any] = {}
    for name, value in pairs:
        if name in IGNORED:
            continue
        if name not in KNOWN:
            hint = " (only the shipped ValueSets are expanded)" if name == "valueSet" else ""
            raise OperationError(
                400,
                "not-supported",
                f"$expand parameter {name!r} is not supported{hint}; supported: "
                f"{', '.join(sorted(KNOWN))}",
                parameter_path(name),
            )
        if name in values:
            raise OperationError(
                400, "invalid", f"$expand parameter {name} is repeated", parameter_path(name)
            )
        values[name] = value
    return ExpandRequest(
        url=str(values["url"]) if "url" in values else None,
        version=str(values["valueSetVersion"]) if "valueSetVersion" in values else None,
        filter=str(values["filter"]) if values.get("filter") else None,
        offset=_integer("offset", values["offset"]) if "offset" in values else 0,
        count=_integer("count", values["count"]) if "count" in values else None,
    )


_VALUE_KEYS = ("valueUri", "valueCanonical", "valueUrl", "valueString", "valueCode", "valueInteger")


def expand_parameters() -> ExpandRequest:
    """The ``$expand`` parameters of the current request (query string, or a Parameters body)."""
    pairs: list[tuple[str, Any]] = list(request.args.items(multi=True))
    if request.method == "POST":
        body = read_json_body(MAX_BODY)
        if body.get("resourceType") != "Parameters":
            raise OperationError(
                400, "structure", "the body of POST $expand must be a Parameters resource"
            )
        for index, parameter in enumerate(body.get("parameter") or []):
            name = parameter.get("name") if isinstance(parameter, dict) else None
            if not isinstance(name, str):
                raise OperationError(
                    400, "structure", "a parameter has no name", f"Parameters.parameter[{index}]"
                )
            value = next((parameter[k] for k in _VALUE_KEYS if k in parameter), None)
            if value is None and name not in IGNORED:
                raise OperationError(
                    400,
                    "not-supported" if "resource" in parameter else "required",
                    f"parameter {name} has no supported value[x]",
                    parameter_path(name),
                )
            pairs.append((name, value))
    return _from_pairs(pairs)
