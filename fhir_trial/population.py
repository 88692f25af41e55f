"""Screening many patients, and the feasibility report: who each criterion rules out.

Sources are streamed (one record at a time; Bulk NDJSON goes through an on-disk index), so memory
stays flat whatever the population size. With ``workers > 1`` the evaluation runs in a process pool
fed through a bounded window: at most a few records per worker are in flight.

Feasibility counts, per criterion of CRITERIA.md (in its order):

- ``removes``: patients the criterion rules out (an inclusion ``not-met``, an exclusion ``met``);
  a patient ruled out by three criteria counts once in each;
- ``remaining``: the funnel; patients still in after this criterion and every one before it;
- the number of patients in each status.

inc-ana, inc-anti-dsdna and inc-anti-sm only explain inc-autoantibody (``partOf``): they never rule
anyone out on their own, so they have status counts but no ``removes``/``remaining``.

Deceased patients (CRITERIA.md, "Real-world records") are a step of the funnel before the first
criterion: ``deceased`` counts the patients deceased on the screening date, and every per-criterion
count (``removes``, ``remaining``, the statuses) is over the living patients only, so the funnel
starts at ``patients - deceased``. Deceased patients count in the verdicts as ``ineligible``, never
as eligible or potentially eligible. The text and CSV forms show the step as a first row
``deceased``; the JSON form as the top-level ``deceased`` and ``living`` counts.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fhir_trial.config import Settings
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.errors import FhirTrialError, InputError
from fhir_trial.evaluate import evaluate
from fhir_trial.record import PatientRecord, Resource
from fhir_trial.report import STATUSES, EligibilityReport, Verdict
from fhir_trial.sources.bundle import read_json_file, records_from_bundle
from fhir_trial.sources.ndjson import NdjsonExport
from fhir_trial.sources.ndjson_screen import screen_export

VERDICTS: tuple[Verdict, ...] = ("eligible", "potentially-eligible", "ineligible")
DECEASED_STEP = "deceased"  # the funnel's first step, before the criteria
WINDOW_PER_WORKER = 4  # records in flight per worker process

T = TypeVar("T")
R = TypeVar("R")


def rules_out(kind: str, status: str) -> bool:
    """Whether a criterion result removes the patient (inclusion not-met, exclusion met)."""
    return (kind == "inclusion" and status == "not-met") or (
        kind == "exclusion" and status == "met"
    )


@dataclass(frozen=True)
class Skipped:
    """An input that produced no patient (not JSON, no Patient, ...), with a one-line reason."""

    source: str
    reason: str


@dataclass(frozen=True)
class Screened:
    """One patient's report, with a label for display (the file it came from, if any)."""

    report: EligibilityReport
    source: str = ""


