"""Reading elements of FHIR JSON that may be damaged, without a type check at every step.

Records come from EHRs, exports and files nobody here controls; a string where an object
belongs, or an object where a list belongs, is common enough. ``(resource.get("x") or {}).get("y")``
raises on such data (a truthy string has no ``get``), so a single damaged element would take a
whole criterion down. These helpers read a damaged element as absent instead; callers that must
tell "absent" from "damaged" check the type themselves.
"""

from __future__ import annotations

from typing import Any

__all__ = ["child", "objects"]


def child(value: object, name: str) -> Any:
    """``value[name]`` when ``value`` is a JSON object, else None."""
    return value.get(name) if isinstance(value, dict) else None


def objects(value: object) -> list[dict[str, Any]]:
    """The JSON objects of a repeating element (a list); nothing for a missing or damaged one."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]
