"""Population screening on Apache Spark (optional extra ``spark``): a Bulk NDJSON export at scale.

Same answers as the local path (:class:`~fhir_trial.sources.ndjson.NdjsonExport` +
:func:`~fhir_trial.evaluate.evaluate` + :class:`~fhir_trial.population.local.Feasibility`): the same
records per patient, the same completeness rules, the same evaluator, the same feasibility
counting. Only where the work runs changes. The steps:

1. **Files** (driver): the export folder is listed through Hadoop's FileSystem, so ``file:``,
   ``hdfs://``, ``s3a://``, ... all work; ``<Type>.*.ndjson[.gz]`` files, ``log.ndjson`` excluded,
   in name order, exactly as the local reader picks them.
2. **Lines** (executors): every line is parsed once and turned into small tagged items keyed by
   the patient it belongs to (:func:`fhir_trial.sources._common.patient_refs`, the same rule as the
   local reader). Each line keeps its position (partition of the file-ordered union, offset), so
   per-patient resource order, "first one wins" rules and ``<file>:<line>`` messages match.
   Unreadable lines are counted and reported, never fatal.
3. **Export problems** (driver): OperationOutcomes found in the data, the first unreadable lines,
   ``log.ndjson`` and ``manifest.json`` (both small; copied to a temporary folder and read by the
   local reader's own functions) give the same :class:`ExportProblems` as the local reader.
4. **Medications** (executors): a Medication resource that names no patient may be referenced by
   many. They are *joined*, not broadcast: ``(Medication/<id>, patient)`` pairs from the
   ``medicationReference`` of every medication resource are joined with the Medications (the first
   of each id, in file order), so an export with millions of Medications never goes through the
   driver's memory.
5. **Records and reports** (executors): items are grouped per patient, a
   :class:`~fhir_trial.record.PatientRecord` is built with the local reader's completeness rules
   (a type absent from the export counts obtained unless listed missing, failed by the export's
   own errors, or failed for a patient an unreadable line names), and evaluated. The ValueSets are
   loaded once on the driver and broadcast, so executors need the package but not ``resources/``.
6. **Feasibility** (executors, then driver): each partition counts its reports with
   :meth:`Feasibility.add`; the driver sums the partial counters (:func:`merge_feasibility`).

The per-patient reports come back as a DataFrame (``patient``, ``verdict``, ``report`` as the
JSON text of CRITERIA.md's shape); the evaluation is persisted (memory and disk) so writing it out
does not evaluate again. Works with ``local[N]`` and with a cluster master URL (give a folder URI
every executor can read).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError, InputError
from fhir_trial.json_input import parse_json
from fhir_trial.population.local import Feasibility, Screened, screen_one, verdict_line
from fhir_trial.population.whatif import WhatIf
from fhir_trial.record import CATEGORIES, PatientRecord, Resource
from fhir_trial.report import EligibilityReport
from fhir_trial.sources.ndjson import (
    LOG_FILE,
    MANIFEST_FILE,
    MAX_LINE_WARNINGS,
    PATIENT_IN_TEXT,
    ExportProblems,
    assemble_record,
    check_categories,
    classify_line,
    file_type,
    read_log,
    read_manifest,
    read_outcome,
)
from fhir_trial.terminology import Terminology, load_terminology

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark import RDD
    from pyspark.sql import DataFrame, SparkSession

# Item tags produced by the line parser.
_PATIENT = "P"  # ("P", patient id, order, text)
_RESOURCE = "R"  # ("R", patient id, order, text)
_USES = "U"  # ("U", "Medication/<id>", patient id)
_MEDICATION = "M"  # ("M", "Medication/<id>", order, text)
_OUTCOME = "O"  # ("O", order, text)
_BAD = "B"  # ("B", order, file type, why, patient ids named)
_LINES = "L"  # ("L", partition, number of lines)
_SHARED = "S"  # in a patient's group: ("S", order, "Medication/<id>", text)
_BAD_FOR = "F"  # in a patient's group: ("F", order, file type)

Order = tuple[int, int]  # (partition of the file-ordered union, line offset in it)
REPORT_SCHEMA = "patient string, verdict string, report string"
_LOG4J2_ERRORS_ONLY = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""


# ----------------------------------------------------------------------------- session
def spark_session(
    master: str | None = None, config: Mapping[str, str] | None = None
) -> SparkSession:
    """A SparkSession for screening (reuses the active one), with Spark's logging quietened.

    ``master``: ``local[4]``, ``spark://host:7077``, ``yarn``, ...; ``None`` keeps Spark's own
    choice (``spark-submit --master``, else ``local[*]``); ``config``: more Spark settings for a
    new session (``spark.executor.memory``, ``spark.hadoop.*``, ...). In local mode the Python workers run
    this interpreter (``PYSPARK_PYTHON`` unless set), so they can import fhir_trial.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigurationError(
            "Spark screening needs pyspark: pip install 'fhir-trial[spark]'"
        ) from None
    resolved = master or os.environ.get("MASTER") or "local[*]"
    if resolved.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("fhir-trial screen-population")
    if master:
        builder = builder.master(master)
    builder = builder.config("spark.ui.showConsoleProgress", "false").config(
        "spark.ui.enabled", "false"
    )
    config = dict(config or {})
    quiet: str | None = None
    if (
        SparkSession.getActiveSession() is None
        and "PYSPARK_GATEWAY_PORT" not in os.environ
        and "spark.driver.extraJavaOptions" not in config
    ):
        # The JVM is started here: give it a log4j2 configuration with errors only (read once,
        # at start-up, so the file can go right after).
        handle, quiet = tempfile.mkstemp(prefix="fhir-trial-log4j2-", suffix=".properties")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(_LOG4J2_ERRORS_ONLY)
        builder = builder.config(
            "spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={Path(quiet).as_uri()}"
        )
    for key, value in config.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # Java missing, bad master URL, ...: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"cannot start Spark: {first}") from None
    finally:
        if quiet:
            Path(quiet).unlink(missing_ok=True)
    session.sparkContext.setLogLevel("ERROR")
    return session


