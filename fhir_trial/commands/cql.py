"""``fhir-trial cql build`` and ``fhir-trial cql check``: the CQL libraries, their ELM, the Libraries.

Exit codes: 0 done / current; 1 translation errors, or (``check``) ELM or a Library stale relative to
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
    """Translate the CQL libraries (reference translator) and keep the Library resources current."""


@command.command("build")
def build() -> None:
    """Translate cql/*.cql to cql/build/*.json, then rebuild the resources (the Libraries included)."""
    from fhir_trial.commands import build_resources

    result = translate(PROJECT_ROOT)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in result.translated + result.removed:
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


def stale_libraries(resources_dir: Path = DEFAULT_RESOURCES_DIR) -> list[str]:
    """Library files in ``resources_dir`` missing, or lacking their CQL library's current CQL or ELM."""
    from fhir_trial.cql.libraries import cql_libraries, resource_id
    from fhir_trial.study.library import library_content

    stale = []
    for cql in cql_libraries(CQL_DIR):
        name = f"Library-{resource_id(cql.name)}.json"
        try:
            library = json.loads((resources_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stale.append(name)
            continue
        if library.get("content") != library_content(cql):
            stale.append(name)
    return stale


@command.command("check")
def check() -> None:
    """Translate to a temporary folder; exit 1 if cql/build or a Library is stale."""
    problems = [f"cql/build/{name}" for name in stale_elm()]
    problems += [f"resources/{name}" for name in stale_libraries()]
    if problems:
        raise StaleCql(f"stale relative to cql/: {', '.join(problems)}; run `fhir-trial cql build`")
    click.echo("cql/build and the Libraries are current")
