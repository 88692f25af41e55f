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
   (a type with no file is missing data unless ``_type`` or ``complete_types`` vouches for it;
   failed by the export's own errors, or for a patient an unreadable line names), and evaluated
   with :func:`~fhir_trial.sources.ndjson_versions.screen_patient` (differing versions of a
   resource make the criteria they split needs-review; two different Patients sharing an id are
   not screened). The ValueSets are loaded once on the driver and broadcast, so executors need
   the package but not ``resources/``.
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError, InputError
from fhir_trial.json_input import parse_json
from fhir_trial.population.local import Feasibility, Screened, verdict_line
from fhir_trial.population.whatif import WhatIf
from fhir_trial.record import CATEGORIES, PatientRecord, Resource
from fhir_trial.report import EligibilityReport
from fhir_trial.sources._common import KEPT_TYPES
from fhir_trial.sources.ndjson import (
    LOG_FILE,
    MANIFEST_FILE,
    MAX_LINE_WARNINGS,
    ExportProblems,
    assemble_record,
    check_categories,
    classify_line,
    file_type,
    read_log,
    read_manifest,
    read_outcome,
)
from fhir_trial.sources.ndjson_account import (
    InputAccount,
    RejectedLine,
    absent_types,
    requested_types_from_manifest,
)
from fhir_trial.sources.ndjson_buckets import PATIENT_REF_TEXT, reads
from fhir_trial.sources.ndjson_versions import screen_with_what_if
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


def _bad_item(
    order: Order, why: str, text: str, ftype: str | None, file_kind: str | None
) -> tuple[Any, ...]:
    """An unreadable line: the patients it names (the local split's rule), else nobody's."""
    named: tuple[str, ...] = ()
    if ftype != "Patient" and file_kind != "Patient":
        named = tuple(sorted(set(PATIENT_REF_TEXT.findall(text))))
    return (_BAD, order, ftype, why, named)


def _parse_partition(
    file_types: Sequence[str | None], index: int, lines: Iterable[str]
) -> Iterator[tuple[Any, ...]]:
    """Executor side: the tagged items of one partition's lines (the local reader's rules)."""
    ftype = file_types[index]
    count = nonempty = 0
    looked_at = reads(ftype)  # files of types the criteria do not read are only counted
    tally: dict[tuple[str, str], int] = {}  # ("read" | "orphan" | "not-read" | "bad", type)
    for position, line in enumerate(lines):
        count = position + 1
        text = line.strip()
        if not text:
            continue
        nonempty += 1
        if not looked_at:
            continue
        order = (index, position)
        line_kind = classify_line(text)
        _tally(tally, line_kind, ftype)
        if line_kind.kind == "bad":
            yield _bad_item(order, line_kind.problem, text, line_kind.blame or ftype, ftype)
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
    yield (_LINES, index, count, nonempty, tally)


def _tally(tally: dict[tuple[str, str], int], line_kind: Any, ftype: str | None) -> None:
    """Count one line for the input account, as the local reader counts it."""
    kind = line_kind.kind
    if kind == "bad":
        key = ("bad", str(line_kind.blame or ftype))
    elif line_kind.resource is None:
        return
    else:
        rtype = str(line_kind.resource.get("resourceType"))
        if kind in ("resource", "patient", "medication"):
            key = ("read", rtype)
        elif kind == "other" and rtype in KEPT_TYPES:
            key = ("orphan", rtype)
        elif kind == "other":
            key = ("not-read", rtype)
        else:
            return
    tally[key] = tally.get(key, 0) + 1


@dataclass
class _PartitionFacts:
    """What the driver needs from one partition: line count, outcomes, unreadable lines."""

    lines: dict[int, int] = dataclasses.field(default_factory=dict)
    outcomes: list[tuple[Order, str]] = dataclasses.field(default_factory=list)
    # unreadable lines naming no patient: (order, why, type), the first MAX_LINE_WARNINGS
    first_bad: list[tuple[Order, str, str | None]] = dataclasses.field(default_factory=list)
    bad_total: int = 0
    unnamed: int = 0
    nonempty: dict[int, int] = dataclasses.field(default_factory=dict)
    tally: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)


def _partition_facts(items: Iterable[tuple[Any, ...]]) -> Iterator[_PartitionFacts]:
    facts = _PartitionFacts()
    for item in items:
        tag = item[0]
        if tag == _LINES:
            facts.lines[item[1]] = item[2]
            facts.nonempty[item[1]] = item[3]
            for key, number in item[4].items():
                facts.tally[key] = facts.tally.get(key, 0) + number
        elif tag == _OUTCOME:
            facts.outcomes.append((item[1], item[2]))
        elif tag == _BAD:
            _, order, ftype, why, named = item
            facts.bad_total += 1
            warns = ftype is None or (ftype in CATEGORIES and ftype != "Patient")
            if warns and not named:
                facts.unnamed += 1
                if len(facts.first_bad) < MAX_LINE_WARNINGS:
                    facts.first_bad.append((order, why, ftype))
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


