"""The project's JSON Schemas for CDS Hooks 2.0 messages (``schemas/``), loaded once.

The schemas are written from the CDS Hooks 2.0 text: ``discovery`` (the discovery response),
``request`` (a hook call), ``response`` (cards) and ``feedback``. The service validates incoming
requests and feedback with them; the tests validate every response the service sends.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

__all__ = ["SCHEMA_NAMES", "first_error", "schema", "validator"]

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_NAMES = ("discovery", "request", "response", "feedback")
_MAX_MESSAGE = 300


@cache
def schema(name: str) -> dict[str, Any]:
    """The parsed schema ``schemas/<name>.schema.json``."""
    if name not in SCHEMA_NAMES:
        raise KeyError(name)
    loaded: dict[str, Any] = json.loads(
        (SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8")
    )
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    """A (checked) validator for one schema."""
    raw = schema(name)
    Draft202012Validator.check_schema(raw)
    return Draft202012Validator(raw)


def first_error(name: str, instance: Any) -> str | None:
    """A one-line description of the most relevant validation error, or None when valid."""
    checker = validator(name)
    if checker.is_valid(instance):
        return None
    error = best_match(checker.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    message = f"{where}: {error.message}"
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
