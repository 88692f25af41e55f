"""ValueSets and the project's CodeSystem, built from the sources under ``terminology/``.

The sources write the placeholder ``{{canonical}}`` wherever the canonical base belongs; this module
substitutes it and adds the metadata every published resource carries (url, version, status, date,
publisher, experimental). Whatever sources exist are used; missing ones are reported, not invented,
except that the CodeSystem always defines the 29 criterion ids (from the criteria catalog).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fhir_trial.canonical import BASE, CODESYSTEM_URL, PLACEHOLDER
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.errors import ConfigurationError
from fhir_trial.study.common import (
    EXT_CODE_VERIFICATION,
    RELEASE_DATE,
    JsonDict,
    camel_name,
    canonical_metadata,
)
from fhir_trial.terminology import (
    ATC,
    EXT_INGREDIENT_NAME_OF,
    INGREDIENT_NAME_USE,
    normalise_system,
)

CODESYSTEM_ID = CODESYSTEM_URL.rsplit("/", 1)[-1]
CODESYSTEM_SOURCE = "codesystem-fhir-trial.json"
VALUESET_DIR = "valuesets"
VSAC_DIR = "vsac"  # written by fhir_trial.study.vsac_import (``fhir-trial import-vsac``)
DRUG_NAMES_SOURCE = "drug-names.json"


def substitute_placeholder(value: Any) -> Any:
    """Return a copy of a JSON value with ``{{canonical}}`` replaced by the base in every string."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, BASE)
    if isinstance(value, list):
        return [substitute_placeholder(item) for item in value]
    if isinstance(value, dict):
        return {key: substitute_placeholder(item) for key, item in value.items()}
    return value


def _read_json(path: Path) -> JsonDict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read terminology source {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"terminology source {path} is not a JSON object")
    return data


def _finish(resource: JsonDict, resource_type: str, resource_id: str) -> JsonDict:
    """Apply the project metadata; keep the source's own elements otherwise."""
    out = substitute_placeholder(resource)
    if out.get("resourceType", resource_type) != resource_type:
        raise ConfigurationError(
            f"{resource_type} source {resource_id!r} has resourceType {out.get('resourceType')!r}"
        )
    out["resourceType"] = resource_type
    out["id"] = resource_id
    out.update(canonical_metadata(resource_type, resource_id))
    out.setdefault("name", camel_name(resource_id))
    return out


def build_valueset(source: JsonDict, source_name: str) -> JsonDict:
    """One ValueSet from its source (id from the source, else from the file name)."""
    valueset_id = str(source.get("id") or Path(source_name).stem)
    valueset = _finish(source, "ValueSet", valueset_id)
    expansion = valueset.get("expansion")
    if expansion is None:
        computed = _enumerated_expansion(valueset.get("compose", {}))
        if computed is not None:
            valueset["expansion"] = computed
    elif isinstance(expansion, dict):
        expansion.setdefault("timestamp", RELEASE_DATE)
        contains = expansion.get("contains")
        if isinstance(contains, list):
            expansion.setdefault("total", _count(contains))
    return valueset


def _count(contains: list[Any]) -> int:
    total = 0
    for entry in contains:
        if isinstance(entry, dict):
            total += 0 if entry.get("abstract") else 1
            total += _count(entry.get("contains", []))
    return total


def _enumerated_expansion(compose: Any) -> JsonDict | None:
    """The expansion of a compose that only enumerates concepts (no filters, no excludes)."""
    if not isinstance(compose, dict) or compose.get("exclude"):
        return None
    contains: list[JsonDict] = []
    for include in compose.get("include", []):
        if include.get("filter") or include.get("valueSet") or not include.get("concept"):
            return None
        for concept in include["concept"]:
            entry = {"system": include["system"], "code": concept["code"]}
            if include.get("version"):
                entry["version"] = include["version"]
            if concept.get("display"):
                entry["display"] = concept["display"]
            if concept.get("designation"):  # ingredient names (fhir_trial.terminology)
                entry["designation"] = concept["designation"]
            contains.append(entry)
    if not contains:
        return None
    return {"timestamp": RELEASE_DATE, "total": len(contains), "contains": contains}


