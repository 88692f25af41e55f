"""Translate ``cql/*.cql`` to ELM with the reference translator, and read what the ELM needs.

:func:`translate` runs ``node tools/cql/translate.mjs`` (the pinned ``@cqframework/cql``), which
writes ``cql/build/<Library>.json`` for every CQL library and fails on any translation error. The
Library resources (``fhir_trial.study.library``, one per CQL library) then carry each library's CQL
and ELM as base64 attachments; the functions below read from an ELM library what its Library
declares: :func:`data_requirements` (the FHIR data it retrieves: resource type and ValueSet, as
``Library.dataRequirement``), :func:`valuesets_used`, :func:`elm_includes` and
:func:`parameter_definitions`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_trial.config import PROJECT_ROOT
from fhir_trial.errors import ConfigurationError, FhirTrialError

CQL_DIR = PROJECT_ROOT / "cql"
BUILD_DIR = CQL_DIR / "build"
TOOLS_DIR = PROJECT_ROOT / "tools" / "cql"
TRANSLATE_TIMEOUT_S = 300
FHIR_TYPE_PREFIX = "{http://hl7.org/fhir}"


class CqlTranslationError(FhirTrialError):
    """The CQL did not translate: ``errors`` holds the translator's messages (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass(frozen=True)
class Translation:
    """What one translator run said: the libraries translated, the warnings printed, and the ELM
    files removed (of libraries no CQL file declares any more)."""

    translated: list[str]
    warnings: list[str]
    removed: list[str] = field(default_factory=list)


def translate(
    project_root: Path = PROJECT_ROOT, out_dir: Path | None = None, node: str | None = None
) -> Translation:
    """Translate every ``cql/*.cql`` of ``project_root`` to ELM JSON in ``out_dir`` (default cql/build).

    Raises :class:`CqlTranslationError` on any translation error and :class:`ConfigurationError`
    when Node or the npm packages are missing.
    """
    tools = project_root / "tools" / "cql"
    if not (tools / "node_modules" / "@cqframework" / "cql").is_dir():
        raise ConfigurationError(f"the CQL toolchain is not installed: run `npm ci` in {tools}")
    executable = node or shutil.which("node")
    if not executable:
        raise ConfigurationError("node is not on PATH (needed to translate CQL)")
    command = [executable, str(tools / "translate.mjs"), "--project", str(project_root)]
    if out_dir is not None:
        command += ["--out", str(out_dir)]
    try:
        done = subprocess.run(
            command,
            cwd=tools,
            capture_output=True,
            text=True,
            timeout=TRANSLATE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"cannot run the CQL translator: {exc}") from exc
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    warnings = [line[len("warning: ") :] for line in lines if line.startswith("warning:")]
    translated = [line for line in lines if line.startswith("translated ")]
    removed = [line for line in lines if line.startswith("removed ")]
    if done.returncode != 0 or errors:
        first = errors[0] if errors else f"translator exit code {done.returncode}"
        raise CqlTranslationError(
            f"CQL translation failed: {first.removeprefix('error: ')}", errors
        )
    return Translation(translated, warnings, removed)


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)


def _valueset_urls(
    elm: Mapping[str, Any], included: Mapping[str, Mapping[str, Any]]
) -> dict[tuple[str, str], str]:
    """(include alias or "", ValueSet name) -> canonical URL, for this library and those it includes."""
    urls: dict[tuple[str, str], str] = {}
    for alias, library in [("", elm), *included.items()]:
        for vs in library.get("library", {}).get("valueSets", {}).get("def", []):
            if "name" in vs and "id" in vs:
                urls[(alias, vs["name"])] = vs["id"]
    return urls


def _valueset_ref_url(node: Mapping[str, Any], urls: Mapping[tuple[str, str], str]) -> str | None:
    if node.get("type") != "ValueSetRef":
        return None
    return urls.get((str(node.get("libraryName") or ""), str(node.get("name", ""))))


