"""JSON that comes from outside: request bodies, input files, NDJSON lines, FHIR server answers.

One strict parser (orjson) for all of it. The standard library's :func:`json.loads` accepts two
things that are not usable text: a lone UTF-16 surrogate escape (``"\\ud800"``), which becomes a
Python string that cannot be written back as UTF-8, so the failure surfaced far from the input
(in a response, the SQLite index of an upload, a log line); and ``NaN``/``Infinity``, which are not
JSON. Refusing them where the data enters keeps the rest of the code free of that doubt.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JsonSyntaxError", "parse_json"]


class JsonSyntaxError(ValueError):
    """Input that is not JSON. ``str(exc)`` completes a sentence whose subject the caller names.

    For example ``f"the request body {exc}"`` reads "the request body is not JSON (line 1 column
    4: unexpected end of data)".
    """


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON text; :class:`JsonSyntaxError` with a one-line reason when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JsonSyntaxError(_why(exc)) from None


def _why(exc: orjson.JSONDecodeError) -> str:
    if "UTF-8" in exc.msg:
        return "is not JSON (not UTF-8 text)"
    if "depth limit" in exc.msg or "recursion" in exc.msg:
        return "is JSON nested too deeply"
    return f"is not JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