def build_codesystem(source: JsonDict | None) -> JsonDict:
    """The project's CodeSystem; every criterion id is added as a concept if the source lacks it."""
    base: JsonDict = source or {
        "resourceType": "CodeSystem",
        "title": "fhir-trial codes",
        "description": "Codes defined by the fhir-trial project.",
    }
    codesystem = _finish(base, "CodeSystem", CODESYSTEM_ID)
    if codesystem["url"] != CODESYSTEM_URL:
        raise ConfigurationError(f"CodeSystem url {codesystem['url']} != {CODESYSTEM_URL}")
    codesystem.setdefault("content", "complete")
    codesystem.setdefault("caseSensitive", True)
    concepts: list[JsonDict] = list(codesystem.get("concept", []))
    present = _codes(concepts)
    for spec in CRITERIA:
        if spec.id not in present:
            concepts.append(
                {"code": spec.id, "display": spec.title, "definition": spec.protocol_text}
            )
    codesystem["concept"] = concepts
    codesystem["count"] = len(_codes(concepts))
    return codesystem


def _codes(concepts: list[Any]) -> set[str]:
    found: set[str] = set()
    for concept in concepts:
        if isinstance(concept, dict) and concept.get("code"):
            found.add(str(concept["code"]))
            found |= _codes(concept.get("concept", []))
    return found


def load_terminology_sources(terminology_dir: Path) -> tuple[JsonDict, list[JsonDict]]:
    """The CodeSystem and the ValueSets (sorted by id) built from a ``terminology/`` folder."""
    cs_path = terminology_dir / CODESYSTEM_SOURCE
    codesystem = build_codesystem(_read_json(cs_path) if cs_path.is_file() else None)
    valuesets = [
        build_valueset(_read_json(path), path.name)
        for path in sorted((terminology_dir / VALUESET_DIR).glob("*.json"))
    ]
    ids = [vs["id"] for vs in valuesets]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigurationError(f"duplicate ValueSet ids in {terminology_dir}: {duplicates}")
    merge_vsac_imports(valuesets, load_vsac_imports(terminology_dir))
    # Names last, so that the imported entries (and the ATC classes) get theirs too.
    names_path = terminology_dir / DRUG_NAMES_SOURCE
    if names_path.is_file():
        names = _read_json(names_path)
        for valueset in valuesets:
            add_drug_names(valueset, names)
    return codesystem, sorted(valuesets, key=lambda vs: str(vs["id"]))


def load_vsac_imports(terminology_dir: Path) -> list[JsonDict]:
    """The imported VSAC value sets (``terminology/vsac/<OID>.json``), by OID; none is fine."""
    return [_read_json(path) for path in sorted((terminology_dir / VSAC_DIR).glob("*.json"))]


def merge_vsac_imports(valuesets: list[JsonDict], imports: list[JsonDict]) -> None:
    """Add each imported VSAC part to the ValueSets it serves, recording its source.

    Per VSAC value set and code system, the target gets one ``compose.include`` that lists the
    codes and names the VSAC value set (FHIR: the listed codes, as members of that value set),
    with a code-verification extension giving OID, version, repository, path and commit; the
    expansion gets the codes it did not list yet; the description names every source.
    """
    by_id = {str(vs["id"]): vs for vs in valuesets}
    parts: dict[str, list[tuple[JsonDict, list[list[str]]]]] = {}
    for record in imports:
        for target, entries in record.get("targets", {}).items():
            if target not in by_id:
                raise ConfigurationError(
                    f"VSAC import {record.get('oid')} names an unknown ValueSet {target!r}"
                )
            parts.setdefault(target, []).append((record, entries))
    for target, found in parts.items():
        _merge_parts(by_id[target], found)


def _vsac_source(record: JsonDict) -> str:
    source = record.get("source", {})
    return (
        f"VSAC value set '{record.get('title')}' {record.get('oid')} version "
        f"{record.get('version')} ({record.get('url')}), expansion from the public repository "
        f"github.com/{source.get('repository')} {source.get('path')} at commit "
        f"{source.get('commit')}; placed by fhir_trial.study.vsac_import: {record.get('placement')}"
    )


def _merge_parts(valueset: JsonDict, parts: list[tuple[JsonDict, list[list[str]]]]) -> None:
    compose = valueset.setdefault("compose", {})
    includes: list[JsonDict] = compose.setdefault("include", [])
    expansion = valueset.setdefault("expansion", {"timestamp": RELEASE_DATE, "contains": []})
    contains: list[JsonDict] = expansion.setdefault("contains", [])
    listed = {(str(e.get("system")), str(e.get("code"))) for e in _flat(contains)}
    summary = []
    for record, entries in parts:
        verification = {
            "url": EXT_CODE_VERIFICATION,
            "extension": [
                {"url": "status", "valueCode": "verified"},
                {"url": "source", "valueString": _vsac_source(record)},
            ],
        }
        url = f"{record.get('url')}|{record.get('version')}"
        for system in sorted({e[0] for e in entries}):
            includes.append(
                {
                    "extension": [verification],
                    "system": system,
                    "valueSet": [url],
                    "concept": [{"code": e[1]} for e in entries if e[0] == system],
                }
            )
        for system, code, display in entries:
            if (system, code) not in listed:
                listed.add((system, code))
                contains.append({"system": system, "code": code, "display": display})
        summary.append(f"{record.get('title')} ({record.get('oid')}, {len(entries)} codes)")
    expansion["total"] = _count(contains)
    valueset["description"] = (
        str(valueset.get("description", "")).rstrip()
        + " Imported from published VSAC expansions (each compose include naming a VSAC value "
        "set lists the codes taken from it, with OID, version, repository path and commit; the "
        "protocol's carve-outs were subtracted, see terminology/vsac/): "
        + "; ".join(summary)
        + ". The other includes are the project's own verified codes."
    )


