"""PatientRecords from a Bulk Data export folder (NDJSON), streamed with flat memory.

Layout: one or more files per resource type (``Patient.000.ndjson``, ``Condition.ndjson``,
``MedicationRequest.001.ndjson.gz``, ...), optionally ``log.ndjson`` (the export client's event
log), OperationOutcome error files, and ``manifest.json`` (the Bulk Data completion manifest).

How it works: every data file is read once, line by line, into an on-disk SQLite index (a temporary
file, deleted afterwards) keyed by the patient each resource refers to; then the records are built
and yielded one patient at a time. Only the resource types the criteria read are indexed (see
``KEPT_TYPES``); Medication resources are kept aside so medication references resolve.

Completeness (CRITERIA.md): an export counts as complete for every category, so a type with no
file (the shared 10-patient fixture has no Observation file) is obtained-but-empty, **unless**:

- the caller lists it in ``missing_categories`` (CLI: ``--missing Observation``);
- ``manifest.json`` lists output of that type but no file for it is in the folder;
- the export reports an error about that type: an OperationOutcome (in an error file or in
  ``log.ndjson``) with an error/fatal issue naming the type, or a log event whose id contains
  ``error`` naming it (for example a failed download of ``Observation.000.ndjson``);
- a line of that type could not be read: the category is marked failed for the patients that line
  names (found by a text search for ``Patient/<id>``), or for every patient when it names none
  (an unreadable Patient line only loses that patient, with a warning).

Unreadable lines never stop the run: each becomes a warning ``<file>:<line>: <why>`` on the records.
"""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from fhir_trial.elements import child, objects
from fhir_trial.errors import InputError
from fhir_trial.json_input import JsonSyntaxError, parse_json
from fhir_trial.record import CATEGORIES, PatientRecord, Resource
from fhir_trial.sources._common import KEPT_TYPES, is_known_type, patient_refs

LOG_FILE = "log.ndjson"
MANIFEST_FILE = "manifest.json"
MAX_LINE_WARNINGS = 20  # per export; the rest are counted

_CATEGORY_WORD = re.compile(r"\b(" + "|".join(sorted(CATEGORIES, key=len, reverse=True)) + r")\b")
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


def classify_line(text: str) -> ExportLine:
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
        return ExportLine("other")
    if rtype == "Patient":
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            return ExportLine("bad", problem="Patient without id", blame="Patient")
        return ExportLine("patient", resource, key=rid)
    owners = tuple(
        sorted({ref[8:] for ref in patient_refs(resource) if ref.startswith("Patient/")})
    )
    if owners:
        return ExportLine("resource", resource, owners=owners)
    if rtype == "Medication" and isinstance(resource.get("id"), str):
        return ExportLine("medication", resource, key=f"Medication/{resource['id']}")
    return ExportLine("other")


