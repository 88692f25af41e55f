"""Structured logs: one JSON object per line, one line per request, a request id on each.

Every record of the ``fhir_trial`` loggers is written by :class:`JsonFormatter` as one JSON
object, so a value that came from a request (a ``hookInstance`` with a newline, a header) is
escaped by the JSON encoder and can never start a line of its own: log lines cannot be forged.

:func:`install_request_log` adds to a Flask app:

- a request id per request: the caller's ``X-Request-Id`` when it is a plain token
  (``[A-Za-z0-9._-]``, at most 64 characters), otherwise a new UUID; echoed in the response's
  ``X-Request-Id`` and on every log line written while the request runs;
- one ``request`` line when the request ends: method, the matched *route pattern* (never the
  path: worksheet links carry their token in the path, and ids in /fhir paths could be patients'
  in a later version), status, duration and response size. No query string, no headers, no
  body, no token, nothing about the patient.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import time
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request

__all__ = [
    "JsonFormatter",
    "configure_json_logging",
    "install_request_log",
    "printable",
    "request_id",
]

log = logging.getLogger("fhir_trial.requests")

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
REQUEST_ID_HEADER = "X-Request-Id"


def printable(value: str) -> str:
    """``value`` with control characters escaped (``\\n``, ``\\x1b``): safe in any log format."""
    if value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


def request_id() -> str | None:
    """The id of the request being served, if any."""
    if not has_request_context():
        return None
    value = g.get("request_id")
    return value if isinstance(value, str) else None


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id", ...}`` on one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (the message with its arguments applied)."""
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        rid = request_id()
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text and tracebacks can carry request data (PHI).
            entry["exception"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


def configure_json_logging(level: int = logging.INFO) -> None:
    """Write the package's records to stderr as JSON lines (``serve`` calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    package_log = logging.getLogger("fhir_trial")
    package_log.handlers = [handler]
    package_log.setLevel(level)
    package_log.propagate = False


def install_request_log(app: Flask) -> None:
    """Request ids and the one-line-per-request log (see the module docstring)."""

    @app.before_request
    def _start() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if _SAFE_ID.fullmatch(given) else str(uuid.uuid4())
        g.request_started = time.monotonic()

    @app.after_request
    def _finish(response: Response) -> Response:
        rid = request_id()
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        started = g.get("request_started")
        elapsed = (time.monotonic() - started) * 1000 if isinstance(started, float) else None
        log.info(
            "request",
            extra={
                "fields": {
                    "method": request.method,
                    "route": request.url_rule.rule if request.url_rule else None,
                    "status": response.status_code,
                    "ms": round(elapsed, 1) if elapsed is not None else None,
                    # A streamed answer ($screen-population) has no length yet; measuring it
                    # would read the whole stream here, in memory, before it is sent.
                    "bytes": None if response.is_streamed else response.calculate_content_length(),
                }
            },
        )
        return response
