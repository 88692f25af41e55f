"""A small, real HTTP FHIR R4 server for tests (in memory, 127.0.0.1, ephemeral port).

Use it as a context manager; it stops by itself::

    from fake_fhir_server import FakeFhirServer

    with FakeFhirServer() as server:          # or FakeFhirServer(token="secret") to demand a token
        server.add({"resourceType": "Patient", "id": "p1"})
        requests.get(f"{server.base_url}/Patient/p1")   # base_url = http://127.0.0.1:<port>/fhir

A pytest fixture is one line: ``with FakeFhirServer() as s: yield s``.

What it serves (JSON only, ``application/fhir+json``), under ``/fhir``:
  GET  metadata                      a minimal CapabilityStatement
  GET  Type/id                       read (ETag W/"version"); 404 OperationOutcome if absent
  GET  Type?params, POST Type/_search search -> searchset Bundle with ``total`` and self/next links
  POST Type                          create (201, Location)
  PUT  Type/id                       update or create with that id (200 / 201)
  PUT  Type?params                   conditional update: 0 matches -> 201 created, 1 -> 200 updated
                                     (or unchanged), several -> 412
  DELETE Type/id                     204
  POST (base) Bundle transaction|batch
      entries PUT (plain or conditional), POST (``ifNoneExist`` honoured), GET (read or search),
      DELETE; references equal to another entry's ``fullUrl`` are rewritten to ``Type/id``;
      a transaction is atomic (any failing entry: error status + OperationOutcome, nothing kept);
      each response entry has ``status`` ("201 Created" / "200 OK"), ``location``
      (``Type/id/_history/N``), ``etag`` and ``lastModified``. An update that changes nothing keeps
      the version and, like HAPI FHIR, carries an ``outcome`` whose issue details code (system
      :data:`HAPI_STORAGE_CODES`) is ``SUCCESSFUL_UPDATE[_WITH_CONDITIONAL_MATCH]_NO_CHANGE``
      (``FakeFhirServer(no_change_outcome=False)`` leaves it out).

Search parameters: ``_id``; ``url`` (+ ``version``); ``identifier``, ``code``, ``category``,
and on Observations ``combo-code`` (code or a component's code), ``component-code``,
``value-concept`` and ``component-value-concept`` (tokens: ``system|value``, ``|value``,
``value``, ``system|``), ``code:text`` (like Medplum: any words, case-insensitive, anywhere in
``code.text`` or a coding's display); ``server.unsupported = {"combo-code"}`` makes a search naming one of
those parameters answer 400 (a strict server; the CapabilityStatement then leaves them out of
Observation's ``searchParam`` unless ``server.advertise_unsupported``); ``patient`` / ``subject``
(``Patient/1``, ``1`` or an absolute URL); ``individual`` (ResearchSubject; like Medplum, only the
type-qualified ``Patient/1`` matches, a bare id matches nothing); ``study``; ``status``; ``_count`` (page size, default 50) and
``_offset`` (used in next links). A comma means OR, a repeated parameter means AND. Other
parameters are ignored (a lenient server), and recorded in :attr:`FakeFhirServer.requests`.

Misbehaviour, switchable at any time (faults are used in order; ``times=None`` means forever;
``match`` limits a fault to requests whose path contains that text)::

    server.fail(401)                                  # 401 with an OperationOutcome, once
    server.fail(422, diagnostics="bad resource", times=None)
    server.fail(200, body="<html>login</html>", content_type="text/html")   # not FHIR
    server.fail(200, body={"resourceType": "Patient"})                       # not a Bundle
    server.throttle(retry_after="1")                  # 429 with Retry-After, once
    server.delay(2.0)                                 # answer normally, 2 s late, once
    server.next_link_base = "http://elsewhere.test/fhir"   # next links leave the origin
    server.fail(200, trickle=0.2, match="Condition")  # the body a byte every 0.2 s (never ends
                                                      # within a test: headers first, then drip)
    server.fail(200, truncate=True, match="Condition")  # Content-Length promises more than sent
    server.endless_next = True                        # every searchset has a next link
    server.endless_next = "Condition"                 # ... only searches of paths with this text
    server.fail(500, match="Observation", query="value-concept")  # only the NYHA searches
    server.latency = 0.1                              # every request answered 100 ms late
    server.batch = False                              # POST [base] batch: 405, not advertised

Inspection: ``server.requests`` (method, path, query, headers, body of every request),
``server.resources(Type)``, ``server.get(Type, id)``, ``server.reset()``.

``python tests/fake_fhir_server.py`` serves one until Ctrl-C (for trying ``fhir-trial publish``).
:func:`serve_wsgi` runs any WSGI app (e.g. ``create_app(settings)``) the same way and yields its
base URL.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from flask import Flask, Response, request
from werkzeug.serving import WSGIRequestHandler, make_server

HAPI_STORAGE_CODES = "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code"
FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_PAGE_SIZE = 50
_REASONS = {200: "OK", 201: "Created", 204: "No Content"}
_TOKEN_FIELDS = {
    "identifier": ("identifier",),
    "code": ("code", "medicationCodeableConcept", "vaccineCode"),
    "category": ("category",),
    "value-concept": ("valueCodeableConcept",),
}
# Token parameters that read inside Observation.component: the elements of the resource itself,
# then those of each component.
_COMPONENT_TOKEN_FIELDS = {
    "combo-code": (("code",), ("code",)),
    "component-code": ((), ("code",)),
    "component-value-concept": ((), ("valueCodeableConcept",)),
}
_PATIENT_FIELDS = ("subject", "patient")


class _QuietHandler(WSGIRequestHandler):
    """No request log on stderr."""

    def log(self, type: str, message: str, *args: Any) -> None:
        return None


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 (ephemeral port) in a thread; yields ``http://127.0.0.1:N``."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    """One switched-on misbehaviour (see the module docstring)."""

    status: int | None = None
    body: str | dict[str, Any] | None = None
    content_type: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    times: int | None = 1
    match: str | None = None
    diagnostics: str | None = None
    query: str | None = None  # also require this text in the query string (or batch entry's)
    trickle: float = 0.0  # seconds between body bytes
    truncate: bool = False  # send half the body under a Content-Length for all of it


class _WholeAnswer(Exception):
    """A fault on a batch entry that spoils the whole answer (a non-JSON body)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__("whole answer")
        self.fault = fault