# ----------------------------------------------------------------------------- executors
def _medication_reference(resource: Resource) -> str | None:
    """The ``Medication/<id>`` a medication resource points to, if any (as the local reader)."""
    holder = resource.get("medicationReference")
    ref = holder.get("reference") if isinstance(holder, dict) else None
    return ref if isinstance(ref, str) and ref.startswith("Medication/") else None


def _bad_item(order: Order, why: str, text: str, ftype: str | None) -> tuple[Any, ...]:
    named: tuple[str, ...] = ()
    if ftype in CATEGORIES and ftype != "Patient":
        named = tuple(sorted(set(PATIENT_IN_TEXT.findall(text))))
    return (_BAD, order, ftype, why, named)


def _parse_partition(
    file_types: Sequence[str | None], index: int, lines: Iterable[str]
) -> Iterator[tuple[Any, ...]]:
    """Executor side: the tagged items of one partition's lines (the local reader's rules)."""
    ftype = file_types[index]
    count = 0
    for position, line in enumerate(lines):
        count = position + 1
        text = line.strip()
        if not text:
            continue
        order = (index, position)
        line_kind = classify_line(text)
        if line_kind.kind == "bad":
            yield _bad_item(order, line_kind.problem, text, line_kind.blame or ftype)
        elif line_kind.kind == "outcome":
            yield (_OUTCOME, order, text)
        elif line_kind.kind == "patient":
            yield (_PATIENT, line_kind.key, order, text)
        elif line_kind.kind == "resource" and line_kind.resource is not None:
            medication = _medication_reference(line_kind.resource)
            for owner in line_kind.owners:
                yield (_RESOURCE, owner, order, text)
                if medication:
                    yield (_USES, medication, owner)
        elif line_kind.kind == "medication":
            yield (_MEDICATION, line_kind.key, order, text)
    yield (_LINES, index, count)


