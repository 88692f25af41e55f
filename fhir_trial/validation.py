"""Validate FHIR R4 resources twice, and check that a set of them hangs together.

1. The fhir.resources R4B models (``fhir.resources.R4B``; R4 and R4B share the wire format of the
   types this project uses; the default R5 classes are never used for R4 data).
2. The official R4 JSON Schema (``fhir.schema.json``, draft-06) through jsonschema. The schema is
   big: it is read and compiled once per file and resource type, then cached. When the file is
   missing, one warning says so and the model validation still runs.
3. Within a set: every relative reference (``Type/id``) and every canonical of the project
   (ValueSet, CodeSystem, Library, PlanDefinition, ... under the canonical base) resolves to a
   resource of the set.

Problems are :class:`Issue` objects that render as OperationOutcome issues with FHIR path
expressions such as ``ResearchStudy.arm[0].name``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from fhir_trial.canonical import BASE
from fhir_trial.config import PROJECT_ROOT

Severity = Literal["fatal", "error", "warning", "information"]
JsonDict = dict[str, Any]

SCHEMA_ENV = "FHIR_TRIAL_FHIR_SCHEMA"
DEFAULT_SCHEMA_PATH = PROJECT_ROOT.parent / "shared" / "schemas" / "fhir.schema.json"

# Resource types whose canonical URLs under the project's base must resolve inside the set.
CANONICAL_TYPES = frozenset(
    {
        "ActivityDefinition",
        "CodeSystem",
        "ConceptMap",
        "Library",
        "Measure",
        "PlanDefinition",
        "Questionnaire",
        "StructureDefinition",
        "ValueSet",
    }
)
_RELATIVE_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[^/]+)?$")
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class Issue:
    """One problem found, in OperationOutcome terms."""

    severity: Severity
    code: str  # OperationOutcome issue type: structure, required, value, invalid, not-found, ...
    message: str
    expression: str | None = None
    source: str | None = None  # the file (or Type/id) the issue belongs to

    @property
    def is_error(self) -> bool:
        """Whether this issue makes the validation fail."""
        return self.severity in ("fatal", "error")

    def to_fhir(self) -> JsonDict:
        """The OperationOutcome.issue element."""
        issue: JsonDict = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": f"{self.source}: {self.message}" if self.source else self.message,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue

    def line(self) -> str:
        """A readable line: ``severity path: message (source)``."""
        where = f" {self.expression}" if self.expression else ""
        suffix = f" ({self.source})" if self.source else ""
        return f"{self.severity}{where}: {self.message}{suffix}"

    def with_source(self, source: str) -> Issue:
        """The same issue attributed to a file or resource."""
        return Issue(self.severity, self.code, self.message, self.expression, source)


def operation_outcome(issues: Sequence[Issue], *, checked: int = 0) -> JsonDict:
    """An OperationOutcome for the issues (an informational issue when there are none)."""
    entries = [issue.to_fhir() for issue in issues]
    if not entries:
        entries = [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"{checked} resource(s) validated without issues",
            }
        ]
    return {"resourceType": "OperationOutcome", "issue": entries}


def _shorten(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def fhir_path(resource_type: str, parts: Iterable[Any]) -> str:
    """A FHIR path expression from a location: ``("arm", 0, "name")`` -> ``Type.arm[0].name``."""
    path = resource_type or "Resource"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            if part == "resource_type":
                part = "resourceType"
            elif part.endswith("__ext"):
                part = "_" + part[: -len("__ext")]
            path += f".{part}"
    return path


# --- 1. fhir.resources R4B models ---------------------------------------------------------------


def model_issues(resource: Mapping[str, Any]) -> list[Issue]:
    """Issues found by the fhir.resources R4B model of the resource's type."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    resource_type = str(resource.get("resourceType", ""))
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return [
            Issue("error", "invalid", f"unknown resourceType {resource_type!r}", "resourceType")
        ]
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        return [
            Issue(
                "error",
                _model_issue_code(str(error.get("type", ""))),
                _shorten(f"{error.get('msg', 'invalid')} [fhir.resources R4B]"),
                fhir_path(resource_type, error.get("loc", ())),
            )
            for error in exc.errors()
        ]
    except (TypeError, ValueError) as exc:
        return [Issue("error", "invalid", _shorten(f"{exc} [fhir.resources R4B]"), resource_type)]
    return []


def _model_issue_code(error_type: str) -> str:
    if "missing" in error_type:
        return "required"
    if "extra" in error_type:
        return "structure"
    return "value"


# --- 2. the official R4 JSON Schema -------------------------------------------------------------


def schema_path_from(setting: str | os.PathLike[str] | None = None) -> Path:
    """The schema file: the argument, else ``FHIR_TRIAL_FHIR_SCHEMA``, else the shared default."""
    chosen = setting or os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA_PATH
    return Path(chosen)


@lru_cache(maxsize=2)
def _schema_definitions(path: str) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as handle:
        schema = json.load(handle)
    definitions = schema.get("definitions") if isinstance(schema, dict) else None
    if not isinstance(definitions, dict):
        raise ValueError("no 'definitions' object (not the FHIR JSON Schema?)")
    return definitions


@lru_cache(maxsize=256)
def _type_validator(path: str, resource_type: str) -> Any:
    """A compiled draft-06 validator for one resource type (cached; the schema is big)."""
    from jsonschema import Draft6Validator

    definitions = _schema_definitions(path)
    if resource_type not in definitions:
        return None
    return Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": definitions})