class NdjsonExport:
    """A Bulk Data export folder; iterate it for one :class:`PatientRecord` per Patient.

    ``missing_categories``: categories the caller knows were not exported (marked failed, so the
    criteria needing them are ``unknown``). Use as a context manager, or call :meth:`close`, to
    delete the temporary index early; iterating to the end deletes it too.
    """

    def __init__(
        self,
        directory: str | Path,
        missing_categories: Iterable[str] = (),
        *,
        temp_dir: str | Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputError(f"{self.directory} is not a folder (expected a Bulk Data export)")
        self.missing = check_categories(missing_categories)
        self.files = data_files(self.directory)
        if not self.files:
            raise InputError(f"{self.directory} holds no .ndjson files")
        self._temp_dir = temp_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._db: sqlite3.Connection | None = None
        self.problems = ExportProblems()
        self.patient_count = 0

    # --------------------------------------------------------------------------- indexing
    def _index(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self._tmp = tempfile.TemporaryDirectory(prefix="fhir-trial-ndjson-", dir=self._temp_dir)
        db = sqlite3.connect(str(Path(self._tmp.name) / "index.sqlite3"))
        db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE patient (id TEXT PRIMARY KEY, body TEXT NOT NULL);
            CREATE TABLE resource (patient TEXT NOT NULL, body TEXT NOT NULL);
            CREATE TABLE shared (ref TEXT PRIMARY KEY, body TEXT NOT NULL);
            """
        )
        present: set[str] = set()
        for path in self.files:
            ftype = file_type(path)
            if ftype:
                present.add(ftype)
            self._index_file(db, path, ftype)
        log = self.directory / LOG_FILE
        if log.is_file():
            read_log(log, self.problems)
        read_manifest(self.directory, present, self.problems)
        db.execute("CREATE INDEX resource_patient ON resource (patient)")
        db.commit()
        self.patient_count = db.execute("SELECT COUNT(*) FROM patient").fetchone()[0]
        self._db = db
        return db

    def _index_file(self, db: sqlite3.Connection, path: Path, ftype: str | None) -> None:
        rows: list[tuple[str, str]] = []
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                text = line.strip()
                if not text:
                    continue
                where = f"{path.name}:{number}"
                parsed = classify_line(text)
                if parsed.kind == "bad":
                    self._bad_line(where, parsed.problem, text, parsed.blame or ftype)
                elif parsed.kind == "outcome" and parsed.resource is not None:
                    read_outcome(parsed.resource, where, self.problems)
                elif parsed.kind == "patient":
                    db.execute("INSERT OR IGNORE INTO patient VALUES (?, ?)", (parsed.key, text))
                elif parsed.kind == "resource":
                    rows.extend((owner, text) for owner in parsed.owners)
                elif parsed.kind == "medication":
                    db.execute("INSERT OR IGNORE INTO shared VALUES (?, ?)", (parsed.key, text))
                if len(rows) >= 1000:
                    db.executemany("INSERT INTO resource VALUES (?, ?)", rows)
                    rows.clear()
        if rows:
            db.executemany("INSERT INTO resource VALUES (?, ?)", rows)

    def _bad_line(self, where: str, why: str, text: str, ftype: str | None) -> None:
        self.problems.line_warning(f"{where}: {why}; line skipped")
        if ftype not in CATEGORIES or ftype == "Patient":
            return  # an unreadable Patient line loses that patient, not others' data
        reason = f"an unreadable line in the export ({where})"
        named = set(PATIENT_IN_TEXT.findall(text))
        if not named:
            self.problems.failed.setdefault(ftype, reason)
            return
        for patient_id in named:
            self.problems.failed_for.setdefault(patient_id, {}).setdefault(ftype, reason)

    # --------------------------------------------------------------------------- records
    def __iter__(self) -> Iterator[PatientRecord]:
        db = self._index()
        warnings = self.problems.summary()
        try:
            cursor = db.execute("SELECT id, body FROM patient ORDER BY rowid")
            while True:
                batch = cursor.fetchmany(64)
                if not batch:
                    break
                for patient_id, body in batch:
                    yield self._record(db, patient_id, body, warnings)
        finally:
            self.close()

    def _record(
        self, db: sqlite3.Connection, patient_id: str, body: str, warnings: list[str]
    ) -> PatientRecord:
        def shared_medication(ref: str) -> Resource | None:
            row = db.execute("SELECT body FROM shared WHERE ref = ?", (ref,)).fetchone()
            return parse_json(row[0]) if row else None

        return assemble_record(
            parse_json(body),
            (
                parse_json(text)
                for (text,) in db.execute(
                    "SELECT body FROM resource WHERE patient = ?", (patient_id,)
                )
            ),
            shared_medication,
            failed=[self.problems.failed, self.problems.failed_for.get(patient_id, {})],
            missing=self.missing,
            warnings=warnings,
        )

    def count_patients(self) -> int:
        """How many Patients the export holds (indexes the folder on first call)."""
        self._index()
        return self.patient_count

    def close(self) -> None:
        """Delete the temporary index."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

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
    directory: str | Path, missing_categories: Collection[str] = ()
) -> Iterator[PatientRecord]:
    """One :class:`PatientRecord` per Patient of a Bulk Data export folder, streamed.

    ``missing_categories`` names categories known not to be in the export (marked failed). See the
    module docstring for what else marks a category failed. Raises :class:`InputError` for a
    folder that does not exist or holds no NDJSON, or for an unknown category name.
    """
    return iter(NdjsonExport(directory, missing_categories))


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
    medication_refs: set[str] = set()
    for resource in resources:
        record.add(resource)
        ref = child(resource.get("medicationReference"), "reference")
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
