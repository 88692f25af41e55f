"""The project's CQL libraries as files: which file declares which library, its version, its includes.

Every ``cql/*.cql`` declares one library (``library NCT06010472Labs version '0.1.0'``) and may include
others (``include NCT06010472Common version '0.1.0' called Common``); its ELM, once translated, is
``cql/build/<library name>.json``. The Library resources (``fhir_trial.study.library``) are built
from this list, one per CQL library; :func:`resource_id` gives their id (the library's name).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_trial.errors import ConfigurationError

_IDENTIFIER = r'(?:"([A-Za-z0-9_]+)"|([A-Za-z_][A-Za-z0-9_]*))'
_VERSION = r"(?:\s+version\s+'([^']+)')?"
_LIBRARY = re.compile(rf"^\s*library\s+{_IDENTIFIER}{_VERSION}", re.MULTILINE)
_INCLUDE = re.compile(
    rf"^\s*include\s+{_IDENTIFIER}{_VERSION}(?:\s+called\s+{_IDENTIFIER})?", re.MULTILINE
)
# Comments (block and line), skipping string literals: 'https://...' is no comment.
_COMMENTS = re.compile(r"('(?:[^'\\]|\\.)*')|/\*.*?\*/|//[^\n]*", re.DOTALL)
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class Include:
    """One ``include`` declaration: the library's name, the version asked for, its local alias."""

    name: str
    version: str | None
    alias: str


@dataclass(frozen=True)
class CqlLibrary:
    """One CQL source file and what it declares."""

    name: str
    version: str | None
    source: Path
    includes: tuple[Include, ...]

    @property
    def elm_path(self) -> Path:
        """Where the translator writes this library's ELM."""
        return self.source.parent / "build" / f"{self.name}.json"

    def elm(self) -> dict[str, Any] | None:
        """The translated ELM, or None before ``fhir-trial cql build`` (or when unreadable)."""
        try:
            elm: dict[str, Any] = json.loads(self.elm_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return elm

    def text(self) -> str:
        """The CQL source."""
        return self.source.read_text(encoding="utf-8")


def _name(match: re.Match[str], group: int) -> str:
    return match.group(group) or match.group(group + 1)


def parse_library(source: Path) -> CqlLibrary:
    """Name, version and includes of one CQL file (declarations outside comments)."""
    text = _COMMENTS.sub(lambda m: m.group(1) or "", source.read_text(encoding="utf-8"))
    declared = _LIBRARY.search(text)
    if declared is None:
        raise ConfigurationError(f"{source} has no library declaration")
    includes = tuple(
        Include(_name(m, 1), m.group(3), _name(m, 4) if (m.group(4) or m.group(5)) else _name(m, 1))
        for m in _INCLUDE.finditer(text)
    )
    return CqlLibrary(_name(declared, 1), declared.group(3), source, includes)


def cql_libraries(cql_dir: Path) -> list[CqlLibrary]:
    """Every library under ``cql_dir`` (sorted by file name); two files declaring one name is an error."""
    found = [parse_library(path) for path in sorted(cql_dir.glob("*.cql"))]
    names = [lib.name for lib in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"CQL libraries declared by more than one file: {twice}")
    return found


def resource_id(library_name: str) -> str:
    """The Library resource id of a CQL library: its name (``NCT06010472DiseaseActivity``).

    Using CQL with FHIR (requirement 4.2) wants ``Library.url`` to be ``<base>/Library/<CQL library
    name>``, and every project url is ``<base>/<Type>/<id>``; so the name must be a FHIR id (no
    underscore, which the same requirement forbids in library names).
    """
    if not _FHIR_ID.fullmatch(library_name):
        raise ConfigurationError(
            f"CQL library name {library_name!r} is not usable as a Library id (letters, digits, "
            "'-' or '.', at most 64; no underscore)"
        )
    return library_name