def _patient_parts(
    items: Iterable[tuple[Any, ...]], shared: _Shared
) -> tuple[Resource, list[tuple[str, Resource]], dict[str, str], dict[str, str], Order] | None:
    """``(patient, placed resources, medications, failed_for, order)``; None without one Patient.

    Two different Patients sharing the id are never merged: None (not screened), as locally.
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
    patients.sort()
    patient = parse_json(patients[0][2])
    if any(parse_json(text) != patient for _, _, text in patients[1:]):
        return None
    failed_for: dict[str, str] = {}
    for _, order, ftype in sorted(bad):
        if ftype in CATEGORIES and ftype != "Patient":
            failed_for.setdefault(
                ftype, f"an unreadable line in the export ({shared.place(order)})"
            )
    placed = [(shared.place(order), parse_json(text)) for _, order, text in sorted(resources)]
    return patient, placed, medications, failed_for, patients[0][1]


def _builder(
    patient: Resource, medications: dict[str, str], failed_for: dict[str, str], shared: _Shared
) -> Callable[[list[Resource]], PatientRecord]:
    def build(resources: list[Resource]) -> PatientRecord:
        return assemble_record(
            patient,
            resources,
            lambda ref: parse_json(medications[ref]) if ref in medications else None,
            failed=[shared.failed, failed_for],
            missing=shared.missing,
            warnings=shared.warnings,
        )

    return build


def build_record(items: Iterable[tuple[Any, ...]], shared: _Shared) -> PatientRecord | None:
    """One patient's :class:`PatientRecord` from its grouped items, or None without a Patient.

    The first Patient line, then :func:`fhir_trial.sources.ndjson.assemble_record`'s rules (the
    same as the local reader's); unreadable lines fail their own category for this patient.
    """
    parts = _patient_parts(items, shared)
    if parts is None:
        return None
    patient, placed, medications, failed_for, _ = parts
    return _builder(patient, medications, failed_for, shared)([r for _, r in placed])


def _screen_group(
    shared_value: Any, group: tuple[str, Iterable[tuple[Any, ...]]]
) -> Iterator[tuple[Order, Screened]]:
    """Executor side: build and evaluate one patient's record (baseline and what-if runs);
    keyed by its Patient line. Differing versions of a resource are settled as locally
    (:func:`~fhir_trial.sources.ndjson_versions.screen_patient`).
    """
    shared: _Shared = shared_value.value
    parts = _patient_parts(list(group[1]), shared)
    if parts is None:
        return
    patient, placed, medications, failed_for, order = parts
    build = _builder(patient, medications, failed_for, shared)
    report, variants, _notes = screen_with_what_if(
        build, placed, shared.settings, shared.what_if, shared.terminology
    )
    yield order, Screened(report, "", variants)


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
    # What the export held (a cheaper account than the local engine's: types, files, lines,
    # missing and vouched types, unreadable lines; no duplicate or orphan lists).
    account: InputAccount = dataclasses.field(default_factory=InputAccount)


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


def place_of(where: Mapping[int, tuple[str, int]], order: Order) -> str:
    """``<file>:<line>`` of a line from its (partition, position)."""
    name, before = where[order[0]]
    return f"{name}:{before + order[1] + 1}"


def _export_problems(
    spark: SparkSession,
    facts: list[_PartitionFacts],
    where: dict[int, tuple[str, int]],
    files: dict[str, str],
    present: set[str],
    requested_types: set[str] | None = None,
    complete_types: Iterable[str] = (),
    account: InputAccount | None = None,
) -> ExportProblems:
    """The local reader's :class:`ExportProblems`, replayed in file order from the facts."""
    problems = ExportProblems()
    account = account if account is not None else InputAccount()

    def place(order: Order) -> str:
        name, before = where[order[0]]
        return f"{name}:{before + order[1] + 1}"

    events: list[tuple[Order, int, str]] = []  # rank: 0 warning, 1 outcome
    bad: list[tuple[Order, str, str | None]] = []
    for part in facts:
        events.extend((order, 1, text) for order, text in part.outcomes)
        bad.extend(part.first_bad)
    bad.sort(key=lambda item: item[0])
    for order, why, ftype in bad[:MAX_LINE_WARNINGS]:
        events.append(
            (
                order,
                0,
                f"{why}; the line names no patient, so any patient's {ftype or 'some'} "
                "data may be incomplete",
            )
        )
    for order, rank, payload in sorted(events):
        if rank == 0:
            problems.line_warning(f"{place(order)}: {payload}")
        else:
            read_outcome(parse_json(payload), place(order), problems)
    problems.unreadable_lines = sum(part.unnamed for part in facts)

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
        if requested_types is None:
            requested_types = requested_types_from_manifest(Path(tmp))
    missing, vouched = absent_types(present, requested_types, complete_types)
    for category, why in missing.items():
        problems.failed.setdefault(category, why)
    account.missing, account.vouched = missing, vouched
    return problems


