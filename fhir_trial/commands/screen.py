"""``fhir-trial screen``: screen one patient from a Bundle file or a FHIR server."""

from __future__ import annotations

import datetime as dt
import json

import click

from fhir_trial.config import Settings
from fhir_trial.deceased import vital_status
from fhir_trial.errors import InputError, ServerResponseError
from fhir_trial.evaluate import evaluate
from fhir_trial.outputs import report_bundle, report_text
from fhir_trial.record import PatientRecord
from fhir_trial.report import EligibilityReport

# Exit code of a report printed with data categories missing (README, exit codes).
EXIT_INCOMPLETE = 7


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

    Exit code 0 when a complete report is printed, whatever the verdict; 7 when a report is
    printed but some data categories could not be read (the report says INCOMPLETE and lists
    them); 5 when nothing beyond the Patient could be read (no report is printed). Reading from a
    FHIR server gives up after ``FHIR_TRIAL_FHIR_DEADLINE_S`` seconds (60) or
    ``FHIR_TRIAL_FHIR_MAX_REQUESTS`` requests (500) in total.
    """
    settings = Settings.from_env(
        as_of=_parse_date(as_of, "--as-of"),
        infusion_date=_parse_date(infusion_date, "--infusion-date"),
    )
    record = _load_record(bundle, fhir_server, patient, token, settings)
    _refuse_empty(record, settings)
    report = evaluate(record, settings)
    click.echo(render(report, output_format), nl=False)
    if report.not_obtained:
        click.echo(
            "warning: the report is INCOMPLETE; could not be read: "
            + "; ".join(f"{c} ({record.failed.get(c, '?')})" for c in report.not_obtained),
            err=True,
        )
        click.get_current_context().exit(EXIT_INCOMPLETE)


def _refuse_empty(record: PatientRecord, settings: Settings) -> None:
    """Nothing beyond the Patient could be read: no report that looks like a result (exit 5).

    A deceased Patient still gets its report: the Patient alone decides that one.
    """
    if record.obtained - {"Patient"} or not record.failed:
        return
    patient = record.patient
    if patient is not None and vital_status(patient, settings.screening_date()).state == "deceased":
        return
    reasons = "; ".join(f"{c}: {why}" for c, why in sorted(record.failed.items()))
    raise ServerResponseError(
        "only the Patient could be read; none of the patient's clinical data could be obtained, "
        f"so there is no screening to report ({reasons})"
    )