class _Problem(Exception):
    """An error answer (status + OperationOutcome)."""

    def __init__(self, status: int, diagnostics: str, code: str = "processing") -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code


@dataclass
class _Outcome:
    status: int
    resource: dict[str, Any] | None = None
    location: str | None = None
    outcome: dict[str, Any] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def operation_outcome(diagnostics: str, code: str = "processing") -> dict[str, Any]:
    """An OperationOutcome with one error issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class FakeFhirServer:
    """An in-memory FHIR server in a background thread; see the module docstring."""

    def __init__(self, *, token: str | None = None, no_change_outcome: bool = True) -> None:
        self.token = token
        self.no_change_outcome = no_change_outcome
        self.next_link_base: str | None = None
        self.requests: list[RecordedRequest] = []
        self.unsupported: set[str] = set()  # search parameters answered with 400
        self.advertise_unsupported = False  # list them in the CapabilityStatement anyway
        self.batch = True  # accept batch Bundles (and say so in the CapabilityStatement)
        self.endless_next: bool | str = False  # searchsets get next links forever (a path text)
        self.latency = 0.0  # seconds added to every answer
        self._store: dict[str, dict[str, dict[str, Any]]] = {}
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._serving: Any = None
        self.base_url = ""
        self.app = self._make_app()

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FakeFhirServer:
        self._stopping.clear()
        self._serving = serve_wsgi(self.app)
        self.base_url = self._serving.__enter__() + "/fhir"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._serving is not None:
            self._serving.__exit__(None, None, None)
            self._serving = None

    # --- test controls --------------------------------------------------------------------------
    def fail(
        self,
        status: int | None = 500,
        *,
        body: str | dict[str, Any] | None = None,
        content_type: str | None = None,
        retry_after: str | None = None,
        delay: float = 0.0,
        times: int | None = 1,
        match: str | None = None,
        diagnostics: str | None = None,
        trickle: float = 0.0,
        truncate: bool = False,
        query: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with this status/body instead.

        With ``trickle`` or ``truncate`` and no ``body``, the normal answer is sent that way.
        """
        with self._lock:
            self._faults.append(
                Fault(
                    status,
                    body,
                    content_type,
                    retry_after,
                    delay,
                    times,
                    match,
                    diagnostics,
                    query,
                    trickle,
                    truncate,
                )
            )

    def throttle(self, retry_after: str = "1", *, times: int | None = 1) -> None:
        """Answer 429 Too Many Requests with a Retry-After header."""
        self.fail(429, retry_after=retry_after, times=times, diagnostics="too many requests")

    def delay(self, seconds: float, *, times: int | None = 1, match: str | None = None) -> None:
        """Answer normally, but only after ``seconds``."""
        self.fail(None, delay=seconds, times=times, match=match)

    def clear_faults(self) -> None:
        """Behave normally again."""
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget resources, faults and recorded requests."""
        with self._lock:
            self._store.clear()
            self._faults.clear()
            self.requests.clear()
            self.unsupported.clear()
            self.batch = True
            self.endless_next = False
            self.latency = 0.0

    def add(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """Store a resource directly (keeps its id, else assigns one); returns the stored copy."""
        with self._lock:
            rtype = str(resource["resourceType"])
            rid = str(resource.get("id") or uuid.uuid4())
            return self._write(self._store, rtype, rid, dict(resource))[0]

    def searched(self) -> list[RecordedRequest]:
        """Every read and search asked for: GET requests, and the GET entries of batch Bundles
        (as requests of their own, with the batch's headers)."""
        with self._lock:
            out: list[RecordedRequest] = []
            for r in self.requests:
                if r.method == "GET":
                    out.append(r)
                    continue
                body = r.body if isinstance(r.body, dict) else {}
                if r.method != "POST" or r.path != "" or body.get("type") != "batch":
                    continue
                for entry in body.get("entry") or []:
                    req = entry.get("request") or {}
                    if req.get("method") != "GET":
                        continue
                    parts = urlsplit(str(req.get("url", "")))
                    query = parse_qs(parts.query, keep_blank_values=True)
                    out.append(
                        RecordedRequest("GET", parts.path.strip("/"), query, r.headers, None)
                    )
            return out

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The stored resource, or None."""
        with self._lock:
            found = self._store.get(resource_type, {}).get(resource_id)
            return copy.deepcopy(found) if found else None

    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        """Stored resources, of one type or all."""
        with self._lock:
            types = [resource_type] if resource_type else sorted(self._store)
            return [copy.deepcopy(r) for t in types for r in self._store.get(t, {}).values()]

    # --- HTTP -----------------------------------------------------------------------------------
    def _make_app(self) -> Flask:
        app = Flask("fake_fhir_server")
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]

        @app.route("/fhir", methods=methods, defaults={"path": ""})
        @app.route("/fhir/", methods=methods, defaults={"path": ""})
        @app.route("/fhir/<path:path>", methods=methods)
        def handle(path: str) -> Response:
            return self._handle(path)

        return app

    def _handle(self, path: str) -> Response:
        raw = request.get_data()
        body: Any = None
        body_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_error = True
        query = {k: request.args.getlist(k) for k in request.args}
        with self._lock:
            self.requests.append(
                RecordedRequest(request.method, path, query, dict(request.headers), body)
            )
            fault = self._take_fault(path, request.query_string.decode("latin-1"))
            if fault is None and request.method == "POST" and path == "":
                fault = self._shaping_fault_in_batch(body)
            batching = request.method == "POST" and path == "" and self.batch
            batch_delay = self._batch_delay(body) if batching else 0
        if batch_delay:  # an entry answered late makes the whole batch late (outside the lock)
            self._stopping.wait(batch_delay)
        if self.latency:
            self._stopping.wait(self.latency)
        shaped: Fault | None = None
        if fault is not None:
            if fault.delay:
                self._stopping.wait(fault.delay)
            if (fault.trickle or fault.truncate) and fault.body is None:
                shaped = fault  # the normal answer, sent badly
            elif fault.status is not None:
                return self._fault_response(fault)
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            resp = self._json(401, operation_outcome("missing or wrong token", "login"))
            resp.headers["WWW-Authenticate"] = 'Bearer realm="fake"'
            return resp
        if body_error:
            return self._json(400, operation_outcome("request body is not JSON", "structure"))
        if request.method == "POST" and path.endswith("/_search"):
            query = {k: request.form.getlist(k) for k in request.form}
            query.update({k: request.args.getlist(k) for k in request.args})
            path = path[: -len("/_search")]
            method = "GET"
        else:
            method = request.method
        try:
            with self._lock:
                if method == "POST" and path == "" and not self.batch:
                    raise _Problem(405, "batch is not supported", "not-supported")
                if method == "POST" and path == "":
                    result = self._bundle(body)
                else:
                    store = self._store
                    result = self._interaction(store, method, path, query, body, None)
        except _Problem as problem:
            return self._json(problem.status, operation_outcome(problem.diagnostics, problem.code))
        except _WholeAnswer as whole:
            return self._fault_response(whole.fault)
        payload = result.resource if result.resource is not None else result.outcome
        if shaped is not None:
            return self._shaped(shaped, result.status, payload)
        resp = self._json(result.status, payload)
        if result.location:
            resp.headers["Location"] = f"{self.base_url}/{result.location}"
        resp.headers.update(result.extra_headers)
        return resp

    def _shaping_fault_in_batch(self, body: Any) -> Fault | None:
        """A trickle/truncate fault matching one of a batch's entries shapes the whole answer."""
        if not isinstance(body, dict) or body.get("type") != "batch":
            return None
        for entry in body.get("entry") or []:
            req = entry.get("request") if isinstance(entry, dict) else None
            parts = urlsplit(str(req.get("url", "")) if isinstance(req, dict) else "")
            for fault in self._faults:
                if (fault.trickle or fault.truncate) and self._fault_matches(
                    fault, parts.path.strip("/"), parts.query
                ):
                    return self._take_fault(parts.path.strip("/"), parts.query, shaping=True)
        return None

    def _batch_delay(self, body: Any) -> float:
        """The longest delay of delay-only faults matching a batch's entries (taken)."""
        if not isinstance(body, dict) or body.get("type") != "batch":
            return 0.0
        longest = 0.0
        for entry in body.get("entry") or []:
            req = entry.get("request") if isinstance(entry, dict) else None
            parts = urlsplit(str(req.get("url", "")) if isinstance(req, dict) else "")
            for fault in list(self._faults):
                if (
                    fault.status is None
                    and fault.delay
                    and not (fault.trickle or fault.truncate)
                    and self._fault_matches(fault, parts.path.strip("/"), parts.query)
                ):
                    taken = self._take_fault(parts.path.strip("/"), parts.query, shaping=False)
                    longest = max(longest, taken.delay if taken else 0.0)
                    break
        return longest

    @staticmethod
    def _fault_matches(fault: Fault, path: str, query: str) -> bool:
        if fault.match is not None and fault.match not in path:
            return False
        return fault.query is None or fault.query in unquote(query)

    def _take_fault(
        self, path: str, query: str = "", *, shaping: bool | None = None
    ) -> Fault | None:
        for fault in self._faults:
            if not self._fault_matches(fault, path, query):
                continue
            if shaping is not None and bool(fault.trickle or fault.truncate) != shaping:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    def _fault_response(self, fault: Fault) -> Response:
        status = fault.status or 500
        if fault.body is None:
            payload: str = json.dumps(
                operation_outcome(fault.diagnostics or f"simulated failure {status}")
            )
            ctype = fault.content_type or FHIR_JSON
        elif isinstance(fault.body, dict):
            payload, ctype = json.dumps(fault.body), fault.content_type or FHIR_JSON
        else:
            payload, ctype = fault.body, fault.content_type or "text/html; charset=utf-8"
        resp = Response(payload, status=status, content_type=ctype)
        if fault.retry_after is not None:
            resp.headers["Retry-After"] = fault.retry_after
        return resp

    def _shaped(self, fault: Fault, status: int, payload: Any) -> Response:
        """The answer, trickled a byte at a time or cut short under its Content-Length."""
        data = json.dumps(payload).encode()
        if fault.truncate:
            cut = data[: len(data) // 2]
            resp = Response(cut, status=status, content_type=FHIR_JSON)
            resp.headers["Content-Length"] = str(len(data))
            resp.direct_passthrough = True  # keep the lying Content-Length
            return resp
        stopping = self._stopping

        def drip() -> Iterator[bytes]:
            for index in range(len(data)):
                if stopping.wait(fault.trickle):
                    return
                yield data[index : index + 1]

        resp = Response(drip(), status=status, content_type=FHIR_JSON)
        resp.headers["Content-Length"] = str(len(data))
        return resp

    @staticmethod
    def _json(status: int, payload: Any) -> Response:
        if payload is None:
            return Response(b"", status=status)
        return Response(json.dumps(payload), status=status, content_type=FHIR_JSON)

    # --- interactions (store is the live store or a transaction's working copy) ----------------
    def _interaction(
        self,
        store: dict[str, dict[str, dict[str, Any]]],
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        fixed_id: str | None,
    ) -> _Outcome:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["metadata"]:
            return _Outcome(200, self._capability())
        if not parts or not parts[0][:1].isupper():
            raise _Problem(404, f"unknown path /{path}", "not-found")
        rtype = parts[0]
        if method == "GET" and len(parts) == 1:
            return _Outcome(200, self._search(store, rtype, query))
        if method == "GET" and len(parts) == 2:
            found = store.get(rtype, {}).get(parts[1])
            if found is None:
                raise _Problem(404, f"{rtype}/{parts[1]} is not known", "not-found")
            return _Outcome(200, copy.deepcopy(found), extra_headers=_version_headers(found))
        if method == "DELETE" and len(parts) == 2:
            store.get(rtype, {}).pop(parts[1], None)
            return _Outcome(204)
        if method in ("POST", "PUT"):
            if not isinstance(body, dict) or body.get("resourceType") != rtype:
                raise _Problem(400, f"body is not a {rtype} resource", "invalid")
            if method == "POST" and len(parts) == 1:
                rid = fixed_id or str(uuid.uuid4())
                stored, status, _ = self._write(store, rtype, rid, body)
                return self._write_outcome(stored, status, None)
            if method == "PUT" and len(parts) == 2:
                if body.get("id") not in (None, parts[1]):
                    raise _Problem(400, "resource id does not match the URL", "invalid")
                stored, status, changed = self._write(store, rtype, parts[1], body)
                return self._write_outcome(
                    stored, status, None if changed else "SUCCESSFUL_UPDATE_NO_CHANGE"
                )
            if method == "PUT" and len(parts) == 1:
                rid, conditional = self._conditional_target(store, rtype, query, body, fixed_id)
                stored, status, changed = self._write(store, rtype, rid, body)
                code = "SUCCESSFUL_UPDATE_WITH_CONDITIONAL_MATCH_NO_CHANGE"
                return self._write_outcome(
                    stored, status, None if changed or not conditional else code
                )
        raise _Problem(405, f"{method} /{path} is not supported", "not-supported")

    def _conditional_target(
        self,
        store: dict[str, dict[str, dict[str, Any]]],
        rtype: str,
        query: dict[str, list[str]],
        body: dict[str, Any],
        fixed_id: str | None,
    ) -> tuple[str, bool]:
        """The id a conditional update writes to, and whether it matched an existing resource."""
        if not query:
            raise _Problem(400, "conditional update without search parameters", "invalid")
        matches = self._matches(store, rtype, query)
        if len(matches) > 1:
            raise _Problem(
                412, f"conditional update matched {len(matches)} {rtype}", "multiple-matches"
            )
        if matches:
            matched_id = str(matches[0]["id"])
            if body.get("id") not in (None, matched_id):
                raise _Problem(400, "resource id does not match the conditional match", "invalid")
            return matched_id, True
        return fixed_id or str(body.get("id") or uuid.uuid4()), False

    def _write(
        self,
        store: dict[str, dict[str, dict[str, Any]]],
        rtype: str,
        rid: str,
        body: dict[str, Any],
    ) -> tuple[dict[str, Any], int, bool]:
        """Store ``body`` as rtype/rid; returns (stored, 200|201, changed)."""
        existing = store.get(rtype, {}).get(rid)
        new = copy.deepcopy(body)
        new["resourceType"] = rtype
        new["id"] = rid
        if existing is not None and _content(existing) == _content(new):
            return copy.deepcopy(existing), 200, False
        version = int(existing["meta"]["versionId"]) + 1 if existing else 1
        meta = dict(new.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        new["meta"] = meta
        store.setdefault(rtype, {})[rid] = new
        return copy.deepcopy(new), 200 if existing else 201, True

    def _write_outcome(
        self, stored: dict[str, Any], status: int, no_change: str | None
    ) -> _Outcome:
        """The answer to a write; ``no_change`` is the HAPI code to report when nothing changed."""
        location = f"{stored['resourceType']}/{stored['id']}/_history/{stored['meta']['versionId']}"
        outcome = None
        if status == 200 and no_change and self.no_change_outcome:
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "information",
                        "code": "informational",
                        "details": {"coding": [{"system": HAPI_STORAGE_CODES, "code": no_change}]},
                        "diagnostics": "No changes detected, so the update was not performed",
                    }
                ],
            }
        return _Outcome(status, stored, location, outcome, _version_headers(stored))

    # --- Bundles --------------------------------------------------------------------------------
    def _bundle(self, bundle: Any) -> _Outcome:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise _Problem(400, "POST to the base needs a Bundle", "invalid")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise _Problem(400, "Bundle.type must be transaction or batch", "invalid")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise _Problem(400, "Bundle.entry must be a list", "structure")
        if kind == "batch":
            answers = [self._batch_entry(e) for e in entries]
        else:
            work = copy.deepcopy(self._store)
            answers = self._transaction(work, entries)
            self._store.clear()
            self._store.update(work)
        return _Outcome(
            200,
            {
                "resourceType": "Bundle",
                "id": str(uuid.uuid4()),
                "type": f"{kind}-response",
                "entry": answers,
            },
        )

    def _batch_entry(self, entry: Any) -> dict[str, Any]:
        """One batch entry; faults matching the entry's path apply to it as to a GET (a text
        body spoils the whole answer, as a proxy's login page would)."""
        req = entry.get("request") if isinstance(entry, dict) else None
        url = str(req.get("url", "")) if isinstance(req, dict) else ""
        parts = urlsplit(url)
        fault = self._take_fault(parts.path.strip("/"), parts.query, shaping=False)
        if fault is not None:
            if isinstance(fault.body, str):
                raise _WholeAnswer(fault)
            if fault.status is not None:
                status = str(fault.status)
                if isinstance(fault.body, dict):
                    return {"resource": fault.body, "response": {"status": f"{status} OK"}}
                diagnostics = fault.diagnostics or f"simulated failure {status}"
                return {"response": {"status": status, "outcome": operation_outcome(diagnostics)}}
        try:
            return self._transaction(self._store, [entry])[0]
        except _Problem as problem:
            return {
                "response": {
                    "status": str(problem.status),
                    "outcome": operation_outcome(problem.diagnostics, problem.code),
                }
            }

    def _transaction(
        self, store: dict[str, dict[str, dict[str, Any]]], entries: list[Any]
    ) -> list[dict[str, Any]]:
        parsed: list[tuple[str, str, dict[str, list[str]], Any]] = []
        for index, entry in enumerate(entries):
            req = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
                raise _Problem(400, f"entry {index} has no request method and url", "invalid")
            split = urlsplit(str(req["url"]))
            query = {k: v for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            parsed.append((str(req["method"]).upper(), split.path, query, entry.get("resource")))
        # Decide every written resource's id first, so references between entries can be fixed.
        ids: list[str | None] = []
        for (method, path, query, body), entry in zip(parsed, entries, strict=True):
            rid: str | None = None
            parts = [p for p in path.split("/") if p]
            if method == "POST" and len(parts) == 1:
                exist = entry["request"].get("ifNoneExist")
                if exist:
                    found = self._matches(store, parts[0], parse_qs(exist))
                    if found:
                        ids.append("exists:" + str(found[0]["id"]))
                        continue
                rid = str(uuid.uuid4())
            elif method == "PUT" and len(parts) == 1 and isinstance(body, dict):
                rid = self._conditional_target(store, parts[0], query, body, None)[0]
            elif method == "PUT" and len(parts) == 2:
                rid = parts[1]
            ids.append(rid)
        references: dict[str, str] = {}
        for (method, path, _, _), entry, rid in zip(parsed, entries, ids, strict=True):
            full_url = entry.get("fullUrl")
            if full_url and rid and method in ("POST", "PUT"):
                rtype = path.strip("/").split("/")[0]
                references[str(full_url)] = f"{rtype}/{rid.removeprefix('exists:')}"
        answers: list[dict[str, Any]] = []
        for (method, path, query, body), rid in zip(parsed, ids, strict=True):
            if rid and rid.startswith("exists:"):
                rtype = path.strip("/").split("/")[0]
                existing = store[rtype][rid.removeprefix("exists:")]
                answers.append({"response": {"status": "200 OK", **_entry_meta(existing)}})
                continue
            if isinstance(body, dict):
                body = _rewrite_references(body, references)
            result = self._interaction(store, method, path.strip("/"), query, body, rid)
            response: dict[str, Any] = {
                "status": f"{result.status} {_REASONS.get(result.status, '')}".strip()
            }
            if result.location:
                response["location"] = result.location
            if result.resource is not None and method in ("POST", "PUT"):
                response.update(_entry_meta(result.resource))
            if result.outcome is not None:
                response["outcome"] = result.outcome
            answer: dict[str, Any] = {"response": response}
            if result.resource is not None:
                answer = {
                    "fullUrl": f"{self.base_url}/{result.resource['resourceType']}/"
                    f"{result.resource.get('id', '')}".rstrip("/"),
                    "resource": result.resource,
                    **answer,
                }
            answers.append(answer)
        return answers

    # --- search ---------------------------------------------------------------------------------
    def _search(
        self, store: dict[str, dict[str, dict[str, Any]]], rtype: str, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        refused = sorted(set(query) & self.unsupported)
        if refused:
            raise _Problem(400, f"unknown search parameter {refused[0]}", "not-supported")
        matches = self._matches(store, rtype, query)
        try:
            count = int((query.get("_count") or [str(DEFAULT_PAGE_SIZE)])[0])
            offset = int((query.get("_offset") or ["0"])[0])
        except ValueError as exc:
            raise _Problem(400, "_count and _offset must be integers", "invalid") from exc
        count = max(1, min(count, 1000))
        page = matches[offset : offset + count]
        base = self.base_url
        keep = [(k, v) for k, vs in query.items() if k not in ("_offset",) for v in vs]
        links = [
            {
                "relation": "self",
                "url": f"{base}/{rtype}?{urlencode([*keep, ('_offset', str(offset))])}",
            }
        ]
        endless = self.endless_next is True or (
            isinstance(self.endless_next, str) and self.endless_next in rtype
        )
        if offset + count < len(matches) or endless:
            next_base = self.next_link_base or base
            params = [(k, v) for k, v in keep if k != "_count"]
            params += [("_count", str(count)), ("_offset", str(offset + count))]
            links.append({"relation": "next", "url": f"{next_base}/{rtype}?{urlencode(params)}"})
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/{rtype}/{r['id']}",
                    "resource": copy.deepcopy(r),
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }

    @staticmethod
    def _matches(
        store: dict[str, dict[str, dict[str, Any]]], rtype: str, query: Mapping[str, list[str]]
    ) -> list[dict[str, Any]]:
        found = []
        for resource in store.get(rtype, {}).values():
            if all(
                any(_matches_value(resource, name, alt) for alt in value.split(","))
                for name, values in query.items()
                for value in values
            ):
                found.append(resource)
        return sorted(found, key=lambda r: str(r["id"]))

    def _capability(self) -> dict[str, Any]:
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": dt.date.today().isoformat(),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "software": {"name": "fake FHIR server for tests"},
            "rest": [
                {
                    "mode": "server",
                    "interaction": [{"code": "history-system"}]
                    + ([{"code": "transaction"}, {"code": "batch"}] if self.batch else []),
                    "resource": [
                        {
                            "type": "Observation",
                            "searchParam": [
                                {"name": name, "type": "token"}
                                for name in (
                                    "code",
                                    "combo-code",
                                    "component-code",
                                    "value-concept",
                                    "component-value-concept",
                                )
                                if name not in self.unsupported or self.advertise_unsupported
                            ]
                            + [{"name": "patient", "type": "reference"}],
                        }
                    ],
                }
            ],
        }


