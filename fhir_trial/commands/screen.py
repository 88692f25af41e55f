"""``fhir-trial screen``: screen one patient from a Bundle file or a FHIR server."""

from __future__ import annotations

import datetime as dt
import json

import click

from fhir_trial.config import Settings
from fhir_trial.errors import InputError
from fhir_trial.evaluate import evaluate
from fhir_trial.outputs import report_bundle, report_text
from fhir_trial.record import PatientRecord
from fhir_trial.report import EligibilityReport


def _parse_date(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} must be a date like 2026-11-26, not {value!r}") from None


def render(report: EligibilityReport, output_format: str) -> str:
    """The report in one of the CLI's formats."""
    if output_format == "json":
        return json.dumps(report.to_json(), indent=2) + "\n"
    if output_format == "fhir":
        return json.dumps(report_bundle(report), indent=2) + "\n"
    return report_text(report)


def _load_record(
    bundle: str | None,
    fhir_server: str | None,
    patient: str | None,
    token: str | None,
    settings: Settings,
) -> PatientRecord:
    if bundle and fhir_server:
        raise InputError("give either --bundle or --fhir-server, not both")
    if bundle:
        from fhir_trial.sources.bundle import read_json_file, record_from_bundle

        return record_from_bundle(read_json_file(bundle), patient)
    if fhir_server:
        if not patient:
            raise InputError("--fhir-server needs --patient ID")
        from fhir_trial.sources.fhir_client import FhirClient

        client = FhirClient(fhir_server, token=token, settings=settings)
        return client.fetch_patient_record(patient.removeprefix("Patient/"))
    raise InputError("nothing to screen: give --bundle FILE or --fhir-server URL --patient ID")


@click.command("screen")
@click.option(
    "--bundle", "bundle", metavar="FILE", help="A FHIR Bundle (JSON) holding the patient's record."
)
@click.option(
    "--fhir-server", metavar="URL", help="FHIR base URL to read the patient's record from."
)
@click.option(
    "--patient",
    metavar="ID",
    help="Patient id (required with --fhir-server; picks one in a Bundle).",
)
@click.option(
    "--token",
    envvar="FHIR_TRIAL_TOKEN",
    metavar="TOKEN",
    help="Bearer token for the FHIR server (or env FHIR_TRIAL_TOKEN, which keeps it out of shell history).",
)
@click.option("--as-of", metavar="DATE", help="Screening date (default: today).")
@click.option(
    "--infusion-date", metavar="DATE", help="Planned infusion date (default: the screening date)."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "fhir"]),
    default="text",
    show_default=True,
    help="text: a table; json: the CRITERIA.md shape; fhir: GuidanceResponse + ResearchSubject Bundle.",
)
def command(
    bundle: str | None,
    fhir_server: str | None,
    patient: str | None,
    token: str | None,
    as_of: str | None,
    infusion_date: str | None,
    output_format: str,
) -> None:
    """Screen one patient against the NCT06010472 criteria and print the report.

    Exit code 0 whenever a report is printed, whatever the verdict.
    """
    settings = Settings.from_env(
        as_of=_parse_date(as_of, "--as-of"),
        infusion_date=_parse_date(infusion_date, "--infusion-date"),
    )
    record = _load_record(bundle, fhir_server, patient, token, settings)
    click.echo(render(evaluate(record, settings), output_format), nl=False)
