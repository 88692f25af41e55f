"""The Flask application factory: ``create_app(settings)`` registers every blueprint."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from fhir_trial.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app: FHIR study endpoint, CDS Hooks service, health check."""
    settings = settings or Settings.from_env()
    app = Flask("fhir_trial")
    app.config["FHIR_TRIAL_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    from fhir_trial.fhir_api.blueprint import create_fhir_blueprint

    app.register_blueprint(create_fhir_blueprint(settings), url_prefix="/fhir")

    from fhir_trial.cds_hooks import create_cds_blueprint

    app.register_blueprint(create_cds_blueprint(settings))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app
