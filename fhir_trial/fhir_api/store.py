"""The study's FHIR resources as published: loaded once from ``resources/``, read and searched.

``resources/`` holds one resource per file, ``<Type>-<id>.json`` (written by ``fhir-trial
build-resources``). :func:`load_resources` reads them (sorted by file name, so the order is stable);
:class:`ResourceStore` indexes them for the ``/fhir`` endpoint. Search semantics follow the FHIR
R4 rules for the three parameters served: ``_id`` (token), ``url`` (uri, ``url|version`` allowed)
and ``identifier`` (token: ``system|value``, ``|value`` for no system, ``value`` for any system,
``system|`` for any value). A comma separates alternatives (OR); a repeated parameter is AND.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fhir_trial.errors import ConfigurationError

__all__ = ["ResourceStore", "load_resources", "matches_identifier", "matches_url"]

JsonDict = dict[str, Any]


def load_resources(resources_dir: str | Path) -> list[JsonDict]:
    """Read every ``*.json`` FHIR resource in ``resources_dir`` (sorted by file name).

    Raises :class:`ConfigurationError` for a missing folder, a file that is not JSON, a JSON value
    that is not a resource with ``resourceType`` and ``id``, or two files with the same Type/id.
    """
    folder = Path(resources_dir)
    if not folder.is_dir():
        raise ConfigurationError(
            f"resources folder {folder} does not exist; run `fhir-trial build-resources`"
        )
    resources: list[JsonDict] = []
    seen: dict[tuple[str, str], str] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigurationError(f"{path.name}: not readable JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise ConfigurationError(f"{path.name}: not a FHIR resource (no resourceType)")
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise ConfigurationError(f"{path.name}: {data['resourceType']} has no id")
        key = (data["resourceType"], data["id"])
        if key in seen:
            raise ConfigurationError(f"{path.name}: {key[0]}/{key[1]} is also in {seen[key]}")
        seen[key] = path.name
        resources.append(data)
    return resources


def matches_url(resource: Mapping[str, Any], value: str) -> bool:
    """``url`` search: exact canonical, optionally ``|version``."""
    url, bar, version = value.partition("|")
    if resource.get("url") != url:
        return False
    return not bar or resource.get("version") == version


def matches_identifier(resource: Mapping[str, Any], value: str) -> bool:
    """``identifier`` token search against every Identifier of the resource."""
    system, bar, code = value.rpartition("|") if "|" in value else ("", "", value)
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, Mapping):
            continue
        ident_system, ident_value = ident.get("system"), ident.get("value")
        if not bar:
            if ident_value == code:
                return True
        elif system == "":
            if not ident_system and ident_value == code:
                return True
        elif ident_system == system and (code == "" or ident_value == code):
            return True
    return False


class ResourceStore:
    """The published resources, indexed by type and id (read-only)."""

    def __init__(self, resources: Iterable[Mapping[str, Any]]) -> None:
        self._by_type: dict[str, dict[str, JsonDict]] = {}
        for resource in resources:
            rtype, rid = str(resource["resourceType"]), str(resource["id"])
            self._by_type.setdefault(rtype, {})[rid] = dict(resource)

    @classmethod
    def load(cls, resources_dir: str | Path) -> ResourceStore:
        """Load a store from a resources folder (see :func:`load_resources`)."""
        return cls(load_resources(resources_dir))

    def __len__(self) -> int:
        return sum(len(by_id) for by_id in self._by_type.values())

    def __iter__(self) -> Iterator[JsonDict]:
        for rtype in self.types():
            yield from self._by_type[rtype].values()

    def types(self) -> list[str]:
        """The resource types served, sorted."""
        return sorted(self._by_type)

    def has_url(self, resource_type: str) -> bool:
        """True when every resource of this type carries a canonical ``url``."""
        found = self._by_type.get(resource_type, {}).values()
        return bool(found) and all(isinstance(r.get("url"), str) for r in found)

    def read(self, resource_type: str, resource_id: str) -> JsonDict | None:
        """One resource, or None."""
        return self._by_type.get(resource_type, {}).get(resource_id)

    def search(self, resource_type: str, criteria: Iterable[tuple[str, str]]) -> list[JsonDict]:
        """Resources of a type matching every ``(name, value)`` (names: _id, url, identifier).

        Each value may list alternatives separated by commas. Results are sorted by id.
        """
        criteria = list(criteria)
        found = []
        for rid in sorted(self._by_type.get(resource_type, {})):
            resource = self._by_type[resource_type][rid]
            if all(
                any(_matches(resource, name, alt) for alt in value.split(","))
                for name, value in criteria
            ):
                found.append(resource)
        return found


def _matches(resource: Mapping[str, Any], name: str, value: str) -> bool:
    if name == "_id":
        return resource.get("id") == value
    if name == "url":
        return matches_url(resource, value)
    if name == "identifier":
        return matches_identifier(resource, value)
    raise ValueError(f"unsupported search parameter {name}")
