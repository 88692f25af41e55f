"""The Flask application factory: ``create_app(settings)`` registers every blueprint."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from fhir_trial.config import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app: FHIR study endpoint, CDS Hooks service, health check."""
    settings = settings or Settings.from_env()
    app = Flask("fhir_trial", static_folder=None)  # no static files: no /static route
    app.config["FHIR_TRIAL_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    from fhir_trial.logs import install_request_log

    install_request_log(app)  # request ids, one JSON line per request (fhir_trial/logs.py)

    from fhir_trial.fhir_api.blueprint import create_fhir_blueprint

    app.register_blueprint(create_fhir_blueprint(settings), url_prefix="/fhir")

    from fhir_trial.cds_hooks import create_cds_blueprint

    app.register_blueprint(create_cds_blueprint(settings))

    from fhir_trial.smart.blueprint import create_smart_blueprint

    app.register_blueprint(create_smart_blueprint(settings))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    from fhir_trial.openapi import openapi_document

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document(settings.public_base_url or request.url_root))

    from fhir_trial.fhir_api.requests_io import operation_outcome

    # Outside the blueprints' own handlers (unknown paths, the /fhir endpoint): an
    # OperationOutcome, never Flask's HTML error page or a stack trace.
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        code = "not-found" if status == 404 else "not-supported" if status == 405 else "invalid"
        return operation_outcome("error", code, exc.description or exc.name, status=status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The type only: exception text can carry request data (PHI) into the log.
        log.error(
            "%s %s failed unexpectedly (%s)", request.method, request.path, type(exc).__name__
        )
        return operation_outcome(
            "error",
            "transient",
            "the service could not process this request; try again",
            status=503,
        )

    return app
