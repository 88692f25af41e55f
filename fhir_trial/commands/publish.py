"""``fhir-trial publish``: send resources/ to a FHIR server as one idempotent transaction.

Exit codes (see fhir_trial.cli): 0 published; 2 no/unreadable resources or bad options;
3 server unreachable or timed out; 4 token refused (401/403); 5 any other error answer
(404, 422, 5xx) or an answer that is not a FHIR transaction-response (an HTML page, ...).
"""

from __future__ import annotations

import json

import click

from fhir_trial.config import Settings
from fhir_trial.errors import InputError
from fhir_trial.fhir_api.store import load_resources
from fhir_trial.publish import build_transaction, publish


@click.command("publish")
@click.option("--fhir-server", metavar="URL", help="FHIR base URL to publish to.")
@click.option(
    "--token",
    envvar="FHIR_TRIAL_TOKEN",
    metavar="TOKEN",
    help="Bearer token for the FHIR server (or env FHIR_TRIAL_TOKEN, which keeps it out of shell history).",
)
@click.option(
    "--resources-dir",
    metavar="DIR",
    help="Folder of resources to publish (default: resources/ of the project).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the transaction Bundle that would be sent and send nothing.",
)
def command(
    fhir_server: str | None, token: str | None, resources_dir: str | None, dry_run: bool
) -> None:
    """Publish the study (ResearchStudy, Group, PlanDefinition, Library, ValueSets, ...) to a server.

    One transaction of conditional updates: running it again creates nothing new. Prints what the
    server did with each resource (created / updated / unchanged).
    """
    settings = Settings.from_env(resources_dir=resources_dir)
    resources = load_resources(settings.resources_dir)
    if not resources:
        raise InputError(
            f"no resources in {settings.resources_dir}; run `fhir-trial build-resources`"
        )
    if dry_run:
        click.echo(json.dumps(build_transaction(resources), indent=2, ensure_ascii=False))
        return
    if not fhir_server:
        raise InputError("give --fhir-server URL (or --dry-run)")
    click.echo(f"publishing {len(resources)} resources to {fhir_server} in one transaction")
    result = publish(
        resources,
        fhir_server,
        token=token,
        settings=settings,
        on_entry=lambda entry: click.echo(entry.line()),
    )
    click.echo(result.summary())
