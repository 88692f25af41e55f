"""Validate FHIR R4 resources twice, and check that a set of them hangs together.

1. The fhir.resources R4B models (``fhir.resources.R4B``; R4 and R4B share the wire format of the
   types this project uses; the default R5 classes are never used for R4 data).
2. The official R4 JSON Schema (``fhir.schema.json``, draft-06) through jsonschema. The schema is
   big: it is read and compiled once per file and resource type, then cached. Nested resources
   (contained, Bundle entries) are validated with their own type's schema, with their paths
   (``Bundle.entry[3].resource.status``). When the file is missing, one warning says so and the
   model validation still runs.
3. Within a set: references and canonicals of the project resolve (see :func:`reference_issues`:
   ``#id`` to contained resources, ``urn:uuid:`` and ``Type/id`` by a Bundle's ``fullUrl``s,
   references to other servers and conditional references left alone), and extensions under the
   project's canonical base are defined by its StructureDefinitions.

Problems are :class:`Issue` objects that render as OperationOutcome issues with FHIR path
expressions such as ``ResearchStudy.arm[0].name``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
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
    except KeyError as exc:  # fhir_core's lookup of a nested resource's unknown resourceType
        message = f"a nested resource has an unknown resourceType ({exc}) [fhir.resources R4B]"
        return [Issue("error", "invalid", _shorten(message), resource_type)]
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
    """Issues found by the official R4 JSON Schema (none when the schema is unavailable).

    Nested resources (``contained``, Bundle entries, Parameters resources) are validated one by
    one with their own type's schema: the schema's ``ResourceList`` is a ``oneOf`` over every
    resource type, which made a 400 kB Synthea Bundle take 10 s instead of 0.3 s.
    """
    if schema_unavailable(schema_path) is not None:
        return []
    issues: list[Issue] = []
    for part, prefix in split_nested(resource, str(resource.get("resourceType", ""))):
        issues.extend(_schema_issues_of(part, schema_path, prefix))
    return sorted(issues, key=lambda i: (i.expression or "", i.message))


def _is_resource(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("resourceType"), str)


def split_nested(
    resource: Mapping[str, Any], prefix: str
) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The resource without its nested resources, then each nested resource, with FHIR paths.

    Only well-formed nesting is split (a list of JSON objects with a ``resourceType``); anything
    else stays in place so that the schema reports it where it is.
    """
    shell = dict(resource)
    nested: list[tuple[Mapping[str, Any], str]] = []
    contained = resource.get("contained")
    if isinstance(contained, list) and contained and all(_is_resource(c) for c in contained):
        del shell["contained"]
        nested += [(c, f"{prefix}.contained[{i}]") for i, c in enumerate(contained)]
    holder = {"Bundle": "entry", "Parameters": "parameter"}.get(str(resource.get("resourceType")))
    items = resource.get(holder) if holder else None
    if holder and isinstance(items, list):
        stripped = []
        for index, item in enumerate(items):
            if isinstance(item, dict) and _is_resource(item.get("resource")):
                nested.append((item["resource"], f"{prefix}.{holder}[{index}].resource"))
                item = {key: value for key, value in item.items() if key != "resource"}
            stripped.append(item)
        shell[holder] = stripped
    yield shell, prefix
    for inner, path in nested:
        yield from split_nested(inner, path)


def _schema_defect(error: Any) -> bool:
    """A known defect of the published R4 JSON Schema: its FHIRVersion enum stops at 4.0.0, so
    ``fhirVersion: "4.0.1"`` (R4 itself, e.g. in a CapabilityStatement) would be an error."""
    return error.validator == "enum" and error.instance == "4.0.1"