@dataclass
class _PartitionFacts:
    """What the driver needs from one partition: line count, outcomes, unreadable lines."""

    lines: dict[int, int] = dataclasses.field(default_factory=dict)
    outcomes: list[tuple[Order, str]] = dataclasses.field(default_factory=list)
    first_bad: list[tuple[Order, str]] = dataclasses.field(default_factory=list)  # (order, why)
    bad_total: int = 0
    fail_all: dict[str, Order] = dataclasses.field(default_factory=dict)  # type -> first line


def _partition_facts(items: Iterable[tuple[Any, ...]]) -> Iterator[_PartitionFacts]:
    facts = _PartitionFacts()
    for item in items:
        tag = item[0]
        if tag == _LINES:
            facts.lines[item[1]] = item[2]
        elif tag == _OUTCOME:
            facts.outcomes.append((item[1], item[2]))
        elif tag == _BAD:
            _, order, ftype, why, named = item
            facts.bad_total += 1
            if len(facts.first_bad) < MAX_LINE_WARNINGS:
                facts.first_bad.append((order, why))
            if ftype in CATEGORIES and ftype != "Patient" and not named:
                facts.fail_all.setdefault(ftype, order)
    yield facts


def _by_patient(item: tuple[Any, ...]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Items that go into a patient's group, keyed by patient id."""
    tag = item[0]
    if tag in (_PATIENT, _RESOURCE):
        yield item[1], (tag, item[2], item[3])
    elif tag == _BAD:
        _, order, ftype, _why, named = item
        for patient_id in named:
            yield patient_id, (_BAD_FOR, order, ftype)


@dataclass(frozen=True)
class _Shared:
    """What every executor needs, broadcast once: settings, ValueSets, export-wide problems."""

    settings: Settings
    what_if: tuple[Settings, ...]
    terminology: Terminology
    missing: frozenset[str]
    failed: dict[str, str]
    warnings: list[str]
    where: dict[int, tuple[str, int]]  # partition -> (file name, lines before it in its file)

    def place(self, order: Order) -> str:
        """``<file>:<line>`` of a line, as the local reader writes it."""
        name, before = self.where[order[0]]
        return f"{name}:{before + order[1] + 1}"


def build_record(items: Iterable[tuple[Any, ...]], shared: _Shared) -> PatientRecord | None:
    """One patient's :class:`PatientRecord` from its grouped items, or None without a Patient.

    The first Patient line, then :func:`fhir_trial.sources.ndjson.assemble_record`'s rules (the
    same as the local reader's); unreadable lines fail their own category for this patient.
    """
    patients: list[tuple[Any, ...]] = []
    resources: list[tuple[Any, ...]] = []
    medications: dict[str, str] = {}
    bad: list[tuple[Any, ...]] = []
    for item in items:
        tag = item[0]
        if tag == _PATIENT:
            patients.append(item)
        elif tag == _RESOURCE:
            resources.append(item)
        elif tag == _SHARED:
            medications[item[2]] = item[3]
        elif tag == _BAD_FOR:
            bad.append(item)
    if not patients:
        return None  # resources naming a Patient the export does not hold: nobody to screen
    failed_for: dict[str, str] = {}
    for _, order, ftype in sorted(bad):
        failed_for.setdefault(ftype, f"an unreadable line in the export ({shared.place(order)})")
    return assemble_record(
        parse_json(min(patients)[2]),
        (parse_json(text) for _, _, text in sorted(resources)),
        lambda ref: parse_json(medications[ref]) if ref in medications else None,
        failed=[shared.failed, failed_for],
        missing=shared.missing,
        warnings=shared.warnings,
    )


def _screen_group(
    shared_value: Any, group: tuple[str, Iterable[tuple[Any, ...]]]
) -> Iterator[tuple[Order, Screened]]:
    """Executor side: build and evaluate one patient's record (baseline and what-if runs);
    keyed by its Patient line."""
    shared: _Shared = shared_value.value
    items = list(group[1])
    record = build_record(items, shared)
    if record is None:
        return
    order = min(item[1] for item in items if item[0] == _PATIENT)
    yield order, screen_one(record, shared.settings, shared.what_if, "", shared.terminology)


def _count_partition(
    runs: int, screened: Iterable[tuple[Order, Screened]]
) -> Iterator[list[Feasibility]]:
    counters = [Feasibility() for _ in range(runs)]
    for _, item in screened:
        for counter, report in zip(counters, (item.report, *item.what_if), strict=True):
            counter.add(report)
    yield counters


def _report_row(item: tuple[Order, Screened]) -> tuple[str, str, str]:
    report = item[1].report
    return report.patient, report.verdict, _report_text(report)


def _report_text(report: EligibilityReport) -> str:
    return json.dumps(report.to_json(), ensure_ascii=False)


def merge_feasibility(parts: Iterable[Feasibility]) -> Feasibility:
    """Sum partial :class:`Feasibility` counters (one per partition) into one."""
    total = Feasibility()
    for part in parts:
        total.merge(part)
    return total


# ----------------------------------------------------------------------------- driver
@dataclass
class SparkScreening:
    """Everything one run produced: the persisted evaluation, its DataFrame, the feasibility."""

    evaluated: RDD[tuple[Order, Screened]]  # (Patient line order, reports), persisted
    reports: DataFrame  # patient, verdict, report (JSON text)
    feasibility: Feasibility
    problems: ExportProblems
    what_if: list[Feasibility] = dataclasses.field(default_factory=list)  # one per what-if run


def _folder_uri(spark: SparkSession, directory: str | Path) -> str:
    text = str(directory)
    if "://" in text or text.startswith("file:"):
        return text.rstrip("/")
    if (spark.sparkContext.master or "").startswith("local"):
        return "file://" + str(Path(text).resolve())
    return text.rstrip("/")


def _list_files(spark: SparkSession, uri: str) -> dict[str, str]:
    """``{file name: full path}`` of the files in a folder, through Hadoop's FileSystem."""
    context = spark.sparkContext
    jvm = context._jvm
    if jvm is None:  # pragma: no cover - a stopped context
        raise ConfigurationError("the Spark session has stopped")
    try:
        path = jvm.org.apache.hadoop.fs.Path(uri)
        fs = path.getFileSystem(context._jsc.hadoopConfiguration())
        if not fs.exists(path) or not fs.getFileStatus(path).isDirectory():
            raise InputError(f"{uri} is not a folder (expected a Bulk Data export)")
        return {
            status.getPath().getName(): status.getPath().toString()
            for status in fs.listStatus(path)
            if status.isFile()
        }
    except InputError:
        raise
    except Exception as exc:  # Py4J errors: unknown scheme, no access, ...
        lines = str(exc).strip().splitlines()
        detail = next((line for line in lines if "Exception" in line), lines[0] if lines else "")
        raise InputError(f"cannot list {uri}: {detail.strip()}") from None


def _export_problems(
    spark: SparkSession,
    facts: list[_PartitionFacts],
    where: dict[int, tuple[str, int]],
    files: dict[str, str],
    present: set[str],
) -> ExportProblems:
    """The local reader's :class:`ExportProblems`, replayed in file order from the facts."""
    problems = ExportProblems()

    def place(order: Order) -> str:
        name, before = where[order[0]]
        return f"{name}:{before + order[1] + 1}"

    events: list[tuple[Order, int, str]] = []  # rank: 0 warning, 1 failure, 2 outcome
    bad: list[tuple[Order, str]] = []
    first_fail: dict[str, Order] = {}
    for part in facts:
        events.extend((order, 2, text) for order, text in part.outcomes)
        bad.extend(part.first_bad)
        for ftype, order in part.fail_all.items():
            if ftype not in first_fail or order < first_fail[ftype]:
                first_fail[ftype] = order
    events.extend((order, 0, why) for order, why in sorted(bad)[:MAX_LINE_WARNINGS])
    events.extend((order, 1, ftype) for ftype, order in first_fail.items())
    for order, rank, payload in sorted(events):
        if rank == 0:
            problems.line_warning(f"{place(order)}: {payload}; line skipped")
        elif rank == 1:
            problems.failed.setdefault(
                payload, f"an unreadable line in the export ({place(order)})"
            )
        else:
            read_outcome(parse_json(payload), place(order), problems)
    problems.unreadable_lines = sum(part.bad_total for part in facts)

    # log.ndjson and manifest.json are small: copy them here and read them as the local reader.
    context = spark.sparkContext
    with tempfile.TemporaryDirectory(prefix="fhir-trial-spark-") as tmp:
        if LOG_FILE in files:
            lines = context.textFile(files[LOG_FILE]).collect()
            log = Path(tmp) / LOG_FILE
            log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            read_log(log, problems)
        if MANIFEST_FILE in files:
            content = context.wholeTextFiles(files[MANIFEST_FILE]).collect()
            text = content[0][1] if content else ""
            (Path(tmp) / MANIFEST_FILE).write_text(text, encoding="utf-8")
        read_manifest(Path(tmp), present, problems)
    return problems


def run_spark_screening(
    spark: SparkSession,
    directory_or_uri: str | Path,
    settings: Settings,
    missing_categories: Iterable[str] = (),
    *,
    partitions: int | None = None,
    what_if: Sequence[Settings] = (),
) -> SparkScreening:
    """Screen every patient of a Bulk Data export with Spark; see the module docstring.

    ``partitions``: how many groups of patients are evaluated in parallel (default: Spark's
    default parallelism, or one per eight input splits when there are more). Raises
    :class:`InputError` for a folder that does not exist or holds no NDJSON, or for an unknown
    category in ``missing_categories``.
    """
    from pyspark import StorageLevel

    missing = check_categories(missing_categories)
    if settings.as_of is None:  # every executor screens for the same day
        settings = settings.replace(as_of=dt.date.today())
    what_if = tuple(s if s.as_of else s.replace(as_of=settings.as_of) for s in what_if)
    terminology = load_terminology(settings.resources_dir)

    uri = _folder_uri(spark, directory_or_uri)
    files = _list_files(spark, uri)
    names = sorted(
        name
        for name in files
        if (name.endswith(".ndjson") or name.endswith(".ndjson.gz")) and name != LOG_FILE
    )
    if not names:
        raise InputError(f"{directory_or_uri} holds no .ndjson files")
    present = {t for t in (file_type(Path(name)) for name in names) if t}

    context = spark.sparkContext
    # One split per small file; large files are still split by block (128 MB by default).
    file_rdds = [context.textFile(files[name], minPartitions=1) for name in names]
    partition_file: list[str] = []
    for name, rdd in zip(names, file_rdds, strict=True):
        partition_file.extend([name] * rdd.getNumPartitions())
    file_types = [file_type(Path(name)) for name in partition_file]
    lines = context.union(file_rdds) if len(file_rdds) > 1 else file_rdds[0]
    parsed = lines.mapPartitionsWithIndex(partial(_parse_partition, file_types)).persist(
        StorageLevel.MEMORY_AND_DISK
    )

    facts = parsed.mapPartitions(_partition_facts).collect()
    counts: dict[int, int] = {}
    for part in facts:
        counts.update(part.lines)
    where: dict[int, tuple[str, int]] = {}
    before = 0
    for index, name in enumerate(partition_file):
        if index == 0 or partition_file[index - 1] != name:
            before = 0
        where[index] = (name, before)
        before += counts.get(index, 0)
    problems = _export_problems(spark, facts, where, files, present)

    shared = context.broadcast(
        _Shared(
            settings=settings,
            what_if=what_if,
            terminology=terminology,
            missing=missing,
            failed=dict(problems.failed),
            warnings=problems.summary(),
            where=where,
        )
    )
    width = partitions or max(context.defaultParallelism, -(-len(partition_file) // 8))
    uses = parsed.filter(lambda item: item[0] == _USES).map(lambda i: (i[1], i[2])).distinct(width)
    medications = (
        parsed.filter(lambda item: item[0] == _MEDICATION)
        .map(lambda i: (i[1], (i[2], i[3])))
        .reduceByKey(min, width)  # the first Medication of an id, in file order
    )
    shared_medications = uses.join(medications, width).map(
        lambda kv: (kv[1][0], (_SHARED, kv[1][1][0], kv[0], kv[1][1][1]))
    )
    groups = parsed.flatMap(_by_patient).union(shared_medications).groupByKey(width)
    evaluated = groups.flatMap(partial(_screen_group, shared)).persist(StorageLevel.MEMORY_AND_DISK)
    parts = evaluated.mapPartitions(partial(_count_partition, 1 + len(what_if))).collect()
    counters = [merge_feasibility(part[run] for part in parts) for run in range(1 + len(what_if))]
    parsed.unpersist()
    frame = spark.createDataFrame(evaluated.map(_report_row), REPORT_SCHEMA)
    return SparkScreening(evaluated, frame, counters[0], problems, counters[1:])


def screen_ndjson_spark(
    spark: SparkSession,
    directory_or_uri: str | Path,
    settings: Settings,
    missing_categories: Iterable[str] = (),
) -> tuple[DataFrame, Feasibility]:
    """Screen a Bulk Data export on Spark: per-patient reports and the feasibility report.

    Returns a DataFrame with one row per Patient (``patient`` as ``Patient/<id>``, ``verdict``,
    ``report``: the JSON text the CLI writes with ``--output``; rows in no particular order) and
    the :class:`Feasibility` the local path would give. ``missing_categories`` as in
    :class:`~fhir_trial.sources.ndjson.NdjsonExport`.
    """
    screening = run_spark_screening(spark, directory_or_uri, settings, missing_categories)
    return screening.reports, screening.feasibility


# ----------------------------------------------------------------------------- command line
def run_screen_population(
    ndjson: str,
    missing: Sequence[str],
    settings: Settings,
    *,
    output_format: str,
    output: str | None,
    master: str | None,
    patient_lines: int,
    what_if: Sequence[WhatIf] = (),
    report_dir: str | None = None,
    min_count: int = 0,
) -> None:
    """``screen-population --engine spark``: the same outputs as the local engine.

    Patients are listed in export order (the first ``patient_lines`` with ``--format text``,
    every report in ``--output FILE`` and ``--report DIR``'s phi/ files); the feasibility
    report (baseline and what-if runs) is counted on the executors.
    """
    from pyspark.sql import SparkSession

    from fhir_trial.population.model import FeasibilityReport
    from fhir_trial.population.worklist import ReportDirectory

    existing = SparkSession.getActiveSession()
    with ExitStack() as stack:
        sink: IO[str] | None = None
        if output:  # before the run: an unwritable path fails fast
            try:
                sink = stack.enter_context(open(output, "w", encoding="utf-8"))
            except OSError as exc:
                raise InputError(f"cannot write {output}: {exc.strerror or exc}") from None
        spark = spark_session(master)
        if existing is None:
            stack.callback(spark.stop)
        screening = run_spark_screening(
            spark, ndjson, settings, missing, what_if=[run.settings for run in what_if]
        )
        feasibility = screening.feasibility
        if feasibility.total == 0:
            raise InputError("no patient could be screened: the input holds no Patient")
        report = FeasibilityReport(
            feasibility,
            [
                (run.label, run.changes, counter)
                for run, counter in zip(what_if, screening.what_if, strict=True)
            ],
            None,
            min_count,
        )
        if sink is not None or report_dir:
            directory = stack.enter_context(ReportDirectory(report_dir)) if report_dir else None
            ordered = screening.evaluated.sortBy(lambda item: item[0])
            for _, item in ordered.toLocalIterator():
                if sink is not None:
                    sink.write(_report_text(item.report) + "\n")
                if directory is not None:
                    directory.add(item)
            if directory is not None:
                directory.finish(report)
        shown = 0
        if output_format == "text":
            for _, item in screening.evaluated.takeOrdered(patient_lines, key=lambda i: i[0]):
                click.echo(verdict_line(item))
                shown += 1
            if feasibility.total > shown:
                click.echo(
                    f"... {feasibility.total - shown} more patients (--output FILE lists all)"
                )
        screening.evaluated.unpersist()
    if shown and output_format == "text":
        click.echo()
    click.echo(report.render(output_format), nl=False)