# --- helpers --------------------------------------------------------------------------------------
def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "text")}


def _version_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {}
    if meta.get("versionId"):
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    return headers


def _entry_meta(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    out = {
        "location": f"{resource['resourceType']}/{resource['id']}/_history/{meta.get('versionId')}"
    }
    if meta.get("versionId"):
        out["etag"] = f'W/"{meta["versionId"]}"'
    if meta.get("lastUpdated"):
        out["lastModified"] = meta["lastUpdated"]
    return out


def _rewrite_references(value: Any, references: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                references.get(v, v)
                if k == "reference" and isinstance(v, str)
                else _rewrite_references(v, references)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_references(v, references) for v in value]
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _token_candidates(resource: Mapping[str, Any], name: str) -> list[tuple[str, str]]:
    """(system, code) pairs of the elements a token parameter searches."""
    pairs: list[tuple[str, str]] = []
    if name in _COMPONENT_TOKEN_FIELDS:
        own, parts = _COMPONENT_TOKEN_FIELDS[name]
        holders = [(resource, own)] + [
            (part, parts) for part in _as_list(resource.get("component")) if isinstance(part, dict)
        ]
    else:
        holders = [(resource, _TOKEN_FIELDS[name])]
    for holder, elements in holders:
        pairs.extend(_pairs(holder, elements))
    return pairs


def _pairs(holder: Mapping[str, Any], elements: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for element in elements:
        for item in _as_list(holder.get(element)):
            if not isinstance(item, dict):
                continue
            if "value" in item:  # Identifier
                pairs.append((str(item.get("system", "")), str(item.get("value", ""))))
            for coding in _as_list(item.get("coding")):
                if isinstance(coding, dict):
                    pairs.append((str(coding.get("system", "")), str(coding.get("code", ""))))
    return pairs


def _matches_value(resource: Mapping[str, Any], name: str, value: str) -> bool:
    """Does ``resource`` satisfy ``name=value``? Unknown parameters match everything."""
    if name == "_id":
        return str(resource.get("id")) == value
    if name == "url":
        return resource.get("url") == value
    if name == "version":
        return resource.get("version") == value
    if name == "status":
        return resource.get("status") == value
    if name in _TOKEN_FIELDS or name in _COMPONENT_TOKEN_FIELDS:
        system, bar, code = value.rpartition("|")
        for cand_system, cand_code in _token_candidates(resource, name):
            if not bar and cand_code == code:
                return True
            if bar and cand_system == system and (code == "" or cand_code == code):
                return True
        return False
    if name == "code:text":  # like Medplum: case-insensitive, anywhere in code.text or a display
        code = resource.get("code")
        labels = (
            [code.get("text")]
            + [c.get("display") for c in _as_list(code.get("coding")) if isinstance(c, dict)]
            if isinstance(code, dict)
            else []
        )
        wanted = value.lower()
        return any(isinstance(label, str) and wanted in label.lower() for label in labels)
    if name == "individual":  # like Medplum: a bare id matches nothing
        ref = resource.get("individual")
        return (
            "/" in value
            and isinstance(ref, dict)
            and _last_two(str(ref.get("reference", ""))) == _last_two(value)
        )
    if name == "study":
        ref = resource.get("study")
        wanted = value if "/" in value else f"ResearchStudy/{value}"
        return isinstance(ref, dict) and _last_two(str(ref.get("reference", ""))) == _last_two(
            wanted
        )
    if name in ("patient", "subject"):
        wanted = _last_two(value if "/" in value else f"Patient/{value}")
        for element in _PATIENT_FIELDS:
            ref = resource.get(element)
            if isinstance(ref, dict) and _last_two(str(ref.get("reference", ""))) == wanted:
                return True
        return False
    return True


def _last_two(reference: str) -> str:
    """``Type/id`` of a relative or absolute reference."""
    return "/".join(reference.rstrip("/").split("/")[-2:])


if __name__ == "__main__":  # python tests/fake_fhir_server.py: serve until Ctrl-C
    with FakeFhirServer() as running:
        print(f"fake FHIR server at {running.base_url} (Ctrl-C stops it)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
