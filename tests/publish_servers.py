"""In-memory FHIR servers that behave like Medplum and HAPI FHIR where publishing is concerned.

A :class:`SimulatedServer` is a transport for :class:`fhir_trial.fhir_http.FhirHttp` (it has the
``request``/``close`` of a ``requests.Session``), so ``publish`` runs against it without a network.

    medplum_like()  assigns UUID ids and refuses client ids (``PUT Type/my-id``: 400), refuses any
                    string over 1 MiB, does NOT roll a transaction back: entries are processed in
                    order, ids for ``urn:uuid`` references are assigned before any is written (so a
                    resource whose target failed points at nothing), and the answer is a
                    transaction-response whose failed entries carry a 400 and an OperationOutcome
    hapi_like()     accepts client ids (CapabilityStatement ``updateCreate: true``; a conditional
                    update that matches nothing creates with the id in the body), assigns numeric
                    ids otherwise, rolls a failing transaction back and answers 400 with an
                    OperationOutcome, reports an update that changes nothing with HAPI's
                    ``SUCCESSFUL_UPDATE_NO_CHANGE`` outcome

Both answer ``batch`` Bundles of searches, and follow the FHIR R4 conditional update rules: 0 matches create, 1 updates (an id in the body
must be the matched one, else 400), more are refused with 412. Searches: ``url``, ``version``,
``identifier`` (``system|value``), ``_count``. ``server.refuse(type, diagnostics)`` makes every
write of a resource type fail; ``server.transaction_answer`` replaces the answer to transactions
(an HTML page, a Bundle of the wrong type); ``server.copies(key)`` lists what a search key matches.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.structures import CaseInsensitiveDict

JsonDict = dict[str, Any]
BASE = "http://simulated.test/fhir"
MIB = 1024 * 1024
HAPI_CODES = "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 412: "Precondition"}
TYPES = (
    "CodeSystem",
    "Group",
    "Library",
    "Location",
    "OperationDefinition",
    "Organization",
    "PlanDefinition",
    "ResearchStudy",
    "StructureDefinition",
    "ValueSet",
)


class EntryError(Exception):
    """One entry (or request) refused: HTTP status and diagnostics."""

    def __init__(self, status: int, diagnostics: str, expression: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.expression = expression

    def outcome(self) -> JsonDict:
        issue: JsonDict = {"severity": "error", "code": "invalid", "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = [self.expression]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


@dataclass
class SimulatedServer:
    """One FHIR server in memory (see the module docstring)."""

    uuid_ids: bool
    client_ids: bool
    atomic: bool
    max_string: int | None
    no_change_outcome: bool
    store: dict[str, dict[str, JsonDict]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    transaction_answer: JsonDict | str | None = None  # answer transactions with this instead
    batch: bool = True  # False: a batch is refused (400), as by servers without batch support
    _numbers: itertools.count = field(default_factory=lambda: itertools.count(1000))

    # --- test helpers ---------------------------------------------------------------------------
    def refuse(self, resource_type: str, diagnostics: str) -> None:
        """Every write of ``resource_type`` fails with a 400 and these diagnostics."""
        self.refused[resource_type] = diagnostics

    def resources(self, resource_type: str | None = None) -> list[JsonDict]:
        """Everything stored (of one type)."""
        return [
            r
            for rtype, by_id in self.store.items()
            if resource_type in (None, rtype)
            for r in by_id.values()
        ]

    def copies(self, key: str) -> list[JsonDict]:
        """What a ``Type?params`` search key matches."""
        rtype, _, query = key.partition("?")
        return self._search(rtype, {k: v[0] for k, v in parse_qs(query).items()})

    def resolve(self, reference: str) -> JsonDict | None:
        """The stored resource a ``Type/id`` reference points at."""
        rtype, _, rid = reference.partition("/")
        return self.store.get(rtype, {}).get(rid)

    # --- transport ------------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to close."""

    def request(
        self,
        method: str,
        url: str,
        params: Any = None,
        data: bytes | None = None,
        headers: Any = None,
        timeout: Any = None,
    ) -> requests.Response:
        """Answer one HTTP request."""
        parts = urlsplit(url)
        path = parts.path[len(urlsplit(BASE).path) :].strip("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query.update({str(k): str(v) for k, v in (params or {}).items()})
        body = json.loads(data) if data else None
        kind = f"({body.get('type')})" if isinstance(body, dict) and path == "" else ""
        self.requests.append((method, path + kind + (f"?{parts.query}" if parts.query else "")))
        try:
            if method == "GET" and path == "metadata":
                return _response(200, self._capabilities())
            if method == "GET" and "/" not in path:
                return _response(200, _searchset(self._search(path, query)))
            if method == "GET":
                found = self.resolve(path)
                if found is None:
                    raise EntryError(404, "Not found")
                return _response(200, found)
            if method == "POST" and path == "" and body and body.get("type") == "transaction":
                if self.transaction_answer is not None:
                    return _response(200, self.transaction_answer)
                return self._transaction(body)
            if (
                method == "POST"
                and path == ""
                and body
                and body.get("type") == "batch"
                and self.batch
            ):
                return _response(200, self._batch(body))
            raise EntryError(400, f"unsupported: {method} {path}")
        except EntryError as exc:
            return _response(exc.status, exc.outcome())

    # --- internals ------------------------------------------------------------------------------
    def _batch(self, bundle: JsonDict) -> JsonDict:
        """GET entries only (what publish sends): each answered as its own request."""
        entries = []
        recorded = len(self.requests)
        for entry in bundle.get("entry", []):
            request = entry["request"]
            answer = self.request(request["method"], f"{BASE}/{request['url']}")
            entries.append(
                {"resource": answer.json(), "response": {"status": str(answer.status_code)}}
            )
        del self.requests[recorded:]  # the batch is one request
        return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}

    def _capabilities(self) -> JsonDict:
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {"type": t, "updateCreate": self.client_ids, "conditionalUpdate": True}
                        for t in TYPES
                    ],
                    "interaction": [{"code": "transaction"}, {"code": "batch"}],
                }
            ],
        }

    def _search(self, rtype: str, query: dict[str, str]) -> list[JsonDict]:
        found = []
        for resource in self.store.get(rtype, {}).values():
            if "url" in query and resource.get("url") != query["url"]:
                continue
            if "version" in query and resource.get("version") != query["version"]:
                continue
            if "identifier" in query:
                system, _, value = query["identifier"].rpartition("|")
                if not any(
                    i.get("system") == system and i.get("value") == value
                    for i in resource.get("identifier", [])
                ):
                    continue
            found.append(resource)
        return found

    def _new_id(self) -> str:
        return str(uuid.uuid4()) if self.uuid_ids else str(next(self._numbers))

    def _target(self, entry: JsonDict) -> tuple[str, str, JsonDict | None]:
        """(type, id, the resource it replaces) for one PUT entry; raises EntryError."""
        url = entry["request"]["url"]
        body = entry["resource"]
        rtype, _, rest = url.partition("?")
        if "/" in rtype:
            rtype, _, rid = rtype.partition("/")
            if self.uuid_ids and not _UUID.match(rid):
                raise EntryError(400, f"Invalid id: {rid}")
            old = self.store.get(rtype, {}).get(rid)
            if old is None and not self.client_ids:
                raise EntryError(404, "Not found")
            return rtype, rid, old
        matches = self.copies(url)
        if len(matches) > 1:
            raise EntryError(412, f"Multiple resources match {rest}")
        if matches:
            if body.get("id") not in (None, matches[0]["id"]):
                raise EntryError(400, "Resource id does not match the matched resource")
            return rtype, matches[0]["id"], matches[0]
        if body.get("id"):
            if not self.client_ids or (self.uuid_ids and not _UUID.match(body["id"])):
                raise EntryError(400, f"Invalid id: {body['id']}")
            return rtype, body["id"], None
        return rtype, self._new_id(), None

    def _check(self, resource: JsonDict) -> None:
        if resource["resourceType"] in self.refused:
            raise EntryError(400, self.refused[resource["resourceType"]])
        if self.max_string is None:
            return
        for path, value in _strings(resource, resource["resourceType"]):
            if len(value) > self.max_string:
                raise EntryError(400, "String cannot be larger than 1 MB", path)

    def _transaction(self, bundle: JsonDict) -> requests.Response:
        entries = bundle.get("entry", [])
        saved = copy.deepcopy(self.store)
        targets: list[tuple[str, str, JsonDict | None] | EntryError] = []
        for entry in entries:  # ids first, so urn:uuid references resolve in any order
            try:
                targets.append(self._target(entry))
            except EntryError as exc:
                targets.append(exc)
        fullurls = {
            e["fullUrl"]: f"{t[0]}/{t[1]}"
            for e, t in zip(entries, targets, strict=True)
            if not isinstance(t, EntryError) and e.get("fullUrl")
        }
        answers = []
        for entry, target in zip(entries, targets, strict=True):
            try:
                if isinstance(target, EntryError):
                    raise target
                answers.append(self._write(entry, target, fullurls))
            except EntryError as exc:
                if self.atomic:
                    self.store = saved
                    raise EntryError(
                        exc.status, f"Transaction failed: {exc.diagnostics}", exc.expression
                    ) from exc
                answers.append({"response": {"status": str(exc.status), "outcome": exc.outcome()}})
        return _response(
            200, {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}
        )

    def _write(
        self, entry: JsonDict, target: tuple[str, str, JsonDict | None], fullurls: dict[str, str]
    ) -> JsonDict:
        rtype, rid, old = target
        resource = _rewrite(copy.deepcopy(entry["resource"]), fullurls)
        resource["id"] = rid
        self._check(resource)
        version = int(old["meta"]["versionId"]) if old else 0
        outcome = None
        if old is not None and _content(old) == _content(resource):
            if self.no_change_outcome:
                code = "SUCCESSFUL_UPDATE_WITH_CONDITIONAL_MATCH_NO_CHANGE"
                outcome = {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "information",
                            "code": "informational",
                            "details": {"coding": [{"system": HAPI_CODES, "code": code}]},
                        }
                    ],
                }
            resource = old
        else:
            version += 1
            meta = {k: v for k, v in resource.get("meta", {}).items()}
            resource["meta"] = {**meta, "versionId": str(version)}
            self.store.setdefault(rtype, {})[rid] = resource
        status = "201 Created" if old is None else "200 OK"
        if self.uuid_ids:
            status = status.split()[0]  # Medplum answers "201", not "201 Created"
        response: JsonDict = {
            "status": status,
            "location": f"{rtype}/{rid}/_history/{resource['meta']['versionId']}",
        }
        if outcome:
            response["outcome"] = outcome
        return {"response": response}


