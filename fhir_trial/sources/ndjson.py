"""PatientRecords from a Bulk Data export folder (NDJSON), streamed with flat memory.

Layout: one or more files per resource type (``Patient.000.ndjson``, ``Condition.ndjson``,
``MedicationRequest.001.ndjson.gz``, ...), optionally ``log.ndjson`` (the export client's event
log), OperationOutcome error files, and ``manifest.json`` (the Bulk Data completion manifest).

How it works: the folder is split once into per-patient buckets on disk
(:mod:`fhir_trial.sources.ndjson_buckets`: a byte search for ``Patient/<id>``, no parsing), then
each bucket is parsed once and its records built one patient at a time; screening runs buckets in
worker processes (:mod:`fhir_trial.sources.ndjson_screen`). Files of types the criteria do not
read (see ``KEPT_TYPES``) are counted, not parsed; Medication resources are kept aside so
medication references resolve. :attr:`NdjsonExport.account` (an
:class:`~fhir_trial.sources.ndjson_account.InputAccount`) says what became of every input.

Completeness (CRITERIA.md, "Completeness"): a type the criteria read is complete when the export
holds a file for it, or when the kick-off listed it in ``_type`` (``requested_types``, or the
``request`` of ``manifest.json``), or when the caller says so (``complete_types``, CLI
``--complete``); otherwise it is missing data ("not in the export": its criteria are
``unknown``). A type is also marked failed when:

- the caller lists it in ``missing_categories`` (CLI: ``--missing Observation``);
- ``manifest.json`` lists output of that type but no file for it is in the folder;
- the export reports an error about that type: an OperationOutcome (in an error file or in
  ``log.ndjson``) with an error/fatal issue naming the type, or a log event whose id contains
  ``error`` naming it (for example a failed download of ``Observation.000.ndjson``);
- a line of that type could not be read: the category is marked failed for the patients that line
  names (found by a text search for ``Patient/<id>``) and for no one else; a line naming nobody
  fails no one but warns every record (an unreadable Patient line loses that patient, named).

Unreadable lines never stop the run; they are listed (``<file>:<line>``, why, whose) in the
account. A line longer than ``max_line_bytes`` is refused without being held in memory.
"""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from operator import methodcaller
from pathlib import Path
from typing import IO, Any, Literal

from fhir_trial.elements import child, objects
from fhir_trial.errors import InputError
from fhir_trial.json_input import JsonSyntaxError, parse_json
from fhir_trial.record import CATEGORIES, PatientRecord, Resource
from fhir_trial.sources._common import KEPT_TYPES, is_known_type, patient_refs
from fhir_trial.sources.ndjson_account import (
    InputAccount,
    RejectedLine,
    absent_types,
    requested_types_from_manifest,
)
from fhir_trial.sources.ndjson_buckets import (
    BucketJob,
    PatientGroup,
    SplitResult,
    SplitTask,
    bucket_count,
    bucket_patients,
    plan_ranges,
    reads,
    split_range,
)
from fhir_trial.sources.ndjson_pool import map_helped

LOG_FILE = "log.ndjson"
MANIFEST_FILE = "manifest.json"
MAX_LINE_WARNINGS = 20  # per export; the rest are counted
DEFAULT_MAX_LINE_BYTES = (
    64 * 1024 * 1024
)  # a longer line is refused (Settings.ndjson_max_line_bytes)

_CATEGORY_WORD = re.compile(r"\b(" + "|".join(sorted(CATEGORIES, key=len, reverse=True)) + r")\b")
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
PATIENT_IN_TEXT = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})")


@dataclass
class ExportProblems:
    """What the export itself says went wrong, and lines that could not be read."""

    failed: dict[str, str] = field(default_factory=dict)  # category -> reason, for everyone
    failed_for: dict[str, dict[str, str]] = field(default_factory=dict)  # patient id -> ...
    warnings: list[str] = field(default_factory=list)
    unreadable_lines: int = 0

    def line_warning(self, message: str) -> None:
        """Record one unreadable line (the first MAX_LINE_WARNINGS are spelled out)."""
        self.unreadable_lines += 1
        if self.unreadable_lines <= MAX_LINE_WARNINGS:
            self.warnings.append(message)

    def summary(self) -> list[str]:
        """Warnings to attach to every record."""
        out = list(self.warnings)
        extra = self.unreadable_lines - MAX_LINE_WARNINGS
        if extra > 0:
            out.append(f"... and {extra} more unreadable NDJSON lines")
        return out


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def file_type(path: Path) -> str | None:
    """The resource type a file name announces (``Condition.000.ndjson``, ``1.Condition.ndjson``)."""
    for part in path.name.split("."):
        if is_known_type(part):
            return part
    return None


