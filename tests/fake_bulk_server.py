"""A small, real Bulk Data (v2) export server for tests, with SMART Backend Services.

It serves NDJSON lines given per resource type (or read from an export folder) on 127.0.0.1 at an
ephemeral port, in a daemon thread; use it as a context manager, it stops by itself::

    with FakeBulkServer.from_folder(SHARED / "fixtures/synthea/bulk-ndjson-10-patients") as server:
        server.base_url            # http://127.0.0.1:<port>/fhir

Routes (``/fhir`` is the FHIR base):
  GET    fhir/Group/<id>/$export, fhir/Patient/$export, fhir/$export   kick-off: needs
         ``Prefer: respond-async`` and an Accept of JSON (else 400); honours ``_type``; 202 with
         ``Content-Location: fhir/$export-poll/<job>``
  GET    fhir/$export-poll/<job>      202 + ``X-Progress`` + ``Retry-After`` while "running"; 200
         with the manifest (``transactionTime``, ``request``, ``requiresAccessToken``, ``output``,
         ``error``); 404 once deleted
  DELETE fhir/$export-poll/<job>      202; the job and its files are gone afterwards
  GET    files/<job>/<n>.ndjson       an output or error file, streamed in small chunks
  GET    fhir/.well-known/smart-configuration, POST auth/token   (``smart_clients`` set)

Switches (attributes, set before or during a test):
  ``polls`` (int)               202 answers before the manifest (``retry_after``, default "0",
                                may be an HTTP date; ``X-Progress`` says "<n>% complete")
  ``kickoff_fault``             ``(status, diagnostics)``: the kick-off answers that OperationOutcome
  ``job_fault``                 ``(status, diagnostics, code)``: the status URL answers it (a failed
                                job; code "transient" makes it a transient error) ``job_fault_times``
  ``throttle``                  answer 429 (``Retry-After: 0``) this many times first (any route)
  ``expire``                    404 or 410: file downloads answer that (files expired)
  ``token``                     a fixed bearer token every /fhir route requires
  ``files_require_token``       files need a valid token (``requiresAccessToken`` is then true)
  ``file_host``                 serve file URLs under another name for this server (e.g.
                                ``localhost``), a "different host" for token tests
  ``errors``                    OperationOutcome dicts put in an error file
  ``smart_clients``             ``{client_id: public JWKS}``: enables SMART Backend Services;
                                ``token_lifetime`` (s) of the tokens it issues
  ``echo_request``              False: the manifest leaves out ``request``
  ``split_lines``               >0: each type's lines go into files of this many lines
  ``gzip_files``                files are sent with ``Content-Encoding: gzip``

Inspection: ``requests`` (method, path, query, headers), ``downloads`` (file name -> count),
``deleted`` (job ids), ``kickoffs`` (the kick-off URLs), ``token_requests`` (accepted assertions'
claims), ``token_rejections`` (why an assertion was refused).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fake_fhir_server import serve_wsgi
from flask import Flask, Response, request

FHIR_JSON = "application/fhir+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def outcome(diagnostics: str, code: str = "processing", severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


@dataclass
class Job:
    """One export job."""

    id: str
    request_url: str
    types: list[str]
    polls_left: int
    files: list[tuple[str, str, list[str]]] = field(default_factory=list)  # kind, type, lines
    deleted: bool = False


class FakeBulkServer:
    """See the module docstring."""

    def __init__(self, data: dict[str, list[str]] | None = None) -> None:
        self.data: dict[str, list[str]] = data or {}
        self.polls = 0
        self.retry_after: str | None = "0"
        self.kickoff_fault: tuple[int, str] | None = None
        self.job_fault: tuple[int, str, str] | None = None
        self.job_fault_times: int | None = None
        self.throttle = 0
        self.expire: int | None = None
        self.token: str | None = None
        self.files_require_token = False
        self.file_host: str | None = None
        self.errors: list[dict[str, Any]] = []
        self.smart_clients: dict[str, dict[str, Any]] = {}
        self.token_lifetime = 300
        self.echo_request = True
        self.split_lines = 0  # >0: split each type into files of this many lines
        self.gzip_files = False  # send files with Content-Encoding: gzip
        self.requests: list[dict[str, Any]] = []
        self.downloads: Counter[str] = Counter()
        self.deleted: list[str] = []
        self.kickoffs: list[str] = []
        self.token_requests: list[dict[str, Any]] = []
        self.token_rejections: list[str] = []
        self.jobs: dict[str, Job] = {}
        self._issued: dict[str, float] = {}
        self._jtis: set[str] = set()
        self._lock = threading.Lock()
        self.origin = ""
        self.base_url = ""
        self._serving: Any = None
        self.app = self._make_app()

    @classmethod
    def from_folder(cls, folder: Path) -> FakeBulkServer:
        """Serve the NDJSON files of an export folder (one type per file name, log excluded)."""
        data: dict[str, list[str]] = {}
        for path in sorted(folder.glob("*.ndjson")):
            if path.name == "log.ndjson":
                continue
            rtype = path.name.split(".")[0]
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            data.setdefault(rtype, []).extend(lines)
        return cls(data)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeBulkServer:
        self._serving = serve_wsgi(self.app)
        self.origin = self._serving.__enter__()
        self.base_url = self.origin + "/fhir"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._serving is not None:
            self._serving.__exit__(None, None, None)
            self._serving = None

    @property
    def token_url(self) -> str:
        """The token endpoint the smart-configuration announces."""
        return self.origin + "/auth/token"

    # ------------------------------------------------------------------ helpers
    def _fhir(
        self, body: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(
            json.dumps(body), status=status, headers=headers or {}, content_type=FHIR_JSON
        )

    def _valid_token(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        value = header[7:]
        if self.token is not None and value == self.token:
            return True
        expires = self._issued.get(value)
        return expires is not None and expires > time.time()

    def _needs_token(self) -> bool:
        return self.token is not None or bool(self.smart_clients)

    def _file_url(self, job: str, n: int) -> str:
        origin = self.origin
        if self.file_host:
            port = urlsplit(self.origin).port
            origin = f"http://{self.file_host}:{port}"
        return f"{origin}/files/{job}/{n}.ndjson"

    def _manifest(self, job: Job) -> dict[str, Any]:
        output, error = [], []
        for n, (kind, rtype, lines) in enumerate(job.files):
            item = {"type": rtype, "url": self._file_url(job.id, n)}
            if kind == "output":
                item["count"] = len(lines)  # type: ignore[assignment]
                output.append(item)
            else:
                error.append(item)
        manifest: dict[str, Any] = {
            "transactionTime": "2026-12-07T10:00:00Z",
            "requiresAccessToken": self.files_require_token,
            "output": output,
            "error": error,
        }
        if self.echo_request:
            manifest["request"] = job.request_url
        return manifest

    # ------------------------------------------------------------------ the app
    def _make_app(self) -> Flask:
        app = Flask("fake-bulk-server")
        server = self

        @app.before_request
        def record_and_gate() -> Response | None:
            server.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.args.to_dict(flat=False),
                    "headers": dict(request.headers),
                }
            )
            if server.throttle > 0:
                server.throttle -= 1
                return server._fhir(outcome("slow down", "throttled"), 429, {"Retry-After": "0"})
            gated = request.path.startswith("/fhir/") and not request.path.startswith(
                "/fhir/.well-known"
            )
            authorised = server._valid_token(request.headers.get("Authorization"))
            if gated and server._needs_token() and not authorised:
                return server._fhir(outcome("token required", "login"), 401)
            return None

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> Response:
            if not server.smart_clients:
                return Response("not found", status=404)
            return Response(
                json.dumps(
                    {
                        "token_endpoint": server.token_url,
                        "grant_types_supported": ["client_credentials"],
                        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                        "scopes_supported": ["system/*.rs"],
                        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
                    }
                ),
                content_type="application/json",
            )

        @app.post("/auth/token")
        def token() -> Response:
            def refuse(why: str, error: str = "invalid_client") -> Response:
                server.token_rejections.append(why)
                return Response(
                    json.dumps({"error": error, "error_description": why}),
                    status=400 if error != "invalid_client" else 401,
                    content_type="application/json",
                )

            form = request.form
            if form.get("grant_type") != "client_credentials":
                return refuse("grant_type must be client_credentials", "unsupported_grant_type")
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                return refuse("client_assertion_type must be jwt-bearer", "invalid_request")
            assertion = form.get("client_assertion") or ""
            try:
                header = jwt.get_unverified_header(assertion)
                claims = jwt.decode(assertion, options={"verify_signature": False})
            except jwt.PyJWTError as exc:
                return refuse(f"not a JWT: {exc}")
            client_id = claims.get("iss")
            jwks = server.smart_clients.get(str(client_id))
            if jwks is None:
                return refuse("unknown client")
            if header.get("alg") not in ("RS384", "ES384"):
                return refuse("alg must be RS384 or ES384")
            if header.get("typ") != "JWT":
                return refuse("typ must be JWT")
            keys = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
            if not keys:
                return refuse("unknown kid")
            try:
                key = jwt.PyJWK(keys[0], algorithm=header["alg"]).key
                verified = jwt.decode(
                    assertion,
                    key,
                    algorithms=[header["alg"]],
                    audience=server.token_url,
                    issuer=str(client_id),
                    options={"require": ["exp", "jti", "iss", "sub", "aud"]},
                )
            except jwt.PyJWTError as exc:
                return refuse(f"assertion rejected: {type(exc).__name__}: {exc}")
            if verified.get("sub") != client_id:
                return refuse("sub must equal iss")
            if verified["exp"] > time.time() + 300 + 5:
                return refuse("exp more than 5 minutes ahead")
            if verified["jti"] in server._jtis:
                return refuse("jti replayed")
            server._jtis.add(verified["jti"])
            server.token_requests.append(
                {**verified, "scope": form.get("scope"), "kid": header["kid"], "alg": header["alg"]}
            )
            value = uuid.uuid4().hex
            server._issued[value] = time.time() + server.token_lifetime
            return Response(
                json.dumps(
                    {
                        "access_token": value,
                        "token_type": "bearer",
                        "expires_in": server.token_lifetime,
                        "scope": form.get("scope"),
                    }
                ),
                content_type="application/json",
            )

        def kickoff() -> Response:
            if "respond-async" not in (request.headers.get("Prefer") or ""):
                return server._fhir(outcome("Prefer: respond-async is required"), 400)
            accept = request.headers.get("Accept") or ""
            if "json" not in accept:
                return server._fhir(outcome("Accept must be application/fhir+json"), 400)
            if server.kickoff_fault is not None:
                status, diagnostics = server.kickoff_fault
                return server._fhir(outcome(diagnostics), status)
            server.kickoffs.append(request.url)
            wanted: list[str] = []
            for value in request.args.getlist("_type"):
                wanted.extend(t for t in value.split(",") if t)
            types = wanted or sorted(server.data)
            job = Job(uuid.uuid4().hex[:12], request.url, types, server.polls)
            for rtype in types:
                lines = server.data.get(rtype) or []
                size = server.split_lines or max(len(lines), 1)
                for start in range(0, len(lines), size):
                    job.files.append(("output", rtype, lines[start : start + size]))
            if server.errors:
                job.files.append(
                    ("error", "OperationOutcome", [json.dumps(e) for e in server.errors])
                )
            server.jobs[job.id] = job
            return Response(
                status=202,
                headers={"Content-Location": f"{server.base_url}/$export-poll/{job.id}"},
            )

        app.add_url_rule("/fhir/Group/<gid>/$export", "group", lambda gid: kickoff())
        app.add_url_rule("/fhir/Patient/$export", "patient", kickoff)
        app.add_url_rule("/fhir/$export", "system", kickoff)

        @app.route("/fhir/$export-poll/<job_id>", methods=["GET", "DELETE"])
        def status(job_id: str) -> Response:
            job = server.jobs.get(job_id)
            if job is None or job.deleted:
                return server._fhir(outcome("no such job", "not-found"), 404)
            if request.method == "DELETE":
                job.deleted = True
                server.deleted.append(job_id)
                return Response(status=202)
            if server.job_fault is not None:
                status_code, diagnostics, code = server.job_fault
                if server.job_fault_times is not None:
                    server.job_fault_times -= 1
                    if server.job_fault_times <= 0:
                        server.job_fault = None
                return server._fhir(outcome(diagnostics, code), status_code)
            if job.polls_left > 0:
                done = server.polls - job.polls_left
                job.polls_left -= 1
                headers = {"X-Progress": f"{int(100 * done / max(server.polls, 1))}% complete"}
                if server.retry_after is not None:
                    headers["Retry-After"] = server.retry_after
                return Response(status=202, headers=headers)
            return Response(json.dumps(server._manifest(job)), content_type="application/json")

        @app.get("/files/<job_id>/<int:n>.ndjson")
        def file(job_id: str, n: int) -> Response:
            job = server.jobs.get(job_id)
            if server.expire is not None:
                return server._fhir(outcome("file expired", "not-found"), server.expire)
            if job is None or job.deleted or n >= len(job.files):
                return server._fhir(outcome("no such file", "not-found"), 404)
            if server.files_require_token and not server._valid_token(
                request.headers.get("Authorization")
            ):
                return server._fhir(outcome("token required", "login"), 401)
            with server._lock:
                server.downloads[f"{job_id}/{n}"] += 1
            lines = job.files[n][2]
            if server.gzip_files:
                body = gzip.compress("".join(line + "\n" for line in lines).encode("utf-8"))
                return Response(
                    body,
                    content_type="application/fhir+ndjson",
                    headers={"Content-Encoding": "gzip"},
                )

            def chunks() -> Iterator[bytes]:
                for line in lines:
                    yield (line + "\n").encode("utf-8")

            return Response(chunks(), content_type="application/fhir+ndjson")

        return app


def make_jwks(kind: str, kid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(private JWKS, public JWKS) for an RSA (RS384) or a P-384 EC (ES384) key, for tests."""
    if kind == "RS384":
        private_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algo: Any = jwt.algorithms.RSAAlgorithm
    else:
        private_key = ec.generate_private_key(ec.SECP384R1())
        algo = jwt.algorithms.ECAlgorithm
    private = json.loads(algo.to_jwk(private_key))
    public = json.loads(algo.to_jwk(private_key.public_key()))
    for jwk in (private, public):
        jwk.update({"kid": kid, "alg": kind})
    return {"keys": [private]}, {"keys": [public]}


def http_date(seconds_from_now: float) -> str:
    """An HTTP date ``seconds_from_now`` in the future (for Retry-After)."""
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds_from_now)
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")