@dataclass
class Feasibility:
    """Counters over many reports; constant memory whatever the number of patients."""

    as_of: str | None = None
    total: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(
        default_factory=lambda: {spec.id: Counter() for spec in CRITERIA}
    )
    removes: Counter[str] = field(default_factory=Counter)
    first_removed_by: Counter[str] = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)
    deceased: int = 0

    @property
    def living(self) -> int:
        """Patients alive on the screening date: where the criteria's funnel starts."""
        return self.total - self.deceased

    def add(self, report: EligibilityReport) -> None:
        """Count one patient's report (a deceased patient only in the deceased step and verdicts)."""
        self.total += 1
        self.as_of = self.as_of or report.as_of
        self.verdicts[report.verdict] += 1
        if report.deceased is not None:
            self.deceased += 1
            return
        first: str | None = None
        for result in report.criteria:
            self.statuses.setdefault(result.id, Counter())[result.status] += 1
            if result.part_of is None and rules_out(result.kind, result.status):
                self.removes[result.id] += 1
                first = first or result.id
        if first:
            self.first_removed_by[first] += 1

    def render(self, output_format: str) -> str:
        """The report in one of the CLI's formats: ``text``, ``json`` or ``csv``."""
        if output_format == "json":
            return json.dumps(self.to_json(), indent=2) + "\n"
        if output_format == "csv":
            return self.to_csv()
        return self.to_text()

    def merge(self, other: Feasibility) -> None:
        """Add another counter's counts to this one (e.g. one counter per Spark partition)."""
        self.total += other.total
        self.deceased += other.deceased
        self.as_of = self.as_of or other.as_of
        self.verdicts.update(other.verdicts)
        for criterion_id, counter in other.statuses.items():
            self.statuses.setdefault(criterion_id, Counter()).update(counter)
        self.removes.update(other.removes)
        self.first_removed_by.update(other.first_removed_by)
        self.skipped.extend(other.skipped)

    def funnel(self) -> list[tuple[str, int]]:
        """``(criterion id, patients remaining after it)`` for the criteria that vote.

        The deceased step comes before (:attr:`living` is where the criteria start).
        """
        remaining = self.living
        out = []
        for spec in CRITERIA:
            if spec.part_of is not None:
                continue
            remaining -= self.first_removed_by[spec.id]
            out.append((spec.id, remaining))
        return out

    # --------------------------------------------------------------------------- renderings
    def rows(self) -> list[dict[str, Any]]:
        """One row per criterion: id, kind, ref, removes, remaining, one count per status."""
        remaining = dict(self.funnel())
        rows = []
        for spec in CRITERIA:
            counts = self.statuses.get(spec.id, Counter())
            row: dict[str, Any] = {
                "id": spec.id,
                "kind": spec.kind,
                "ref": spec.ref,
                "partOf": spec.part_of,
                "removes": None if spec.part_of else self.removes[spec.id],
                "remaining": remaining.get(spec.id),
            }
            row.update({status: counts[status] for status in STATUSES})
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        """The report as JSON: totals, verdict counts, the criterion rows, skipped inputs."""
        return {
            "asOf": self.as_of,
            "patients": self.total,
            "deceased": self.deceased,
            "living": self.living,
            "verdicts": {verdict: self.verdicts[verdict] for verdict in VERDICTS},
            "criteria": self.rows(),
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
        }

    def to_csv(self) -> str:
        """The funnel as CSV: the deceased step, then the criterion rows (verdicts: text and JSON)."""
        out = io.StringIO()
        columns = ["id", "kind", "ref", "partOf", "removes", "remaining", *STATUSES]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerow(
            {k: "" for k in columns}
            | {"id": DECEASED_STEP, "removes": self.deceased, "remaining": self.living}
        )
        for row in self.rows():
            writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
        return out.getvalue()

    def to_text(self) -> str:
        """A terminal table: verdicts, then the funnel with status counts per criterion."""
        lines = [
            f"Feasibility: {self.total} patient{'s' if self.total != 1 else ''} screened"
            + (f" as of {self.as_of}" if self.as_of else ""),
            "Verdicts: " + ", ".join(f"{v} {self.verdicts[v]}" for v in VERDICTS),
        ]
        if self.total:
            header = (
                f"  {'criterion':<27}{'removes':>8}{'left':>6}   "
                f"{'met':>4}{'not':>5}{'unk':>5}{'rev':>5}{'n/a':>5}"
            )
            lines += ["", header, "  " + "-" * (len(header) - 2)]
            lines.append(f"  {DECEASED_STEP:<27}{self.deceased:>8}{self.living:>6}")
            for row in self.rows():
                name = ("  " if row["partOf"] else "") + row["id"]
                removes = "" if row["removes"] is None else str(row["removes"])
                left = "" if row["remaining"] is None else str(row["remaining"])
                lines.append(
                    f"  {name:<27}{removes:>8}{left:>6}   {row['met']:>4}{row['not-met']:>5}"
                    f"{row['unknown']:>5}{row['needs-review']:>5}{row['not-applicable']:>5}"
                )
            lines += [
                "",
                "  removes: patients the criterion rules out; left: still in after it (funnel);",
                "  deceased: patients who died on or before the screening date, counted before",
                "  the criteria (every count below is over living patients);",
                "  met / not(-met) / unk(nown) / rev(iew needed) / n/a: patients per status.",
            ]
        for skipped in self.skipped:
            lines.append(f"skipped {skipped.source}: {skipped.reason}")
        return "\n".join(lines) + "\n"