def data_files(directory: Path) -> list[Path]:
    """The NDJSON files of an export folder, log excluded, in a stable order."""
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and (p.name.endswith(".ndjson") or p.name.endswith(".ndjson.gz"))
    ]
    return sorted(p for p in files if p.name != LOG_FILE)


def _categories_named(text: str) -> set[str]:
    return set(_CATEGORY_WORD.findall(text))


def read_outcome(outcome: dict[str, Any], where: str, problems: ExportProblems) -> None:
    """An OperationOutcome the export wrote: error/fatal issues naming a type fail that category."""
    for issue in objects(outcome.get("issue")):
        if issue.get("severity") not in ("error", "fatal"):
            continue
        texts = [
            str(issue.get("diagnostics") or ""),
            str(child(issue.get("details"), "text") or ""),
            " ".join(str(e) for e in issue.get("expression") or []),
        ]
        named = _categories_named(" ".join(texts))
        for category in named:
            problems.failed.setdefault(category, f"the export reported an error for {category}")
        if not named:
            problems.warnings.append(f"{where}: the export reported an error not tied to a type")


def read_log(path: Path, problems: ExportProblems) -> None:
    """``log.ndjson``: OperationOutcomes and error events that name a resource type."""
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = parse_json(line)
            except ValueError:
                problems.warnings.append(f"{path.name}:{number}: not JSON, ignored")
                continue
            if not isinstance(event, dict):
                continue
            if event.get("resourceType") == "OperationOutcome":
                read_outcome(event, f"{path.name}:{number}", problems)
                continue
            event_id = str(event.get("eventId") or "")
            if "error" not in event_id.lower():
                continue
            named = _categories_named(json.dumps(event.get("eventDetail", ""), ensure_ascii=False))
            for category in named:
                problems.failed.setdefault(
                    category, f"the export log reports {event_id} for {category}"
                )
            if not named:
                problems.warnings.append(f"{path.name}:{number}: the export log reports {event_id}")


