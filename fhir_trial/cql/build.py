"""Translate ``cql/*.cql`` to ELM with the reference translator, and read what the ELM needs.

:func:`translate` runs ``node tools/cql/translate.mjs`` (the pinned ``@cqframework/cql``), which
writes ``cql/build/<Library>.json`` and fails on any translation error. The Library resource
(``fhir_trial.study.library``) then carries the CQL and the ELM as base64 attachments;
:func:`data_requirements` lists the FHIR data the ELM retrieves (resource type and ValueSet), in the
shape of ``Library.dataRequirement``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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
    """What one translator run said: the libraries translated and the warnings printed."""

    translated: list[str]
    warnings: list[str]


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
    if done.returncode != 0 or errors:
        first = errors[0] if errors else f"translator exit code {done.returncode}"
        raise CqlTranslationError(
            f"CQL translation failed: {first.removeprefix('error: ')}", errors
        )
    return Translation(translated, warnings)


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)


def data_requirements(elm: dict[str, Any]) -> list[dict[str, Any]]:
    """``Library.dataRequirement`` entries for every Retrieve in an ELM library (sorted, unique).

    A retrieve filtered by a ValueSet gives a ``codeFilter`` on its code path with that ValueSet's
    canonical URL; an unfiltered one gives the resource type alone.
    """
    valuesets = {
        vs["name"]: vs["id"]
        for vs in elm.get("library", {}).get("valueSets", {}).get("def", [])
        if "name" in vs and "id" in vs
    }
    found: set[tuple[str, str, str]] = set()
    for node in _nodes(elm.get("library", {}).get("statements", {})):
        if node.get("type") != "Retrieve" or not str(node.get("dataType", "")).startswith(
            FHIR_TYPE_PREFIX
        ):
            continue
        rtype = node["dataType"][len(FHIR_TYPE_PREFIX) :]
        codes = node.get("codes") or {}
        url = valuesets.get(codes.get("name", "")) if codes.get("type") == "ValueSetRef" else None
        found.add((rtype, str(node.get("codeProperty") or "code") if url else "", url or ""))
    requirements: list[dict[str, Any]] = []
    for rtype, path, url in sorted(found):
        entry: dict[str, Any] = {"type": rtype}
        if url:
            entry["codeFilter"] = [{"path": path, "valueSet": url}]
        requirements.append(entry)
    return requirements


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