def verdict_line(screened: Screened) -> str:
    """One line per patient: verdict, who, and what rules them out or is still open."""
    report = screened.report
    who = report.patient
    if screened.source and not report.patient.endswith(f"/{screened.source}"):
        who = f"{screened.source} ({report.patient})"
    voting = [c for c in report.criteria if c.part_of is None]
    out = [c.id for c in voting if rules_out(c.kind, c.status)]
    if report.deceased is not None:
        detail = report.reason or "deceased"
    elif out:
        detail = "ruled out by " + ", ".join(out)
    else:
        open_items = Counter(c.status for c in voting if c.status in ("unknown", "needs-review"))
        parts = [f"{open_items['unknown']} unknown"] if open_items["unknown"] else []
        if open_items["needs-review"]:
            parts.append(f"{open_items['needs-review']} to review")
        detail = ", ".join(parts) or "all criteria decided"
        if report.reason:  # a vital status that cannot be read: a person checks first
            detail += f"; {report.reason}"
    return f"{report.verdict:<21}{who}: {detail}"


# ------------------------------------------------------------------------------- evaluation
def _evaluate_payload(payload: tuple[dict[str, Any], Settings]) -> EligibilityReport:
    """Worker side: rebuild a record from its picklable form and evaluate it."""
    data, settings = payload
    return evaluate(record_from_payload(data), settings)


def _evaluate_bundle_file(payload: tuple[str, Settings]) -> list[Screened] | Skipped:
    """Worker side: every patient of one Bundle file, or why the file was skipped."""
    path, settings = payload
    try:
        records = list(records_from_bundle(read_json_file(path)))
    except FhirTrialError as exc:
        return Skipped(Path(path).name, exc.message)
    if not records:
        return Skipped(Path(path).name, "no Patient in this Bundle")
    return [Screened(evaluate(record, settings), Path(path).stem) for record in records]


def record_payload(record: PatientRecord) -> dict[str, Any]:
    """A picklable form of a record (resources without fullUrls, which NDJSON does not use)."""
    resources: list[Resource] = []
    for rtype in record.types():
        resources.extend(record.resources(rtype))
    return {
        "resources": resources,
        "obtained": sorted(record.obtained),
        "failed": dict(record.failed),
        "warnings": list(record.warnings),
    }


def record_from_payload(data: dict[str, Any]) -> PatientRecord:
    """The inverse of :func:`record_payload`."""
    record = PatientRecord()
    # The Patient goes first so that ``record.patient`` is the same as in the original.
    resources = sorted(data["resources"], key=lambda r: r.get("resourceType") != "Patient")
    record.add_all(resources)
    record.mark_obtained(*data["obtained"])
    for category, reason in data["failed"].items():
        record.mark_failed(category, reason)
    record.warnings.extend(data["warnings"])
    return record


def bounded_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map`` in a process pool, in order, with at most ``workers * WINDOW_PER_WORKER`` in flight.

    Unlike ``Pool.imap`` (which reads its whole input ahead), this keeps memory flat on huge inputs.
    With ``workers <= 1`` it runs in this process.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    window = workers * WINDOW_PER_WORKER
    # spawn: no fork of a process that may hold threads or open SQLite handles.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def bundle_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given, plus the ``*.json`` files of folders given (sorted); InputError if none."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.glob("*.json") if p.is_file()))
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"{path} does not exist")
    if not paths:
        raise InputError("no Bundle files to screen (a folder needs *.json files)")
    return paths


def screen_bundle_files(
    inputs: Sequence[str | Path],
    settings: Settings,
    *,
    workers: int = 1,
    skipped: list[Skipped] | None = None,
) -> Iterator[Screened]:
    """Screen every patient of every Bundle file (folders: their ``*.json``).

    Files that cannot be used (not JSON, not FHIR, no Patient) are appended to ``skipped`` and do
    not stop the run.
    """
    paths = bundle_paths(inputs)
    for outcome in bounded_map(_evaluate_bundle_file, ((str(p), settings) for p in paths), workers):
        if isinstance(outcome, Skipped):
            if skipped is not None:
                skipped.append(outcome)
            continue
        yield from outcome


def screen_ndjson(
    export: NdjsonExport,
    settings: Settings,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Screened]:
    """Screen every patient of a Bulk Data export, in export order, with flat memory.

    ``workers`` processes (default: the machine's CPUs); ``progress(n)`` as buckets of ``n``
    patients are done; see :mod:`fhir_trial.sources.ndjson_screen`. ``export.account`` says what
    every input became.
    """
    for report in screen_export(export, settings, workers=workers, progress=progress):
        yield Screened(report)


def screen_records(records: Iterable[PatientRecord], settings: Settings) -> Iterator[Screened]:
    """Screen records already built (in this process)."""
    for record in records:
        yield Screened(evaluate(record, settings))
