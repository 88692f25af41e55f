"""Logs: one JSON object per line, a request id, nothing forged, no token, no PHI."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cds_helpers import (
    SERVICE_PATH,
    SERVICE_URL,
    base_settings,
    bearer,
    full_prefetch,
    hook_request,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)

from fhir_trial.app import create_app
from fhir_trial.logs import JsonFormatter, printable

FORGED = '{"level": "ERROR", "msg": "forged"}'
NASTY_INSTANCE = f"d7ecf885\n{FORGED}\r\n[2026-12-07 10:00:00 +0000] [1] [ERROR] forged\x1b[2J"


@pytest.fixture()
def log_lines() -> Iterator[io.StringIO]:
    """Everything the package logs, formatted as ``serve`` formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    package = logging.getLogger("fhir_trial")
    old_level = package.level
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        package.removeHandler(handler)
        package.setLevel(old_level)


def _entries(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) and {"ts", "level", "msg"} <= set(e) for e in entries)
    return entries


def test_a_hook_instance_with_a_newline_cannot_forge_a_line(
    tmp_path: Path, log_lines: io.StringIO
) -> None:
    client = create_app(base_settings(tmp_path, cds_development_mode=True)).test_client()
    body = hook_request(full_prefetch(), hookInstance=NASTY_INSTANCE)
    response = client.post(SERVICE_PATH, json=body, headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "abc-123"
    entries = _entries(log_lines)
    assert not any(e["msg"] == "forged" for e in entries)
    hook_lines = [e for e in entries if str(e["msg"]).startswith("cds hook ")]
    assert hook_lines and all(e["request_id"] == "abc-123" for e in hook_lines)
    (request_line,) = [e for e in entries if e["msg"] == "request"]
    assert request_line["route"] == "/cds-services/<service_id>"
    assert request_line["status"] == 200 and request_line["request_id"] == "abc-123"


def test_printable_escapes_control_characters_for_plain_formats() -> None:
    escaped = printable(NASTY_INSTANCE)
    assert "\n" not in escaped and "\r" not in escaped and "\x1b" not in escaped
    assert escaped.startswith("d7ecf885\\n")
    assert printable("ordinary-id") == "ordinary-id"


def test_a_hostile_request_id_is_replaced(tmp_path: Path, log_lines: io.StringIO) -> None:
    client = create_app(base_settings(tmp_path)).test_client()
    for hostile in ("x y", "a" * 65, '"}{"level":"ERROR"', "id\x1b[2J"):
        response = client.get("/healthz", headers={"X-Request-Id": hostile})
        assert response.headers["X-Request-Id"] != hostile
        assert len(response.headers["X-Request-Id"]) == 36  # a fresh UUID


def test_no_token_and_no_patient_in_logs(
    tmp_path: Path, shared_dir: Path, log_lines: io.StringIO
) -> None:
    issuers = write_issuers(tmp_path / "issuers.json", [sandbox_issuer(shared_dir)])
    settings = base_settings(
        tmp_path, cds_trusted_issuers_file=issuers, operations_trusted_issuers_file=issuers
    )
    client = create_app(settings).test_client()
    tokens = [
        sandbox_token(shared_dir),  # good
        sandbox_token(shared_dir, aud="https://elsewhere.example/x"),  # wrong aud
        sandbox_token(shared_dir, claims={"exp": 1}),  # expired
    ]
    for token in tokens:
        client.post(SERVICE_PATH, json=hook_request(full_prefetch()), headers=bearer(token))
        client.post(
            f"{SERVICE_PATH}/feedback",
            json={"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "x"}]},
            headers=bearer(token),
        )
        client.post(
            "/fhir/PlanDefinition/nct06010472-eligibility/$apply",
            json={"resourceType": "Parameters"},
            headers=bearer(token),
        )
    worksheet = client.get(f"{SERVICE_PATH}/worksheet/secret-worksheet-token")
    assert worksheet.status_code in (403, 404, 410)
    client.get("/fhir/Patient/patient-secret-id")
    text = log_lines.getvalue()
    _entries(log_lines)
    for token in tokens:
        for part in token.split("."):
            assert part not in text
    assert "Bearer" not in text and "secret-worksheet-token" not in text
    assert "patient-secret-id" not in text and "pat-1" not in text
    assert SERVICE_URL not in text  # no URLs with query strings or paths from the request
