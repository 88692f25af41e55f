"""``_summary`` and ``_elements``: the subsets of a resource a client may ask for (FHIR R4 search).

- ``_summary=true``: the top-level elements the R4 definition marks "summary" (from the
  fhir.resources R4B models, which carry that flag), plus the mandatory ones;
- ``_summary=text``: ``text``, ``id``, ``meta`` and the top-level mandatory elements;
- ``_summary=data``: everything but ``text``;
- ``_summary=false``: the whole resource; ``_summary=count`` is handled by the search (no entries);
- ``_elements=a,b``: those top-level elements plus ``id``, ``meta`` and the mandatory elements
  (unknown names are ignored, as the specification lets servers return more than asked).

Every subset carries the ``SUBSETTED`` tag (``v3-ObservationValue``) in ``meta.tag`` so that no
client stores it back as if it were whole. The stored resource is never changed (copies only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

__all__ = ["SUBSETTED", "SUMMARY_VALUES", "elements_subset", "summary_subset"]

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
SUMMARY_VALUES = ("true", "text", "data", "count", "false")
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@lru_cache(maxsize=64)
def _flags(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary, mandatory) top-level JSON names of a type; empty when the type is unknown."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return frozenset(), frozenset()
    summary, mandatory = set(), set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        json_name = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(json_name)
        if extra.get("element_required") or field.is_required():
            mandatory.add(json_name)
    return frozenset(summary), frozenset(mandatory)


def _keep(resource: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The resource with only ``names`` (and their ``_name`` primitive extensions), tagged."""
    wanted = set(names) | _ALWAYS
    wanted |= {f"_{name}" for name in wanted}
    return _tagged({key: value for key, value in resource.items() if key in wanted})


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != SUBSETTED["code"]]
    meta["tag"] = [*tags, SUBSETTED]
    return {**resource, "meta": meta}


def summary_subset(resource: Mapping[str, Any], summary: str) -> Mapping[str, Any]:
    """The resource as ``_summary=summary`` asks (``false``/``count``: unchanged)."""
    rtype = str(resource.get("resourceType", ""))
    flags, mandatory = _flags(rtype)
    if summary == "true":
        return _keep(resource, flags | mandatory)
    if summary == "text":
        return _keep(resource, mandatory | {"text"})
    if summary == "data":
        return _tagged({key: value for key, value in resource.items() if key != "text"})
    return resource


def elements_subset(resource: Mapping[str, Any], elements: Iterable[str]) -> Mapping[str, Any]:
    """The resource with the ``_elements`` asked for plus the mandatory ones, tagged."""
    rtype = str(resource.get("resourceType", ""))
    names = set()
    for element in elements:
        name = element.strip()
        if name.startswith(f"{rtype}."):  # R5 lets clients write Type.element
            name = name[len(rtype) + 1 :]
        if name:
            names.add(name.split(".", 1)[0])
    return _keep(resource, names | _flags(rtype)[1])