def medplum_like() -> SimulatedServer:
    """Server ids only (UUIDs), 1 MiB strings, no rollback."""
    return SimulatedServer(
        uuid_ids=True, client_ids=False, atomic=False, max_string=MIB, no_change_outcome=False
    )


def hapi_like() -> SimulatedServer:
    """Client ids accepted, atomic transactions, no-change outcomes."""
    return SimulatedServer(
        uuid_ids=False, client_ids=True, atomic=True, max_string=None, no_change_outcome=True
    )


def _content(resource: JsonDict) -> str:
    return json.dumps(
        {k: v for k, v in resource.items() if k not in ("meta", "id")}, sort_keys=True
    )


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{path}[{i}]")]
    return []


def _rewrite(value: Any, fullurls: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: fullurls.get(v, v)
            if k == "reference" and isinstance(v, str)
            else _rewrite(v, fullurls)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v, fullurls) for v in value]
    return value


def _searchset(found: list[JsonDict]) -> JsonDict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
    }


def _response(status: int, body: JsonDict | str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = _REASONS.get(status, "")
    text = body if isinstance(body, str) else json.dumps(body)
    response._content = text.encode("utf-8")
    ctype = "text/html" if isinstance(body, str) else "application/fhir+json"
    response.headers = CaseInsensitiveDict({"Content-Type": ctype})
    return response