def _schema_issues_of(resource: Mapping[str, Any], schema_path: Path, prefix: str) -> list[Issue]:
    from jsonschema.exceptions import best_match

    resource_type = str(resource.get("resourceType", ""))
    validator = _type_validator(str(schema_path), resource_type)
    if validator is None:
        where = "resourceType" if "." not in prefix else f"{prefix}.resourceType"
        return [
            Issue(
                "error",
                "invalid",
                f"{resource_type!r} is not an R4 resource type [R4 JSON Schema]",
                where,
            )
        ]
    issues = []
    for error in validator.iter_errors(dict(resource)):
        detail = best_match(error.context) if error.context else error
        if _schema_defect(detail):
            continue
        issues.append(
            Issue(
                "error",
                "structure",
                _shorten(f"{detail.message} [R4 JSON Schema]"),
                fhir_path(prefix or resource_type, detail.absolute_path),
            )
        )
    return issues


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


# Bundle types whose relative references may name resources already on the receiving server.
_SERVER_SIDE_BUNDLES = frozenset(
    {"transaction", "batch", "transaction-response", "batch-response", "history"}
)


@dataclass(frozen=True)
class _Member:
    """A resource to check references in: a file's resource or a Bundle entry's resource."""

    resource: Mapping[str, Any]
    path: str  # its FHIR path, e.g. ``Bundle.entry[3].resource``
    full_urls: frozenset[str] = frozenset()  # of the enclosing Bundle's entries
    full_url: str = ""  # of its own Bundle entry
    server_side: bool = False  # relative references may point at a server's resources


def _members(resource: Mapping[str, Any], path: str) -> Iterator[_Member]:
    """The resource, or for a Bundle (nested too) each entry's resource with its Bundle scope."""
    if resource.get("resourceType") != "Bundle":
        yield _Member(resource, path)
        return
    entries = [e for e in resource.get("entry", []) or [] if isinstance(e, dict)]
    full_urls = frozenset(str(e["fullUrl"]) for e in entries if isinstance(e.get("fullUrl"), str))
    server_side = resource.get("type") in _SERVER_SIDE_BUNDLES
    for index, entry in enumerate(resource.get("entry", []) or []):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(inner, dict):
            continue
        where = f"{path}.entry[{index}].resource"
        if inner.get("resourceType") == "Bundle":
            yield from _members(inner, where)
            continue
        full_url = str(entry.get("fullUrl") or "")
        # An entry that lives on another server: its relative references are that server's.
        elsewhere = full_url.startswith(("http://", "https://")) and not full_url.startswith(BASE)
        yield _Member(inner, where, full_urls, full_url, server_side or elsewhere)


