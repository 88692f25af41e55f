"""HTTP for the CDS Hooks service: discovery, the hook, feedback, the worksheet page.

Routes (all under ``/cds-services``):

    GET     /cds-services                          discovery (a presented JWT is verified)
    POST    /cds-services/<id>                     the patient-view hook (JWT required)
    POST    /cds-services/<id>/feedback            card outcomes, stored before answering (JWT)
    GET     /cds-services/<id>/worksheet/<token>   read-only report page (signed token in the URL)
    OPTIONS on the first three                     CORS preflight

Status codes: 200; 400 with ``{"error": code, "message": ...}`` for malformed or refused requests;
a bare 401 (``WWW-Authenticate: Bearer``) for any authentication failure; 404 for an unknown
service; 412 when the patient's data cannot be obtained at all; 413 over the size limit; 503 when
feedback could not be stored. Unexpected errors never surface as 500: the hook answers "screening
could not be completed", the other routes 503.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from fhir_trial.cds_hooks.auth import AuthError, ClientIdentity
from fhir_trial.cds_hooks.cards import incomplete_card
from fhir_trial.cds_hooks.discovery import SERVICE_ID, discovery_document
from fhir_trial.cds_hooks.feedback import IssuedCards
from fhir_trial.cds_hooks.service import CdsService, Evaluator, HookError
from fhir_trial.cds_hooks.validation import first_error, request_problem
from fhir_trial.cds_hooks.worksheet import worksheet_response
from fhir_trial.config import Settings
from fhir_trial.logs import printable

__all__ = ["create_cds_blueprint"]

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/cds-services"
CORS_ENDPOINTS = frozenset({"cds_hooks.discovery", "cds_hooks.hook", "cds_hooks.feedback"})
_SERVICE_KEY = "fhir_trial.cds_service"


def create_cds_blueprint(settings: Settings, evaluator: Evaluator | None = None) -> Blueprint:
    """The CDS Hooks blueprint; ``evaluator`` replaces :func:`fhir_trial.evaluate.evaluate` in tests."""
    service = CdsService(settings, evaluator)
    # Card records are short-lived bookkeeping, like the replay list: no fsync per hook call.
    issued = IssuedCards(service.replay_database)
    bp = Blueprint("cds_hooks", __name__)
    cors_origins = settings.cds_cors_origins
    discovery_needs_jwt = settings.cds_discovery_requires_jwt

    @bp.record_once
    def _remember(state: Any) -> None:
        app: Flask = state.app
        app.extensions[_SERVICE_KEY] = service

    @bp.before_request
    def _limit() -> None:
        request.max_content_length = settings.max_request_bytes

    @bp.after_request
    def _cors(response: Response) -> Response:
        if request.endpoint not in CORS_ENDPOINTS:
            return response
        origin = request.headers.get("Origin")
        if "*" in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin and origin in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.add("Vary", "Origin")
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        if service.development:
            response.headers["X-Fhir-Trial-Development-Mode"] = "JWT verification is off"
        return response

    # ------------------------------------------------------------------ routes
    @bp.route(DISCOVERY_PATH, methods=["GET", "OPTIONS"], provide_automatic_options=False)
    def discovery() -> Response:
        if request.method == "OPTIONS":
            return _preflight()
        header = request.headers.get("Authorization")
        if header or discovery_needs_jwt:
            _authenticate(service, request.path)
        return _json(discovery_document(service.plan))

    @bp.route(
        f"{DISCOVERY_PATH}/<service_id>",
        methods=["POST", "OPTIONS"],
        provide_automatic_options=False,
    )
    def hook(service_id: str) -> Response:
        if request.method == "OPTIONS":
            return _preflight()
        started = time.monotonic()
        _known(service_id)
        identity = _authenticate(service, request.path)
        body = _json_body("request")
        hook_request = service.parse_request(body, identity)
        outcome = service.run(hook_request, started)
        if outcome.kind == "no-data":
            raise HookError(
                412,
                "data-unavailable",
                f"the patient's data could not be obtained ({outcome.reason})",
            )
        cards = service.cards(hook_request, outcome, _base_url(settings))
        issued.record((c["uuid"] for c in cards if isinstance(c.get("uuid"), str)), identity.iss)
        log.info(
            "cds hook %s: %s, %d card(s) in %.0f ms",
            printable(hook_request.hook_instance[:64]),
            outcome.kind,
            len(cards),
            (time.monotonic() - started) * 1000,
        )
        return _json({"cards": cards})

    @bp.route(
        f"{DISCOVERY_PATH}/<service_id>/feedback",
        methods=["POST", "OPTIONS"],
        provide_automatic_options=False,
    )
    def feedback(service_id: str) -> Response:
        if request.method == "OPTIONS":
            return _preflight()
        _known(service_id)
        # aud must be this URL (the feedback endpoint's), not the hook's: a token minted for one
        # endpoint is not accepted at another.
        identity = _authenticate(service, request.path)
        body = _json_body("feedback")
        items = body["feedback"]
        known = issued.issued_to((item["card"] for item in items), identity.iss)
        result = service.feedback.store(service_id, items, identity.iss, issued=known)
        if result.unissued:
            log.warning(
                "cds feedback: %d item(s) name a card never issued to this client; stored, "
                "marked card_issued = 0",
                result.unissued,
            )
        return _json(
            {"stored": result.stored, "duplicates": result.duplicates, "unissued": result.unissued}
        )

    @bp.get(f"{DISCOVERY_PATH}/<service_id>/worksheet/<token>")
    def worksheet(service_id: str, token: str) -> Response:
        _known(service_id)
        return worksheet_response(service.worksheets, token)

    # ------------------------------------------------------------------ errors
    @bp.errorhandler(_Unauthorized)
    def _unauthorized(exc: _Unauthorized) -> Response:
        response = Response(b"", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
        return response

    @bp.errorhandler(HookError)
    def _hook_error(exc: HookError) -> Response:
        return _error(exc.status, exc.code, exc.message)

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 400
        if code == 413:
            return _error(
                413, "too-large", f"request body larger than {settings.max_request_bytes} bytes"
            )
        return _error(code, (exc.name or "error").lower().replace(" ", "-"), exc.description or "")

    @bp.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("cds %s failed unexpectedly (%s)", request.endpoint, type(exc).__name__)
        if request.endpoint == "cds_hooks.hook":
            cards = (
                [incomplete_card("the screening service hit an internal error")]
                if service.incomplete_cards
                else []
            )
            return _json({"cards": cards})
        return _error(503, "unavailable", "the service could not process this request; try again")

    return bp


class _Unauthorized(Exception):
    """Raised inside views to answer a bare 401."""


def _authenticate(
    service: CdsService, path: str, extra_paths: tuple[str, ...] = ()
) -> ClientIdentity:
    try:
        return service.authenticate(
            request.headers.get("Authorization"), path, request.url_root, extra_paths
        )
    except AuthError as exc:
        log.info("cds %s: 401 (%s)", request.endpoint, exc.reason)
        raise _Unauthorized() from None


def _known(service_id: str) -> None:
    if service_id != SERVICE_ID:
        raise HookError(
            404, "unknown-service", f"no CDS service {service_id[:60]!r}; see GET /cds-services"
        )


def _json_body(schema_name: str) -> dict[str, Any]:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise HookError(400, "not-json", "send the request body as application/json")
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HookError(400, "not-json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HookError(400, "not-an-object", "the request body must be a JSON object")
    # Hook calls: hand-written checks equal to the schema (jsonschema costs too much per call).
    problem = request_problem(body) if schema_name == "request" else first_error(schema_name, body)
    if problem:
        raise HookError(
            400, f"invalid-{schema_name}", f"not a valid CDS Hooks {schema_name}: {problem}"
        )
    return body


def _base_url(settings: Settings) -> str:
    return settings.public_base_url or request.url_root


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def _preflight() -> Response:
    response = Response(b"", 204)
    response.headers.pop("Content-Type", None)
    return response


def cds_service(app: Flask | None = None) -> CdsService:
    """The :class:`CdsService` registered on an app (the current app by default)."""
    target = app or current_app
    service: CdsService = target.extensions[_SERVICE_KEY]
    return service
