"""``fhir-trial publish``: look up, write in one transaction, read back (see fhir_trial.publish).

Exit codes (see fhir_trial.cli): 0 published and read back; 2 no/unreadable resources or bad
options; 3 server unreachable or timed out; 4 token refused (401/403); 5 any resource failed (each
is listed with the server's reason), any other error answer (404, 5xx) or an answer that is not FHIR
(an HTML page, ...).
"""

from __future__ import annotations

import json

import click

from fhir_trial.config import Settings
from fhir_trial.errors import FhirServerError, InputError
from fhir_trial.fhir_api.store import load_resources
from fhir_trial.publish import PublishResult, build_transaction, publish


class PublishFailed(FhirServerError):
    """Some resources were not published (exit code 5); the message lists them."""


def _failure_message(result: PublishResult) -> str:
    failures = result.failures
    listed = "; ".join(f"{e.resource}: {e.reason}" for e in failures)
    message = f"{len(failures)} of {len(result.entries)} resources not published ({listed})"
    if result.left_behind:
        message += (
            f"; the server did not roll the transaction back and kept {len(result.left_behind)} "
            "resources written (listed above): publish again once the failures are fixed"
        )
    return message


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
    "--ids",
    type=click.Choice(["auto", "client", "server"]),
    default="auto",
    show_default=True,
    help="Ids of resources the server does not hold yet: the project's own (client), the "
    "server's (server), or the project's where the CapabilityStatement says updateCreate (auto).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the transaction Bundle that would be sent and send nothing.",
)
def command(
    fhir_server: str | None, token: str | None, resources_dir: str | None, ids: str, dry_run: bool
) -> None:
    """Publish the study (ResearchStudy, Group, PlanDefinition, Library, ValueSets, ...) to a server.

    Looks up what the server holds (by canonical url and version, or identifier), writes what is
    new or changed in one transaction of conditional updates, and reads everything back: running
    it again creates nothing new. Prints per resource created / updated / unchanged / failed (with
    the server's reason) and exits 5 when anything failed, listing what the server kept.
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
    click.echo(f"publishing {len(resources)} resources to {fhir_server}")
    result = publish(
        resources,
        fhir_server,
        token=token,
        settings=settings,
        ids=ids,  # type: ignore[arg-type]  # click.Choice guarantees the literal
        on_entry=lambda entry: click.echo(entry.line()),
    )
    click.echo(result.summary())
    if result.transaction_error:
        click.echo(f"the server refused the transaction: {result.transaction_error}")
    if result.left_behind:
        click.echo(
            f"the server did not roll the transaction back; it kept {len(result.left_behind)} "
            "resources written:"
        )
        for entry in result.left_behind:
            broken = f" ({entry.reason})" if entry.action == "failed" else ""
            click.echo(f"  {entry.resource} -> {entry.server_id}{broken}")
    if result.failures:
        raise PublishFailed(_failure_message(result))
    click.echo(
        f"read back: {len(result.entries)} resources found once each, "
        f"{result.references_checked} references resolve"
    )