def run_spark_screening(
    spark: SparkSession,
    directory_or_uri: str | Path,
    settings: Settings,
    missing_categories: Iterable[str] = (),
    *,
    partitions: int | None = None,
    requested_types: set[str] | None = None,
    complete_types: Iterable[str] = (),
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
    complete = check_categories(complete_types)
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
    account = InputAccount()
    problems = _export_problems(
        spark, facts, where, files, present, requested_types, complete, account
    )
    for name in names:
        account.type(file_type(Path(name)) or "(type not in the file name)").files.append(name)
    nonempty: dict[int, int] = {}
    for part in facts:
        nonempty.update(part.nonempty)
        for (what, rtype), number in part.tally.items():
            if what == "read":
                account.type(rtype).resources += number
            elif what == "orphan":
                account.type(rtype).without_patient += number
                account.orphans_total += number
            elif what == "not-read":
                account.not_read[rtype] = account.not_read.get(rtype, 0) + number
            else:
                account.type(rtype).rejected += number
    for index, ftype in enumerate(file_types):
        in_partition = nonempty.get(index, 0)
        account.type(ftype or "(type not in the file name)").lines += in_partition
        if not reads(ftype):
            account.not_read[str(ftype)] = account.not_read.get(str(ftype), 0) + in_partition
    account.rejected_total = sum(part.bad_total for part in facts)
    for part in facts:
        for order, why, ftype in part.first_bad:
            account.rejected.append(RejectedLine(place_of(where, order), why, ftype))
            name = ftype or "some"
            account.lost_unknown_patient[name] = account.lost_unknown_patient.get(name, 0) + 1
    account.sort()

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
    # Resources naming only patients the export does not hold (the local reader's orphans).
    absent = (
        groups.filter(lambda kv: not any(item[0] == _PATIENT for item in kv[1]))
        .flatMap(lambda kv: [(item[1], item[2]) for item in kv[1] if item[0] == _RESOURCE])
        .reduceByKey(lambda a, _b: a)
        .map(lambda kv: str(parse_json(kv[1]).get("resourceType")))
        .countByValue()
    )
    for rtype, number in absent.items():
        account.type(rtype).without_patient += number
        account.orphans_total += number
    evaluated = groups.flatMap(partial(_screen_group, shared)).persist(StorageLevel.MEMORY_AND_DISK)
    parts = evaluated.mapPartitions(partial(_count_partition, 1 + len(what_if))).collect()
    counters = [merge_feasibility(part[run] for part in parts) for run in range(1 + len(what_if))]
    parsed.unpersist()
    frame = spark.createDataFrame(evaluated.map(_report_row), REPORT_SCHEMA)
    account.patients = counters[0].total
    return SparkScreening(evaluated, frame, counters[0], problems, counters[1:], account)


def screen_ndjson_spark(
    spark: SparkSession,
    directory_or_uri: str | Path,
    settings: Settings,
    missing_categories: Iterable[str] = (),
    *,
    requested_types: set[str] | None = None,
    complete_types: Iterable[str] = (),
) -> tuple[DataFrame, Feasibility]:
    """Screen a Bulk Data export on Spark: per-patient reports and the feasibility report.

    Returns a DataFrame with one row per Patient (``patient`` as ``Patient/<id>``, ``verdict``,
    ``report``: the JSON text the CLI writes with ``--output``; rows in no particular order) and
    the :class:`Feasibility` the local path would give. ``missing_categories`` as in
    :class:`~fhir_trial.sources.ndjson.NdjsonExport`.
    """
    screening = run_spark_screening(
        spark,
        directory_or_uri,
        settings,
        missing_categories,
        requested_types=requested_types,
        complete_types=complete_types,
    )
    return screening.reports, screening.feasibility


# ----------------------------------------------------------------------------- command line
def run_screen_population(
    ndjson: str,
    missing: Sequence[str],
    settings: Settings,
    *,
    complete: Sequence[str] = (),
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
            spark,
            ndjson,
            settings,
            missing,
            complete_types=complete,
            what_if=[run.settings for run in what_if],
        )
        feasibility = screening.feasibility
        click.echo("Inputs:", err=True)
        for line in screening.account.summary():
            click.echo(f"  {line}", err=True)
        if feasibility.total == 0:
            raise InputError("no patient could be screened: the input holds no Patient")
        report = FeasibilityReport(
            feasibility,
            [
                (run.label, run.changes, counter)
                for run, counter in zip(what_if, screening.what_if, strict=True)
            ],
            screening.account.aggregates(),
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
