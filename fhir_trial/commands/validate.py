"""``fhir-trial validate [FILE...]``: validate FHIR R4 resources (default: all of ``resources/``).

Each file is checked with the fhir.resources R4B model and the official R4 JSON Schema, then the
set's references and canonicals must resolve (against the files and the resources folder).

A ``.ndjson`` file (FHIR Bulk Data) holds one resource per line; its issues name ``file:line``.
References from NDJSON to resources that none of the files holds are warnings (an export may
leave types out). Bundles are validated entry by entry; their references resolve by ``fullUrl`` (see
:func:`fhir_trial.validation.reference_issues` for what counts as resolved).

Output: an OperationOutcome (``--format json``) or one line per issue, ``severity path: message``.
Exit codes: 0 no errors (warnings allowed); 6 validation errors; 2 a file that is missing, not JSON
or not a FHIR resource (one line saying which).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fhir_trial.config import DEFAULT_RESOURCES_DIR
from fhir_trial.errors import FhirTrialError, InputError, NotFhirError, NotJsonError
from fhir_trial.validation import operation_outcome, validate_set


class ValidationFailed(FhirTrialError):
    """Validation found at least one error (exit code 6)."""

    exit_code = 6


def _parse_resource(text: str, where: str) -> dict[str, Any]:
    """A FHIR resource from JSON text; NotJsonError / NotFhirError (exit 2) name ``where``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise NotJsonError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise NotFhirError(f"{where}: not a FHIR resource (no resourceType)")
    return data


def read_resource(path: Path) -> dict[str, Any]:
    """A FHIR resource from a JSON file; InputError (exit 2) if it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    return _parse_resource(text, str(path))


def read_ndjson(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, resource)`` for every non-blank line; InputError (exit 2) names a bad line."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    out = []
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                out.append((where, _parse_resource(line, where)))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    return out


def read_inputs(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(source, resource)`` pairs of a ``.json`` (one resource) or ``.ndjson`` file."""
    if path.suffix.lower() == ".ndjson":
        return read_ndjson(path)
    return [(str(path), read_resource(path))]


def _context(resources_dir: Path, given: set[Path]) -> list[dict[str, Any]]:
    """Resources of the resources folder that references may point to (unreadable ones skipped)."""
    out = []
    for path in sorted(resources_dir.glob("*.json")) if resources_dir.is_dir() else []:
        if path.resolve() in given:
            continue
        try:
            out.append(read_resource(path))
        except InputError:
            continue
    return out


@click.command("validate")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--schema",
    "schema",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FHIR_TRIAL_FHIR_SCHEMA",
    default=None,
    help="R4 fhir.schema.json (default: ../shared/schemas/fhir.schema.json beside the project).",
)
@click.option(
    "--resources-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_RESOURCES_DIR,
    show_default=True,
    help="Resources that references may resolve to (and the default files to validate).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def command(files: tuple[Path, ...], schema: Path | None, resources_dir: Path, fmt: str) -> None:
    """Validate FHIR R4 resources with fhir.resources (R4B) and the R4 JSON Schema.

    FILES are .json resources (Bundles included) or .ndjson files (one resource per line);
    without FILES, every resource of --resources-dir is validated.
    """
    paths = list(files) or sorted(resources_dir.glob("*.json"))
    if not paths:
        raise InputError(f"nothing to validate: no files given and no *.json in {resources_dir}")
    resources: list[tuple[str, dict[str, Any]]] = []
    exported: set[str] = set()  # NDJSON: a server's Bulk Data export (see reference_issues)
    for path in paths:
        pairs = read_inputs(path)
        resources += pairs
        if path.suffix.lower() == ".ndjson":
            exported.update(source for source, _resource in pairs)
    context = _context(resources_dir, {path.resolve() for path in paths})
    issues = validate_set(resources, schema_path=schema, context=context, exported=exported)
    if fmt == "json":
        outcome = operation_outcome(issues, checked=len(resources))
        click.echo(json.dumps(outcome, indent=2, ensure_ascii=False))
    errors = sum(issue.is_error for issue in issues)
    if fmt == "text":
        for issue in issues:
            click.echo(issue.line())
        if not errors:  # with errors, the exit message below sums them up
            others = f" ({len(issues)} warning(s) above)" if issues else ""
            click.echo(f"ok: {len(resources)} resource(s) valid{others}")
    if errors:
        raise ValidationFailed(f"validation found {errors} error(s) in {len(paths)} file(s)")
