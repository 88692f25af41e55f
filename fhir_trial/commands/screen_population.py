"""``fhir-trial screen-population``: screen many patients and print a feasibility report.

Inputs (one of): ``--bundles`` files or folders of Bundles (further paths may follow as plain
arguments, so ``--bundles data/*.json`` works), ``--ndjson`` a Bulk Data export folder, ``--demo``
the demo patients shipped with the package (screened as of their own date unless ``--as-of``).

Output: the feasibility report on stdout (``--format text|json|csv``; the JSON and CSV are
``report.json`` and ``report.csv``); with ``--format text`` also one verdict line per patient (the
first 20, or all with ``--demo``). ``--output FILE`` gets every patient's full report as JSON lines
(the CRITERIA.md shape), written as they are computed. ``--report DIR`` writes the shareable
report (``report.html``, ``report.json``, ``report.csv``) and, apart in ``DIR/phi/``, what names
patients (``worklist.csv``, ``results.ndjson``): see :mod:`fhir_trial.population.worklist`.
``--set FIELD=VALUE`` (repeatable) adds a what-if run beside the baseline, evaluated in the same
pass; ``--min-count N`` suppresses counts below N in the report. ``--engine spark`` screens an
``--ndjson`` export on Apache Spark instead (optional extra ``spark``; ``--spark-master URL``),
with the same outputs: see :mod:`fhir_trial.population.spark`.
Exit codes: 0 done, 2 unusable input (nothing could be screened, bad option).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from typing import IO, Any

import click

from fhir_trial.config import Settings
from fhir_trial.errors import InputError
from fhir_trial.population import (
    Feasibility,
    Screened,
    Skipped,
    screen_bundle_files,
    screen_ndjson,
    verdict_line,
)
from fhir_trial.population.bulk.cli import bulk_options, export_from_options, wants_bulk
from fhir_trial.population.bulk.client import BulkExport
from fhir_trial.population.model import FeasibilityReport
from fhir_trial.population.whatif import WhatIf, parse_what_if
from fhir_trial.population.worklist import ReportDirectory
from fhir_trial.record import CATEGORIES
from fhir_trial.sources.ndjson import NdjsonExport

TEXT_PATIENT_LINES = 20
DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 64))


def _parse_date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"--as-of must be a date like 2026-11-26, not {value!r}") from None


def _progress(items: Iterator[Screened], total: int | None, enabled: bool) -> Iterator[Screened]:
    """Wrap in a tqdm bar on stderr when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="patient", file=sys.stderr, leave=False) as bar:
        for item in items:
            bar.update(1)
            yield item


