"""``fhir-trial cql build`` and ``fhir-trial cql check``: the CQL library, its ELM and the Library.

Exit codes: 0 done / current; 1 translation errors, or (``check``) ELM or Library stale relative to
``cql/``; 2 the toolchain is missing (run ``npm ci`` in tools/cql) or a terminology source is unusable.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from fhir_trial.config import DEFAULT_RESOURCES_DIR, PROJECT_ROOT
from fhir_trial.cql.build import BUILD_DIR, CQL_DIR, translate
from fhir_trial.errors import FhirTrialError


class StaleCql(FhirTrialError):
    """``cql check`` found the ELM or the Library out of date (exit code 1)."""

    exit_code = 1


@click.group("cql")
def command() -> None:
    """Translate the CQL library (reference translator) and keep the Library resource current."""


@command.command("build")
def build() -> None:
    """Translate cql/*.cql to cql/build/*.json, then rebuild the resources (Library included)."""
    from fhir_trial.commands import build_resources

    result = translate(PROJECT_ROOT)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in result.translated:
        click.echo(line)
    click.get_current_context().invoke(
        build_resources.command, out_dir=DEFAULT_RESOURCES_DIR, check=False
    )


def stale_elm(cql_build: Path = BUILD_DIR) -> list[str]:
    """ELM files in ``cql_build`` that differ from a fresh translation (translated to a temp dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        translate(PROJECT_ROOT, out_dir=Path(tmp))
        fresh = {
            p.name: json.loads(p.read_text(encoding="utf-8")) for p in Path(tmp).glob("*.json")
        }
    current = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in cql_build.glob("*.json")}
    names = sorted(set(fresh) | set(current))
    return [name for name in names if fresh.get(name) != current.get(name)]


def stale_library(resources_dir: Path = DEFAULT_RESOURCES_DIR) -> bool:
    """Whether the Library in ``resources_dir`` lacks the current CQL or ELM attachments."""
    from fhir_trial.study.library import library_content

    found = sorted(resources_dir.glob("Library-*.json"))
    if not found:
        return True
    library = json.loads(found[0].read_text(encoding="utf-8"))
    return bool(library.get("content") != library_content(CQL_DIR))


@command.command("check")
def check() -> None:
    """Translate to a temporary folder; exit 1 if cql/build or the Library is stale."""
    problems = [f"cql/build/{name}" for name in stale_elm()]
    if stale_library():
        problems.append("resources Library content")
    if problems:
        raise StaleCql(f"stale relative to cql/: {', '.join(problems)}; run `fhir-trial cql build`")
    click.echo("cql/build and the Library are current")