@lru_cache(maxsize=1)
def project_extension_urls() -> frozenset[str]:
    """Canonical URLs of the project's own StructureDefinitions (``resources/``), if shipped."""
    from fhir_trial.config import DEFAULT_RESOURCES_DIR

    urls = set()
    for path in sorted(Path(DEFAULT_RESOURCES_DIR).glob("StructureDefinition-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            urls.add(data["url"])
    return frozenset(urls)


@dataclass(frozen=True)
class _Pool:
    keys: frozenset[str]  # Type/id of every resource known
    urls: frozenset[str]  # canonical URLs of every resource known


def reference_issues(
    resources: Sequence[tuple[str, Mapping[str, Any]]],
    context: Iterable[Mapping[str, Any]] = (),
    *,
    exported: Collection[str] = (),
) -> list[Issue]:
    """Unresolved references, project canonicals and project extensions in ``(source, resource)``.

    - ``#id`` must name a resource contained in the same resource (``#`` is the container);
    - ``urn:uuid:``/``urn:oid:`` inside a Bundle must be the ``fullUrl`` of one of its entries;
    - ``Type/id`` (or an absolute URL under the project's base) must be in the set, in
      ``context`` or in the same Bundle (by ``fullUrl`` too), except in transaction/batch Bundles
      and in entries from another server, where the target may already be on the server;
    - absolute URLs of other servers, ``urn:`` outside a Bundle and conditional references
      (``Type?identifier=...``) are not checked;
    - a canonical under the project's base (of a type in :data:`CANONICAL_TYPES`) must be the
      ``url`` of some resource, and an extension under the project's base must be defined by one
      of its StructureDefinitions (``resources/StructureDefinition-*.json``).

    ``exported`` names the sources that are a server's export (Bulk Data NDJSON): a ``Type/id``
    they reference and the set lacks is a warning there, as an export may leave types out.
    """
    pool_resources = [*(resource for _source, resource in resources), *context]
    members = [m for r in pool_resources for m in _members(r, str(r.get("resourceType")))]
    pool = _Pool(
        frozenset(_key(m.resource) for m in members),
        frozenset(str(m.resource["url"]) for m in members if isinstance(m.resource.get("url"), str))
        | project_extension_urls(),
    )
    issues: list[Issue] = []
    for source, resource in resources:
        for member in _members(resource, str(resource.get("resourceType", "Resource"))):
            issues.extend(_member_issues(member, pool, source, source in exported))
    return issues


def _member_issues(
    member: _Member, pool: _Pool, source: str, exported: bool = False
) -> Iterator[Issue]:
    contained = {
        f"#{c.get('id')}" for c in member.resource.get("contained", []) or [] if isinstance(c, dict)
    }
    for path, key, text in _walk(member.resource, member.path):
        if key == "reference":
            problem = _unresolved_reference(text, member, pool, contained)
        elif key == "url" and _EXTENSION_URL.search(path):
            problem = _unknown_extension(text, pool)
        else:
            problem = _unresolved_canonical(text, path == f"{member.path}.url", pool)
        if problem and exported and key == "reference" and not text.startswith(("#", "urn:")):
            problem += " (the export may have left its type out: check it on the server)"
            yield Issue("warning", "not-found", problem, path, source)
        elif problem:
            yield Issue("error", "not-found", problem, path, source)


_EXTENSION_URL = re.compile(r"\.(?:modifierE|e)xtension\[\d+\]\.url$")


def _unresolved_reference(
    text: str, member: _Member, pool: _Pool, contained: set[str]
) -> str | None:
    if text.startswith("#"):
        return None if text in contained or text == "#" else f"contained {text} not found"
    if text.startswith("urn:"):
        if member.full_urls and text not in member.full_urls:
            return f"reference {text} is not the fullUrl of any entry of the Bundle"
        return None
    if text in member.full_urls:
        return None
    target = text[len(BASE) + 1 :] if text.startswith(f"{BASE}/") else text
    match = _RELATIVE_REFERENCE.match(target)
    if not match or f"{match.group(1)}/{match.group(2)}" in pool.keys:
        return None  # another server, a conditional reference, or found
    if target is text and member.full_url:
        # Relative to the entry's own base (R4 Bundle rules: its fullUrl without Type/id).
        base = member.full_url.rstrip("/").rsplit("/", 2)[0]
        if f"{base}/{text}" in member.full_urls:
            return None
    if member.server_side:
        return None
    return f"reference {text} does not resolve inside the set"


def _unknown_extension(url: str, pool: _Pool) -> str | None:
    if not url.startswith(f"{BASE}/") or url.split("|", 1)[0] in pool.urls:
        return None
    return (
        f"extension {url} is under the project's canonical base but no StructureDefinition "
        "of the project defines it"
    )


def _unresolved_canonical(text: str, own_url: bool, pool: _Pool) -> str | None:
    if own_url or not text.startswith(f"{BASE}/"):
        return None
    target = text.split("|", 1)[0]
    resource_type = target[len(BASE) + 1 :].split("/", 1)[0]
    if resource_type in CANONICAL_TYPES and target not in pool.urls:
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
    exported: Collection[str] = (),
) -> list[Issue]:
    """Validate ``(source, resource)`` pairs one by one, then their references as a set.

    ``exported``: sources from a server's export (see :func:`reference_issues`).
    """
    path = schema_path_from(schema_path)
    unavailable = schema_unavailable(path)
    issues: list[Issue] = [unavailable] if unavailable else []
    for source, resource in resources:
        found = model_issues(resource) + schema_issues(resource, path)
        issues.extend(issue.with_source(source) for issue in found)
    if check_references:
        issues.extend(reference_issues(resources, context, exported=exported))
    return issues
