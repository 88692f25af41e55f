"""``fhir-trial import-vsac --from DIR``: import published VSAC expansions into ``terminology/vsac/``.

Run it when the VSAC files change (e.g. ``--from ../shared/fixtures/vsac``), then
``fhir-trial build-resources``. Normal builds read only what this wrote.
Exit codes: 0 written; 2 when a VSAC file cannot be read or holds an unexpected code system.
"""

from __future__ import annotations

from pathlib import Path

import click

from fhir_trial.config import PROJECT_ROOT
from fhir_trial.study.vsac_import import import_vsac


@click.command("import-vsac")
@click.option(
    "--from",
    "source_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Folder holding valueset-<OID>.json files (published VSAC expansions).",
)
@click.option(
    "--terminology",
    "terminology_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROJECT_ROOT / "terminology",
    show_default=True,
    help="The project's terminology sources; the import writes its vsac/ folder.",
)
def command(source_dir: Path, terminology_dir: Path) -> None:
    """Write terminology/vsac/<OID>.json: the codes of each VSAC value set the criteria use."""
    written = import_vsac(source_dir, terminology_dir)
    click.echo(f"{len(written)} VSAC value sets imported into {terminology_dir / 'vsac'}")
