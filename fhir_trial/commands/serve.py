"""``fhir-trial serve``: the HTTP service (CDS Hooks, /fhir, /healthz) under gunicorn.

    fhir-trial serve --host 127.0.0.1 --port 8080 --workers 4 [--development-mode] [--dev-server]

Production runs gunicorn: worker processes forked from one preloaded app, each with
``server_threads`` request threads; slow clients cost no thread (see :mod:`.serve_worker`). ``--dev-server`` runs Flask's
built-in server instead, for development only. ``--development-mode`` turns CDS Hooks JWT
verification and the registry operations' access tokens OFF (loudly); it is never the default. Settings come from ``FHIR_TRIAL_*``
environment variables (e.g. ``FHIR_TRIAL_CDS_TRUSTED_ISSUERS_FILE``, ``FHIR_TRIAL_SECRET_KEY``,
``FHIR_TRIAL_PUBLIC_BASE_URL``, ``FHIR_TRIAL_DATABASE_PATH``) and the options below.

The access log is off by default: worksheet links carry their token in the URL path.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import secrets
from typing import Any

import click
from flask import Flask
from gunicorn.app.base import BaseApplication

from fhir_trial.commands.serve_worker import configure as configure_worker
from fhir_trial.config import Settings
from fhir_trial.logs import configure_json_logging

__all__ = ["GunicornServer", "command", "default_workers", "log_through_gunicorn"]


def default_workers() -> int:
    """Workers when not given: 2 x CPUs + 1 (gunicorn's advice), at most 9."""
    return min(9, multiprocessing.cpu_count() * 2 + 1)


class GunicornServer(BaseApplication):
    """gunicorn run programmatically; the master builds the app once and the workers fork from it."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        """Hand the options to gunicorn."""
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key.lower(), value)

    def load(self) -> Flask:
        """Build the app in the master (``preload_app``), then ``gc.freeze()`` what it allocated.

        The app, terminology and schemas are tens of thousands of long-lived objects. Built before
        the fork, their pages are shared by every worker instead of copied into each: with four
        workers the service's proportional memory fell from about 173 MiB to 75 MiB, and a worker
        that dies is replaced by a fork rather than a rebuild. Frozen, they are left out of every
        collection, so the collector only walks what requests allocate (and does not write to the
        shared pages, which would copy them). Nothing here opens a file, socket or thread: the
        SQLite connections, HTTP sessions and thread pools start lazily in each worker.
        """
        from fhir_trial.app import create_app

        log_through_gunicorn()
        app = create_app(self.settings)
        gc.collect()
        gc.freeze()
        return app


def log_through_gunicorn() -> None:
    """Write the package's log records as JSON lines on stderr, at gunicorn's level.

    One object per line (:mod:`fhir_trial.logs`): request-derived values are escaped, so a
    ``hookInstance`` with a newline cannot forge a line, and every request leaves one line with
    its id, route pattern, status and duration. None of them carries a token or PHI.
    """
    configure_json_logging(logging.getLogger("gunicorn.error").level or logging.INFO)


def gunicorn_options(host: str, port: int, workers: int, settings: Settings) -> dict[str, Any]:
    """The gunicorn configuration used by ``serve`` (and the benchmark)."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        # Threads, headers read in the event loop, deadlines on bodies: slow clients cost a
        # socket, not a worker (commands/serve_worker.py).
        "worker_class": configure_worker(settings),
        "threads": settings.server_threads,
        # With threads the arbiter only replaces a worker whose event loop hangs; a request's
        # own time is bounded by the header/body deadlines and the screening deadlines.
        "timeout": max(30, settings.worker_timeout_s, int(settings.cds_deadline_s * 10)),
        "graceful_timeout": 10,
        "keepalive": 2,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "limit_request_fields": 50,
        "limit_request_field_size": 8190,
        "proc_name": "fhir-trial",
        # Build once, fork many (see GunicornServer.load). A HUP therefore re-forks the workers
        # but does not reload the code or settings: restart the service for those.
        "preload_app": True,
    }


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="gunicorn workers (default 2 x CPUs + 1).",
)
@click.option(
    "--timeout",
    type=click.IntRange(30, 3600),
    default=None,
    help="Seconds a request may run before gunicorn replaces its worker (default 300; "
    "a $screen-population upload must be screened within it).",
)
@click.option(
    "--development-mode",
    is_flag=True,
    help="Turn token checks OFF (CDS Hooks JWTs, $apply/$screen-population access tokens). "
    "Never in production.",
)
@click.option(
    "--dev-server", is_flag=True, help="Use Flask's development server instead of gunicorn."
)
@click.option(
    "--trusted-issuers",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Trusted CDS clients (JSON).",
)
@click.option(
    "--public-base-url", default=None, help="The service's external URL (JWT aud, card links)."
)
def command(
    host: str,
    port: int,
    workers: int | None,
    timeout: int | None,
    development_mode: bool,
    dev_server: bool,
    trusted_issuers: str | None,
    public_base_url: str | None,
) -> None:
    """Serve CDS Hooks, the study's FHIR endpoint and /healthz."""
    settings = Settings.from_env(
        cds_development_mode=True if development_mode else None,
        cds_trusted_issuers_file=trusted_issuers,
        public_base_url=public_base_url,
        worker_timeout_s=timeout,
    )
    if not settings.secret_key:
        # One secret shared by every worker (they fork from this process), so worksheet links work
        # whichever worker answers. Set FHIR_TRIAL_SECRET_KEY to keep links valid across restarts.
        settings = settings.replace(secret_key=secrets.token_urlsafe(32))
    if settings.cds_development_mode:
        click.echo(
            "WARNING: development mode: CDS Hooks JWT verification and the access tokens of "
            "$apply and $screen-population are OFF; anyone can call the service and send it "
            "patient data. Never use this in production.",
            err=True,
        )
    if dev_server:
        from fhir_trial.app import create_app

        configure_json_logging()
        click.echo(
            "WARNING: Flask development server; use gunicorn (without --dev-server) in production.",
            err=True,
        )
        create_app(settings).run(
            host=host, port=port, debug=False, threaded=True, use_reloader=False
        )
        return
    GunicornServer(
        settings, gunicorn_options(host, port, workers or default_workers(), settings)
    ).run()