def _bucket_bar(stack: ExitStack, enabled: bool) -> Callable[[int], None] | None:
    """A tqdm bar on stderr (a terminal only) counting patients as buckets are screened."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = stack.enter_context(tqdm(unit="patient", file=sys.stderr, leave=False))
    return bar.update


@click.command("screen-population")
@click.argument("paths", nargs=-1, metavar="[MORE_BUNDLES]...")
@click.option(
    "--bundles",
    multiple=True,
    metavar="PATH",
    help="A Bundle file or a folder of *.json Bundles (repeatable; more paths may follow).",
)
@click.option("--ndjson", metavar="DIR", help="A Bulk Data export folder (NDJSON files).")
@click.option("--demo", is_flag=True, help="Screen the demo patients shipped with fhir-trial.")
@click.option(
    "--missing",
    multiple=True,
    type=click.Choice(list(CATEGORIES)),
    help="With --ndjson: a data category the export lacks (its criteria become unknown).",
)
@click.option(
    "--complete",
    multiple=True,
    type=click.Choice(list(CATEGORIES)),
    help="With --ndjson: the export is complete for this type even without a file (no such "
    "records exist); otherwise a type with no file is missing data (its criteria unknown).",
)
@click.option("--as-of", metavar="DATE", help="Screening date (default: today; demo: its date).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "csv"]),
    default="text",
    show_default=True,
    help="Form of the feasibility report on stdout.",
)
@click.option(
    "--output",
    metavar="FILE",
    help="Write every patient's report to FILE as JSON lines.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=DEFAULT_WORKERS,
    show_default="the machine's CPUs",
    help="Processes reading and evaluating patients in parallel.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (it only shows on a terminal).")
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="Where patients are evaluated; spark (with --ndjson) needs the extra fhir-trial[spark].",
)
@click.option("--spark-master", metavar="URL", help="With --engine spark: local[4], spark://...")
@click.option(
    "--report",
    "report_dir",
    metavar="DIR",
    help="Write report.html/.json/.csv to DIR, and the per-patient files to DIR/phi/.",
)
@click.option(
    "--set",
    "what_if",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A what-if run beside the baseline (repeatable; e.g. sledai_min_score=6).",
)
@click.option(
    "--min-count",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Suppress counts below N in the report (with complementary suppression); 0: off.",
)
@bulk_options
def command(
    paths: tuple[str, ...],
    bundles: tuple[str, ...],
    ndjson: str | None,
    demo: bool,
    missing: tuple[str, ...],
    complete: tuple[str, ...],
    as_of: str | None,
    output_format: str,
    output: str | None,
    workers: int,
    no_progress: bool,
    engine: str,
    spark_master: str | None,
    report_dir: str | None,
    what_if: tuple[str, ...],
    min_count: int,
    **bulk: Any,
) -> None:
    """Screen many patients (Bundles, Bulk NDJSON or the demo) and report feasibility."""
    requested: set[str] | None = None  # the kick-off's _type, when this run exported
    exported: BulkExport | None = None
    # A Bulk Data export from a FHIR server (fhir_trial.population.bulk), then read as --ndjson.
    if wants_bulk(bulk):
        if ndjson:
            raise InputError("give --ndjson DIR or --fhir-server URL, not both")
        exported = export_from_options(bulk, Settings.from_env(), show_progress=not no_progress)
        if exported is None:  # --cancel-export
            return
        ndjson = str(exported.folder)
        requested = set(exported.requested_types) if exported.requested_types else None
    bundle_inputs = [*bundles, *paths]
    chosen = sum(bool(x) for x in (bundle_inputs, ndjson, demo))
    if chosen != 1:
        raise InputError("give exactly one of --bundles PATH..., --ndjson DIR or --demo")
    if missing and not ndjson:
        raise InputError("--missing only applies to --ndjson")
    if complete and not ndjson:
        raise InputError("--complete only applies to --ndjson")
    as_of_date = _parse_date(as_of)
    if demo and as_of_date is None:
        from fhir_trial.demo import DEMO_AS_OF

        as_of_date = DEMO_AS_OF
    settings = Settings.from_env(as_of=as_of_date)
    if settings.as_of is None:  # every patient is screened for the same day, even past midnight
        settings = settings.replace(as_of=dt.date.today())
    runs = parse_what_if(what_if, settings)
    if report_dir:
        from fhir_trial.population import charts

        charts.require()  # before a long run, not after it
    if engine == "spark" or spark_master:
        if not ndjson:
            raise InputError("--engine spark works with --ndjson DIR (or a folder URI)")
        from fhir_trial.population.spark import run_screen_population

        run_screen_population(
            ndjson,
            missing,
            settings,
            complete=complete,
            output_format=output_format,
            output=output,
            master=spark_master,
            patient_lines=TEXT_PATIENT_LINES,
            what_if=runs,
            report_dir=report_dir,
            min_count=min_count,
        )
        return

    feasibility = Feasibility()
    variants = [Feasibility() for _ in runs]
    what_if_settings = [run.settings for run in runs]
    total: int | None = None
    export: NdjsonExport | None = None
    with ExitStack() as stack:
        if ndjson:
            export = stack.enter_context(
                NdjsonExport(
                    ndjson,
                    missing,
                    requested_types=requested,
                    complete_types=complete,
                    max_line_bytes=settings.ndjson_max_line_bytes,
                )
            )
            bar = _bucket_bar(stack, enabled=not no_progress)
            screened = screen_ndjson(
                export, settings, workers=workers, what_if=what_if_settings, progress=bar
            )
            no_progress = True  # the reports come out at the end: the bar follows the buckets
        else:
            if demo:
                from fhir_trial.demo import demo_bundle_paths

                demo_paths = demo_bundle_paths()
                if not demo_paths:
                    raise InputError("no demo patients are installed (fhir_trial/demo/*.json)")
                bundle_inputs = [str(p) for p in demo_paths]
                total = len(demo_paths)
            screened = screen_bundle_files(
                bundle_inputs,
                settings,
                workers=workers,
                skipped=feasibility.skipped,
                what_if=what_if_settings,
            )
        sink: IO[str] | None = None
        if output:
            try:
                sink = stack.enter_context(open(output, "w", encoding="utf-8"))
            except OSError as exc:
                raise InputError(f"cannot write {output}: {exc.strerror or exc}") from None
        directory = stack.enter_context(ReportDirectory(report_dir)) if report_dir else None
        show_lines = output_format == "text"
        shown = 0
        for item in _progress(screened, total, enabled=not no_progress):
            feasibility.add(item.report)
            for counter, variant in zip(variants, item.what_if, strict=True):
                counter.add(variant)
            if directory is not None:
                directory.add(item)
            if sink is not None:
                sink.write(json.dumps(item.report.to_json(), ensure_ascii=False) + "\n")
            if show_lines and (demo or shown < TEXT_PATIENT_LINES):
                click.echo(verdict_line(item))
                shown += 1
        if show_lines and not demo and feasibility.total > shown:
            click.echo(f"... {feasibility.total - shown} more patients (--output FILE lists all)")

        inputs = None
        if export is not None:
            for pid in export.account.clashing_patients:
                feasibility.skipped.append(
                    Skipped(f"Patient/{pid}", "two different Patients share this id; not screened")
                )
            click.echo("Inputs:", err=True)
            for line in export.account.summary():
                click.echo(f"  {line}", err=True)
            inputs = export.account.aggregates()
            if exported is not None:  # a Bulk export this run made: its error files too
                inputs = {**inputs, **exported.report_inputs()}
        if feasibility.total == 0:
            _explain_nothing(feasibility.skipped)
        report = feasibility_report(feasibility, runs, variants, min_count, inputs)
        if directory is not None:
            directory.finish(report)
            click.echo(
                f"report written to {report_dir}/ (report.html, report.json, report.csv); "
                f"what names patients to {report_dir}/phi/",
                err=True,
            )

    if shown and output_format == "text":
        click.echo()
    click.echo(report.render(output_format), nl=False)


def feasibility_report(
    baseline: Feasibility,
    runs: list[WhatIf],
    variants: list[Feasibility],
    min_count: int,
    inputs: Mapping[str, Any] | None = None,
) -> FeasibilityReport:
    """The report of a run: the baseline counters, one counter per what-if run, the inputs."""
    what_ifs = [
        (run.label, run.changes, counter) for run, counter in zip(runs, variants, strict=True)
    ]
    return FeasibilityReport(baseline, what_ifs, inputs, min_count)


def _explain_nothing(skipped: list[Skipped]) -> None:
    if skipped:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more inputs skipped)" if len(skipped) > 1 else ""
        raise InputError(f"no patient could be screened: {first.source}: {first.reason}{more}")
    raise InputError("no patient could be screened: the input holds no Patient")