def _flat(contains: list[Any]) -> list[JsonDict]:
    out: list[JsonDict] = []
    for entry in contains:
        if isinstance(entry, dict):
            out.append(entry)
            out.extend(_flat(entry.get("contains", [])))
    return out


# ----------------------------------------------------------------------------- drug names
def add_drug_names(valueset: JsonDict, names: JsonDict) -> None:
    """Merge ``drug-names.json`` into a ValueSet's expansion as ``ingredient-name`` designations.

    An ingredient's names go on the entry of the ingredient itself (its first ingredient name, or
    its display, is the ingredient's name or one of its names); an ingredient with no such entry
    has them on an ATC class entry that contains it (the ingredient's ``atcClass`` starts with
    the entry's code), each marked with the ingredient it names (``ingredient-name-of``), so the
    screening reads "imipenem" from a J01 entry. Names already there are not repeated.
    """
    expansion = valueset.get("expansion")
    if not isinstance(expansion, dict):
        return
    entries = list(_entries(expansion.get("contains", [])))
    ingredients = [i for i in names.get("ingredients", []) if isinstance(i, dict)]
    placed: set[str] = set()
    for entry in entries:
        own = _entry_name(entry)
        for ingredient in ingredients:
            spelled = {str(n.get("value", "")).lower() for n in ingredient.get("names", [])}
            if own and (own == str(ingredient.get("ingredient", "")).lower() or own in spelled):
                _designate(entry, ingredient, marked=False)
                placed.add(str(ingredient.get("ingredient")))
    for entry in entries:
        if normalise_system(entry.get("system")) != ATC or _entry_name(entry):
            continue
        code = str(entry.get("code", ""))
        for ingredient in ingredients:
            cls = str(ingredient.get("atcClass") or "")
            if code and cls.startswith(code) and ingredient.get("ingredient") not in placed:
                _designate(entry, ingredient, marked=True)


def _entries(contains: Any) -> Any:
    for entry in contains if isinstance(contains, list) else []:
        if isinstance(entry, dict):
            yield entry
            yield from _entries(entry.get("contains"))


def _entry_name(entry: JsonDict) -> str:
    """The ingredient an entry stands for: its first ingredient name, else its display."""
    for designation in entry.get("designation", []) or []:
        use = designation.get("use") if isinstance(designation, dict) else None
        if (
            isinstance(use, dict)
            and use.get("code") == INGREDIENT_NAME_USE
            and not designation.get("extension")  # a class member's name, not the entry's own
        ):
            return str(designation.get("value", "")).lower()
    if normalise_system(entry.get("system")) == ATC:
        return ""  # an ATC entry's display is a class or a drug name with notes, never matched
    return str(entry.get("display") or "").lower()


def _designate(entry: JsonDict, ingredient: JsonDict, *, marked: bool) -> None:
    designations: list[Any] = entry.setdefault("designation", [])
    # Names already there: the entry's own (unmarked), or this ingredient's on a class entry.
    present = {
        str(d.get("value", "")).lower()
        for d in designations
        if isinstance(d, dict)
        and (
            not d.get("extension")
            if not marked
            else any(
                e.get("valueString") == ingredient.get("ingredient")
                for e in d.get("extension") or []
            )
        )
    }
    for name in ingredient.get("names", []):
        value = str(name.get("value", ""))
        if not value or value.lower() in present:
            continue
        designation: JsonDict = {
            "language": str(name.get("language", "en")),
            "use": {
                "system": CODESYSTEM_URL,
                "code": INGREDIENT_NAME_USE,
                "display": "Ingredient name",
            },
            "value": value,
        }
        if marked:
            designation["extension"] = [
                {"url": EXT_INGREDIENT_NAME_OF, "valueString": str(ingredient["ingredient"])}
            ]
        designations.append(designation)
        present.add(value.lower())