def data_requirements(
    elm: dict[str, Any], included: Mapping[str, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``Library.dataRequirement`` entries for every Retrieve in an ELM library (sorted, unique).

    A retrieve filtered by a ValueSet gives a ``codeFilter`` on its code path with that ValueSet's
    canonical URL; an unfiltered one gives the resource type alone. ``included`` maps the aliases
    of included libraries to their ELM, so that a ValueSet declared there (``Common."sle"``)
    resolves to its URL.
    """
    urls = _valueset_urls(elm, included or {})
    found: set[tuple[str, str, str]] = set()
    for node in _nodes(elm.get("library", {}).get("statements", {})):
        if node.get("type") != "Retrieve" or not str(node.get("dataType", "")).startswith(
            FHIR_TYPE_PREFIX
        ):
            continue
        rtype = node["dataType"][len(FHIR_TYPE_PREFIX) :]
        url = _valueset_ref_url(node.get("codes") or {}, urls)
        found.add((rtype, str(node.get("codeProperty") or "code") if url else "", url or ""))
    requirements: list[dict[str, Any]] = []
    for rtype, path, url in sorted(found):
        entry: dict[str, Any] = {"type": rtype}
        if url:
            entry["codeFilter"] = [{"path": path, "valueSet": url}]
        requirements.append(entry)
    return requirements


_MEMBERSHIP = frozenset({"InValueSet", "AnyInValueSet"})


def valuesets_used(
    elm: dict[str, Any], included: Mapping[str, Mapping[str, Any]] | None = None
) -> list[str]:
    """Canonical URLs of the ValueSets an ELM library declares or refers to (sorted, unique)."""
    urls = _valueset_urls(elm, included or {})
    used = {url for (alias, _), url in urls.items() if alias == ""}
    for node in _nodes(elm.get("library", {}).get("statements", {})):
        url = _valueset_ref_url(node, urls)
        # `code in "vs"` (InValueSet, AnyInValueSet) names its ValueSet without a type
        member_of = node.get("valueset") if node.get("type") in _MEMBERSHIP else None
        if isinstance(member_of, Mapping):
            url = _valueset_ref_url({"type": "ValueSetRef", **member_of}, urls)
        if url:
            used.add(url)
    return sorted(used)


def elm_includes(elm: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(library name, version) of every library an ELM library includes, in declaration order."""
    return [
        (str(d["path"]), d.get("version"))
        for d in elm.get("library", {}).get("includes", {}).get("def", [])
        if "path" in d
    ]


def elm_include_aliases(elm: Mapping[str, Any]) -> dict[str, str]:
    """Include alias (``Common``) -> library name (``NCT06010472Common``)."""
    return {
        str(d["localIdentifier"]): str(d["path"])
        for d in elm.get("library", {}).get("includes", {}).get("def", [])
        if "path" in d and "localIdentifier" in d
    }


_ELM_TYPES = "{urn:hl7-org:elm-types:r1}"
_FHIR_PARAMETER_TYPES = {
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "String": "string",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
    "Quantity": "Quantity",
}


def parameter_definitions(elm: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``Library.parameter`` (use ``in``) for the parameters an ELM library declares, in order.

    A ``List<T>`` parameter is ``max: "*"`` of T's FHIR type; a type with no FHIR counterpart is
    left out (none of the project's parameters has one).
    """
    out: list[dict[str, Any]] = []
    for param in elm.get("library", {}).get("parameters", {}).get("def", []):
        spec = param.get("parameterTypeSpecifier") or {}
        many = spec.get("type") == "ListTypeSpecifier"
        named = (spec.get("elementType") or {}) if many else spec
        fhir_type = _FHIR_PARAMETER_TYPES.get(str(named.get("name", "")).replace(_ELM_TYPES, ""))
        if fhir_type is None or "name" not in param:
            continue
        out.append(
            {
                "name": param["name"],
                "use": "in",
                "min": 0,
                "max": "*" if many else "1",
                "type": fhir_type,
            }
        )
    return out


def main_elm(build_dir: Path = BUILD_DIR, name: str = "NCT06010472Eligibility") -> dict[str, Any]:
    """The translated ELM of the eligibility library."""
    path = build_dir / f"{name}.json"
    try:
        elm: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"no usable ELM at {path}: run `fhir-trial cql build` ({exc})"
        ) from exc
    return elm
