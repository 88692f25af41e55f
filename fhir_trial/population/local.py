"""Screening many patients on this machine: sources, the process pool, per-patient lines.

Sources are streamed (one record at a time; Bulk NDJSON goes through an on-disk index), so memory
stays flat whatever the population size. With ``workers > 1`` the evaluation runs in a process pool
fed through a bounded window: at most a few records per worker are in flight.

What-if runs (``what_if``: other :class:`~fhir_trial.config.Settings`) are evaluated in the same
pass, in the same worker, on the same record: the data is read once whatever their number.
The counting (the funnel, the statuses) lives in :mod:`fhir_trial.population.measures`.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fhir_trial.config import Settings
from fhir_trial.errors import FhirTrialError, InputError
from fhir_trial.evaluate import evaluate
from fhir_trial.population.measures import (
    DECEASED_STEP,
    VERDICTS,
    Feasibility,
    Skipped,
    rules_out,
)
from fhir_trial.record import PatientRecord, Resource
from fhir_trial.report import EligibilityReport
from fhir_trial.sources.bundle import read_json_file, records_from_bundle
from fhir_trial.sources.ndjson import NdjsonExport
from fhir_trial.terminology import Terminology

__all__ = ["DECEASED_STEP", "VERDICTS", "Feasibility", "Skipped", "rules_out"]  # re-exported

WINDOW_PER_WORKER = 4  # records in flight per worker process

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Screened:
    """One patient's report, with a label for display (the file it came from, if any)."""

    report: EligibilityReport
    source: str = ""
    # The same patient under each what-if Settings, in the order they were given.
    what_if: tuple[EligibilityReport, ...] = ()


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
def screen_one(
    record: PatientRecord,
    settings: Settings,
    what_if: Sequence[Settings] = (),
    source: str = "",
    terminology: Terminology | None = None,
) -> Screened:
    """Evaluate one record with the baseline settings and with each what-if settings."""
    return Screened(
        evaluate(record, settings, terminology),
        source,
        tuple(evaluate(record, variant, terminology) for variant in what_if),
    )


def _evaluate_payload(payload: tuple[dict[str, Any], Settings, tuple[Settings, ...]]) -> Screened:
    """Worker side: rebuild a record from its picklable form and evaluate it."""
    data, settings, what_if = payload
    return screen_one(record_from_payload(data), settings, what_if)


def _evaluate_bundle_file(
    payload: tuple[str, Settings, tuple[Settings, ...]],
) -> list[Screened] | Skipped:
    """Worker side: every patient of one Bundle file, or why the file was skipped."""
    path, settings, what_if = payload
    try:
        records = list(records_from_bundle(read_json_file(path)))
    except FhirTrialError as exc:
        return Skipped(Path(path).name, exc.message)
    if not records:
        return Skipped(Path(path).name, "no Patient in this Bundle")
    return [screen_one(record, settings, what_if, Path(path).stem) for record in records]


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
    what_if: Sequence[Settings] = (),
) -> Iterator[Screened]:
    """Screen every patient of every Bundle file (folders: their ``*.json``).

    Files that cannot be used (not JSON, not FHIR, no Patient) are appended to ``skipped`` and do
    not stop the run.
    """
    paths = bundle_paths(inputs)
    variants = tuple(what_if)
    payloads = ((str(p), settings, variants) for p in paths)
    for outcome in bounded_map(_evaluate_bundle_file, payloads, workers):
        if isinstance(outcome, Skipped):
            if skipped is not None:
                skipped.append(outcome)
            continue
        yield from outcome


def screen_ndjson(
    export: NdjsonExport,
    settings: Settings,
    *,
    workers: int = 1,
    what_if: Sequence[Settings] = (),
) -> Iterator[Screened]:
    """Screen every patient of a Bulk Data export, streamed."""
    variants = tuple(what_if)
    if workers <= 1:
        for record in export:
            yield screen_one(record, settings, variants)
        return
    payloads = ((record_payload(record), settings, variants) for record in export)
    yield from bounded_map(_evaluate_payload, payloads, workers)


def screen_records(
    records: Iterable[PatientRecord], settings: Settings, what_if: Sequence[Settings] = ()
) -> Iterator[Screened]:
    """Screen records already built (in this process)."""
    for record in records:
        yield screen_one(record, settings, what_if)