def schema_unavailable(path: Path) -> Issue | None:
    """A warning when the schema cannot be used (missing or unreadable), else None."""
    if not path.is_file():
        return Issue(
            "warning",
            "not-found",
            f"FHIR R4 JSON Schema not found at {path}: only the fhir.resources model validation "
            "ran (set --schema or FHIR_TRIAL_FHIR_SCHEMA)",
        )
    try:
        _schema_definitions(str(path))
    except (OSError, ValueError) as exc:
        return Issue("warning", "exception", f"cannot use FHIR JSON Schema {path}: {exc}")
    return None


def schema_issues(resource: Mapping[str, Any], schema_path: Path) -> list[Issue]:
    """Issues found by the official R4 JSON Schema (none when the schema is unavailable)."""
    from jsonschema.exceptions import best_match

    if schema_unavailable(schema_path) is not None:
        return []
    resource_type = str(resource.get("resourceType", ""))
    validator = _type_validator(str(schema_path), resource_type)
    if validator is None:
        return [
            Issue(
                "error",
                "invalid",
                f"{resource_type!r} is not an R4 resource type [R4 JSON Schema]",
                "resourceType",
            )
        ]
    issues = []
    for error in validator.iter_errors(dict(resource)):
        detail = best_match(error.context) if error.context else error
        issues.append(
            Issue(
                "error",
                "structure",
                _shorten(f"{detail.message} [R4 JSON Schema]"),
                fhir_path(resource_type, detail.absolute_path),
            )
        )
    return sorted(issues, key=lambda i: (i.expression or "", i.message))


# --- 3. references and canonicals inside a set --------------------------------------------------


def _walk(value: Any, path: str) -> Iterator[tuple[str, str, str]]:
    """(path, key, string) for every string value under a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}"
            if isinstance(item, str):
                yield child, key, item
            else:
                yield from _walk(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield f"{path}[{index}]", "", item
            else:
                yield from _walk(item, f"{path}[{index}]")


def _key(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _members(resource: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The resource and, for a Bundle, its entries' resources."""
    yield resource
    if resource.get("resourceType") == "Bundle":
        for entry in resource.get("entry", []) or []:
            inner = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(inner, dict):
                yield inner


def reference_issues(
    resources: Sequence[tuple[str, Mapping[str, Any]]],
    context: Iterable[Mapping[str, Any]] = (),
) -> list[Issue]:
    """Unresolved references and project canonicals in ``(source, resource)`` pairs.

    A reference resolves when ``Type/id`` is in the set, in ``context`` or in the same Bundle; a
    canonical under the project's base (of a type in :data:`CANONICAL_TYPES`) resolves when some
    resource has that ``url``. References to other servers and ``urn:`` ids are not checked.
    """
    pool = [*(resource for _source, resource in resources), *context]
    keys = {_key(member) for resource in pool for member in _members(resource)}
    urls = {str(m["url"]) for r in pool for m in _members(r) if isinstance(m.get("url"), str)}
    issues: list[Issue] = []
    for source, resource in resources:
        contained = {f"#{c.get('id')}" for c in resource.get("contained", []) or []}
        root = str(resource.get("resourceType", "Resource"))
        for path, key, text in _walk(resource, root):
            problem = _unresolved(key, text, path == f"{root}.url", keys, urls, contained)
            if problem:
                issues.append(Issue("error", "not-found", problem, path, source))
    return issues


def _unresolved(
    key: str, text: str, own_url: bool, keys: set[str], urls: set[str], contained: set[str]
) -> str | None:
    if key == "reference":
        if text.startswith("#"):
            return None if text in contained or text == "#" else f"contained {text} not found"
        target = text[len(BASE) + 1 :] if text.startswith(f"{BASE}/") else text
        match = _RELATIVE_REFERENCE.match(target)
        if match and f"{match.group(1)}/{match.group(2)}" not in keys:
            return f"reference {text} does not resolve inside the set"
        return None
    if own_url or not text.startswith(f"{BASE}/"):
        return None
    target = text.split("|", 1)[0]
    resource_type = target[len(BASE) + 1 :].split("/", 1)[0]
    if resource_type in CANONICAL_TYPES and target not in urls:
        return f"canonical {text} does not resolve inside the set"
    return None


# --- all together ----------------------------------------------------------------------------------


def validate_resource(
    resource: Mapping[str, Any], *, schema_path: str | os.PathLike[str] | None = None
) -> list[Issue]:
    """Model and JSON Schema issues of one resource (plus a warning if the schema is missing)."""
    path = schema_path_from(schema_path)
    unavailable = schema_unavailable(path)
    issues = model_issues(resource) + schema_issues(resource, path)
    return [unavailable, *issues] if unavailable else issues


def validate_set(
    resources: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    schema_path: str | os.PathLike[str] | None = None,
    context: Iterable[Mapping[str, Any]] = (),
    check_references: bool = True,
) -> list[Issue]:
    """Validate ``(source, resource)`` pairs one by one, then their references as a set."""
    path = schema_path_from(schema_path)
    unavailable = schema_unavailable(path)
    issues: list[Issue] = [unavailable] if unavailable else []
    for source, resource in resources:
        found = model_issues(resource) + schema_issues(resource, path)
        issues.extend(issue.with_source(source) for issue in found)
    if check_references:
        issues.extend(reference_issues(resources, context))
    return issues