def read_manifest(directory: Path, present: set[str], problems: ExportProblems) -> None:
    """``manifest.json``: a category listed as output whose file is not in the folder failed."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        problems.warnings.append(f"{MANIFEST_FILE}: not readable JSON, ignored")
        return
    if not isinstance(manifest, dict):
        return
    for item in manifest.get("output") or []:
        rtype = item.get("type") if isinstance(item, dict) else None
        if rtype in CATEGORIES and rtype not in present:
            problems.failed.setdefault(
                rtype, f"the export manifest lists {rtype} output but no {rtype} file was found"
            )


@dataclass(frozen=True)
class ExportLine:
    """What one NDJSON line of an export is: the rules every reader (local, Spark) shares.

    ``kind``: ``bad`` (with ``problem``; ``blame`` is the category to fail, None meaning the file's
    own type), ``outcome`` (an OperationOutcome about the export), ``patient`` (``key`` = its id),
    ``resource`` (``owners`` = the Patient ids it belongs to), ``medication`` (a shared Medication,
    ``key`` = ``Medication/<id>``) or ``other`` (a type the criteria do not read).
    """

    kind: Literal["bad", "outcome", "patient", "resource", "medication", "other"]
    resource: dict[str, Any] | None = None
    key: str = ""
    owners: tuple[str, ...] = ()
    problem: str = ""
    blame: str | None = None


def classify_line(text: str | bytes) -> ExportLine:
    """Parse one non-empty NDJSON line and say what it is (never raises)."""
    try:
        resource = parse_json(text)
    except JsonSyntaxError as exc:
        return ExportLine("bad", problem=str(exc).removeprefix("is "))
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return ExportLine("bad", problem="not a FHIR resource (no resourceType)")
    rtype = resource["resourceType"]
    if rtype == "OperationOutcome":
        return ExportLine("outcome", resource)
    if rtype not in KEPT_TYPES:
        return ExportLine("other", resource)
    if rtype == "Patient":
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            return ExportLine("bad", problem="Patient without id", blame="Patient")
        if not FHIR_ID.fullmatch(rid):
            return ExportLine("bad", problem="Patient id is not a FHIR id", blame="Patient")
        return ExportLine("patient", resource, key=rid)
    owners = tuple(
        sorted({ref[8:] for ref in patient_refs(resource) if ref.startswith("Patient/")})
    )
    if owners:
        return ExportLine("resource", resource, owners=owners)
    if rtype == "Medication" and isinstance(resource.get("id"), str):
        return ExportLine("medication", resource, key=f"Medication/{resource['id']}")
    return ExportLine("other", resource)


class NdjsonExport:
    """A Bulk Data export folder; iterate it for one :class:`PatientRecord` per Patient.

    ``missing_categories``: categories the caller knows were not exported (marked failed, so the
    criteria needing them are ``unknown``). ``requested_types``: the kick-off's ``_type`` (from
    the Bulk client; else read from ``manifest.json``'s ``request``); ``complete_types``: types the
    user says the export is complete for. A type the criteria read with no file and neither is
    missing data (see :func:`~fhir_trial.sources.ndjson_account.absent_types`).

    The folder is split into per-patient buckets on first use (:meth:`prepare`, see
    :mod:`fhir_trial.sources.ndjson_buckets`); :attr:`account` then says what every input became.
    Records come out bucket by bucket (export order within a bucket; a small export is one
    bucket). Use as a context manager, or call :meth:`close`, to delete the temporary files early;
    iterating to the end deletes them too.
    """

    def __init__(
        self,
        directory: str | Path,
        missing_categories: Iterable[str] = (),
        *,
        temp_dir: str | Path | None = None,
        requested_types: set[str] | None = None,
        complete_types: Iterable[str] = (),
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputError(f"{self.directory} is not a folder (expected a Bulk Data export)")
        self.missing = check_categories(missing_categories)
        self.complete = check_categories(complete_types)
        self.requested_types = (
            requested_types
            if requested_types is not None
            else requested_types_from_manifest(self.directory)
        )
        self.files = data_files(self.directory)
        if not self.files:
            raise InputError(f"{self.directory} holds no .ndjson files")
        self.max_line_bytes = max_line_bytes
        self._temp_dir = temp_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._scratch_path: Path | None = None
        self.problems = ExportProblems()
        self.account = InputAccount()
        self.jobs: list[BucketJob] = []
        self.patient_count = 0
        self._prepared = False

    # --------------------------------------------------------------------------- split
    @property
    def scratch(self) -> Path:
        """The temporary folder of this export's buckets (created on first use)."""
        if self._scratch_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fhir-trial-ndjson-", dir=self._temp_dir)
            self._scratch_path = Path(self._tmp.name)
        return self._scratch_path

    def prepare(self, pool: Executor | None = None) -> None:
        """Split the export into buckets (in ``pool`` when given) and read its own reports."""
        if self._prepared:
            return
        scratch = self.scratch
        stats = [p.stat() for p in self.files]
        sizes = [stat.st_size for stat in stats]
        types = [file_type(p) for p in self.files]
        kept = sum(
            size * (8 if p.name.endswith(".gz") else 1)
            for p, size, t in zip(self.files, sizes, types, strict=True)
            if reads(t)
        )
        buckets = bucket_count(kept)
        tasks = [
            SplitTask(
                index,
                range_index,
                str(path),
                ftype,
                start,
                end,
                str(scratch / f"split-{index}-{range_index}.bin"),
                buckets,
                self.max_line_bytes,
            )
            for index, (path, ftype, size) in enumerate(zip(self.files, types, sizes, strict=True))
            for range_index, (start, end) in enumerate(plan_ranges(path, size))
        ]
        if pool is None:
            results = [split_range(task) for task in tasks]
        else:  # this process splits too, while the workers start
            costs = [
                (task.end or sizes[task.file_index]) - task.start
                for task in tasks  # a gzip file is one task
            ]
            results = map_helped(pool, split_range, tasks, costs)
        lines_before: dict[tuple[int, int], int] = {}
        running: dict[int, int] = {}
        for result in results:  # tasks are in file, then range order
            lines_before[(result.file_index, result.range_index)] = running.get(
                result.file_index, 0
            )
            running[result.file_index] = running.get(result.file_index, 0) + result.lines
        names = tuple(p.name for p in self.files)

        def place(result: SplitResult, number: int) -> str:
            before = lines_before[(result.file_index, result.range_index)]
            return f"{names[result.file_index]}:{before + number}"

        medications = scratch / "medications.sqlite3"
        db = sqlite3.connect(str(medications))
        db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE shared (ref TEXT PRIMARY KEY, body BLOB NOT NULL);"
        )
        for path, ftype in zip(self.files, types, strict=True):
            account = self.account.type(ftype or "(type not in the file name)")
            account.files.append(path.name)
        self.patient_count = sum(result.patients for result in results)
        for result in results:
            ftype = types[result.file_index]
            tally = self.account.type(ftype or "(type not in the file name)")
            tally.lines += result.nonempty
            if not reads(ftype):
                self.account.not_read[str(ftype)] = (
                    self.account.not_read.get(str(ftype), 0) + result.nonempty
                )
            for rtype, count in result.not_read.items():
                self.account.not_read[rtype] = self.account.not_read.get(rtype, 0) + count
            for rtype, count in result.resources.items():
                self.account.type(rtype).resources += count
            for rtype, rid, why in result.orphans:
                self.account.orphan(rtype, rid, why)
            events: list[tuple[int, int, Any]] = [(n, 0, bad) for n, *bad in result.bad]
            events += [(n, 1, text) for n, text in result.outcomes]
            events += [(n, 2, None) for n in result.oversized]
            for number, rank, payload in sorted(events, key=lambda e: (e[0], e[1])):
                where = place(result, number)
                if rank == 1:
                    read_outcome(parse_json(payload), where, self.problems)
                elif rank == 2:
                    self.account.oversized.append(where)
                    why = f"longer than {self.max_line_bytes} bytes; refused"
                    self._lost(where, why, ftype)
                else:
                    why, rtype, _named, own = payload
                    if own:  # an unreadable Patient line: that patient is not screened
                        self.account.reject(RejectedLine(where, f"{why}; not screened", rtype, own))
                    else:
                        self._lost(where, why, rtype)
            db.executemany(
                "INSERT OR IGNORE INTO shared VALUES (?, ?)",
                ((ref, body) for _, ref, body in result.medications),
            )
        db.commit()
        db.close()
        present = {t for t in types if t}
        log = self.directory / LOG_FILE
        if log.is_file():
            read_log(log, self.problems)
        read_manifest(self.directory, present, self.problems)
        missing, vouched = absent_types(present, self.requested_types, self.complete)
        self.account.missing, self.account.vouched = missing, vouched
        for category, why in missing.items():
            self.problems.failed.setdefault(category, why)
        file_types = tuple(types)
        # Spans are read again from the data files: each worker checks they did not change.
        sources = tuple(
            (str(path), stat.st_size, stat.st_mtime_ns)
            for path, stat in zip(self.files, stats, strict=True)
        )
        self.jobs = [
            BucketJob(
                bucket,
                tuple(
                    (r.out_path, tuple(r.segments[bucket])) for r in results if bucket in r.segments
                ),
                names,
                file_types,
                lines_before,
                str(medications),
                sources,
                sum(r.spanned.get(bucket, 0) for r in results),
            )
            for bucket in range(buckets)
        ]
        self._prepared = True

    def _lost(self, where: str, why: str, rtype: str | None) -> None:
        """An unusable line whose patient cannot be told: counted, and a warning for everyone."""
        self.account.reject(RejectedLine(where, why, rtype, None))
        if rtype is None or rtype in CATEGORIES:
            name = rtype or "some"
            self.account.lost_unknown_patient[name] = (
                self.account.lost_unknown_patient.get(name, 0) + 1
            )
            if rtype != "Patient":
                self.problems.line_warning(
                    f"{where}: {why}; the line names no patient, so any patient's "
                    f"{name} data may be incomplete"
                )

    # --------------------------------------------------------------------------- records
    def builder(
        self, group: PatientGroup, medications: Callable[[str], Resource | None]
    ) -> Callable[[list[Resource]], PatientRecord]:
        """A function making this patient's record from its resources (the shared rules)."""
        failed = [self.problems.failed, group.failed_for]
        warnings = self.problems.summary()

        def build(resources: list[Resource]) -> PatientRecord:
            return assemble_record(
                group.patient,
                resources,
                medications,
                failed=failed,
                missing=self.missing,
                warnings=warnings,
            )

        return build

    def __iter__(self) -> Iterator[PatientRecord]:
        self.prepare()
        try:
            for job in self.jobs:
                for group, medications in bucket_patients(job, self.account):
                    self.account.patients += 1
                    yield self.builder(group, medications)(group.resources.resources)
        finally:
            self.close()

    def count_patients(self) -> int:
        """How many Patient resources with an id the export holds (splits the folder first)."""
        self.prepare()
        return self.patient_count

    def close(self) -> None:
        """Delete the temporary buckets."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._scratch_path = None
        self._prepared = False

    def __enter__(self) -> NdjsonExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_categories(categories: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(categories)
    unknown = sorted(wanted - set(CATEGORIES))
    if unknown:
        raise InputError(
            f"unknown data categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"choose from: {', '.join(CATEGORIES)}"
        )
    return wanted


def records_from_ndjson(
    directory: str | Path,
    missing_categories: Collection[str] = (),
    *,
    requested_types: set[str] | None = None,
    complete_types: Collection[str] = (),
) -> Iterator[PatientRecord]:
    """One :class:`PatientRecord` per Patient of a Bulk Data export folder, streamed.

    ``missing_categories`` names categories known not to be in the export (marked failed);
    ``requested_types`` (the kick-off's ``_type``) and ``complete_types`` (``--complete``) vouch
    for types without a file. See the module docstring for what else marks a category failed.
    Raises :class:`InputError` for a folder that does not exist or holds no NDJSON, or for an
    unknown category name.
    """
    return iter(
        NdjsonExport(
            directory,
            missing_categories,
            requested_types=requested_types,
            complete_types=complete_types,
        )
    )


_MEDICATION_REFERENCE = methodcaller("get", "medicationReference")


def assemble_record(
    patient: Resource,
    resources: Iterable[Resource],
    shared_medication: Callable[[str], Resource | None],
    *,
    failed: Iterable[Mapping[str, str]] = (),
    missing: Iterable[str] = (),
    warnings: Iterable[str] = (),
) -> PatientRecord:
    """One patient's record from an export: the rules every NDJSON reader (local or Spark) shares.

    The patient's own resources in export order; then the shared Medications its medication
    resources point to and that it does not hold itself (``shared_medication(ref)``); every category
    obtained (an export is complete), then failed by the export's problems (``failed``, applied in
    order: export-wide, then this patient's) and by the caller's ``missing`` list.
    """
    record = PatientRecord()
    record.warnings.extend(warnings)
    record.add(patient)
    resources = resources if isinstance(resources, list) else list(resources)
    record.add_all(resources)
    medication_refs: set[str] = set()
    # Absent from all but a few resources: found in C (a falsy holder has no reference either).
    for holder in filter(None, map(_MEDICATION_REFERENCE, resources)):
        ref = child(holder, "reference")
        if isinstance(ref, str) and ref.startswith("Medication/"):
            medication_refs.add(ref)
    for ref in sorted(medication_refs):
        if record.resolve(ref) is None:
            medication = shared_medication(ref)
            if medication is not None:
                record.add(medication)
    record.mark_obtained(*CATEGORIES)
    for problems in failed:
        for category, reason in problems.items():
            record.mark_failed(category, reason)
    for category in missing:
        record.mark_failed(category, f"{category} is not in the export (as the caller said)")
    return record
