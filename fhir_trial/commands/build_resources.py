"""``fhir-trial build-resources``: write the study's FHIR resources to ``resources/``.

Exit codes: 0 written (or, with ``--check``, already current); 1 with ``--check`` when ``resources/``
is stale (the stale file names are listed); 2 when a terminology source cannot be read.
"""

from __future__ import annotations

from pathlib import Path

import click

from fhir_trial.config import DEFAULT_RESOURCES_DIR, Settings
from fhir_trial.errors import FhirTrialError
from fhir_trial.study import BuildInputs, build_all, stale_files, write_resources


class StaleResources(FhirTrialError):
    """``--check`` found the resources folder out of date (exit code 1)."""

    exit_code = 1


@click.command("build-resources")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_RESOURCES_DIR,
    show_default=True,
    help="Folder to write <Type>-<id>.json files to.",
)
@click.option(
    "--check", is_flag=True, help="Write nothing; exit 1 if the folder differs from a fresh build."
)
def command(out_dir: Path, check: bool) -> None:
    """Build ResearchStudy, Group, PlanDefinition, the Libraries, ValueSets, CodeSystem,
    Organization and Location from the criteria, terminology/ and cql/."""
    result = build_all(BuildInputs(settings=Settings.from_env()))
    if result.missing_valuesets:
        click.echo(
            "warning: no terminology source for ValueSet(s) "
            + ", ".join(result.missing_valuesets)
            + " (left out of the Group and the Libraries)",
            err=True,
        )
    if check:
        stale = stale_files(result.resources, out_dir)
        if stale:
            raise StaleResources(
                f"{out_dir} is stale ({', '.join(stale)}); run `fhir-trial build-resources`"
            )
        click.echo(f"{out_dir} is up to date ({len(result.resources)} resources)")
        return
    changed = write_resources(result.resources, out_dir)
    click.echo(f"{len(result.resources)} resources in {out_dir}, {len(changed)} file(s) changed")
