"""Screening a Bulk NDJSON export in parallel: buckets evaluated by worker processes.

:func:`screen_export` splits the export (:meth:`NdjsonExport.prepare`, in the pool and in this
process while the workers start: see :mod:`.ndjson_pool`), then each worker takes one bucket at a time (:func:`screen_bucket`): groups its lines per patient, parses
them once, evaluates every patient (:func:`~fhir_trial.sources.ndjson_versions.screen_patient`)
and writes the reports to a file of its own, in export order. The driver merges those files in
export order (a k-way merge: one report per bucket in memory), so memory stays flat whatever the
size of the export, and the output order does not depend on the number of workers.
"""

from __future__ import annotations

import gc
import heapq
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from fhir_trial.config import Settings
from fhir_trial.report import EligibilityReport
from fhir_trial.sources.ndjson import NdjsonExport
from fhir_trial.sources.ndjson_account import InputAccount
from fhir_trial.sources.ndjson_buckets import BucketJob, Order, bucket_patients
from fhir_trial.sources.ndjson_pool import worker_context
from fhir_trial.sources.ndjson_versions import screen_with_what_if
from fhir_trial.terminology import load_terminology


def default_workers() -> int:
    """The machine's CPUs (what ``--workers`` defaults to)."""
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BucketDone:
    """What a worker hands back: the bucket's account and where its reports are."""

    results_path: str
    account: InputAccount


def screen_bucket(
    export: NdjsonExport, settings: Settings, what_if: tuple[Settings, ...], job: BucketJob
) -> BucketDone:
    """Worker side: evaluate every patient of one bucket; reports go to a file, in export order.

    Each patient is also evaluated under each what-if Settings (the same record, the same rules).
    """
    account = InputAccount()
    path = str(export.scratch / f"reports-{job.bucket}.pickle")
    _settle(settings)
    with open(path, "wb") as sink, _no_gc():
        for group, medications in bucket_patients(job, account):
            build = export.builder(group, medications)
            report, variants, notes = screen_with_what_if(
                build, group.resources, settings, what_if, where=job.where
            )
            account.patients += 1
            account.duplicates_same += notes.duplicates_same
            for text in notes.duplicates_different:
                account.duplicate(text)
            account.needs_review.extend(notes.needs_review)
            pickle.dump((group.order, report, variants), sink, protocol=pickle.HIGHEST_PROTOCOL)
    return BucketDone(path, account)


_SETTLED: set[str] = set()


def _settle(settings: Settings) -> None:
    """Load the ValueSets once per process and exclude them from garbage collection.

    Parsed resources are many small containers: with the ValueSets in the tracked heap, every
    full collection walked them again (the screening spent more time collecting than parsing).
    """
    if settings.resources_dir in _SETTLED:
        return
    load_terminology(settings.resources_dir)
    gc.collect()
    gc.freeze()
    _SETTLED.add(settings.resources_dir)


# A full collection after every so many buckets of a process; a young one after the others.
FULL_COLLECTION_EVERY = 8
_buckets_since_full = 0


@contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic collection while a bucket is screened (its memory is bounded; JSON has no
    cycles), then a collection of the young generations: everything the bucket made is there
    (with the collector off, nothing was promoted), so its cycles go. A full collection, which
    also finds cycles among older objects, comes every ``FULL_COLLECTION_EVERY`` buckets: it
    walks every object the process holds, and empties the allocator's free lists and gives their
    memory back, which the next bucket would allocate again (a sixth of its parsing time)."""
    global _buckets_since_full
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        _buckets_since_full += 1
        if _buckets_since_full >= FULL_COLLECTION_EVERY:
            _buckets_since_full = 0
            gc.collect()
        else:
            gc.collect(1)


def _reports(
    path: str,
) -> Iterator[tuple[Order, EligibilityReport, tuple[EligibilityReport, ...]]]:
    with open(path, "rb") as handle:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return


# Reports the caller may read ahead, while the last buckets are screened, from buckets already
# done: at most this many are held at once (memory stays flat whatever the export's size).
READ_AHEAD_REPORTS = 512


def _read_ahead(
    futures: list[Future[BucketDone]], read_ahead: dict[int, list[Any]], room: int
) -> int:
    """Read the reports of finished buckets while others still run (what the merge would read
    after them, on a core otherwise idle), each bucket whole, within ``room`` reports; returns
    the room left. Stops as soon as every bucket is done: the merge then reads the rest."""
    running = [future for future in futures if not future.done()]
    for index, future in enumerate(futures):
        if not any(not other.done() for other in running):
            break
        if index in read_ahead or not future.done() or future.exception() is not None:
            continue
        part = future.result()
        count = part.account.patients  # one report per patient screened
        if count <= room:
            read_ahead[index] = list(_reports(part.results_path))
            room -= count
    return room


def _pool(workers: int) -> ProcessPoolExecutor:
    # Forked from a fork server, never from this process (which may hold threads or open SQLite
    # handles): see ndjson_pool.
    return ProcessPoolExecutor(max_workers=workers, mp_context=worker_context())


def screen_export(
    export: NdjsonExport,
    settings: Settings,
    *,
    workers: int | None = None,
    what_if: Sequence[Settings] = (),
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[EligibilityReport, tuple[EligibilityReport, ...]]]:
    """Every patient's report, in export order; :attr:`NdjsonExport.account` is complete at the end.

    Yields ``(report, what-if reports)`` (one per ``what_if`` Settings, in order).
    ``workers``: processes (default: the machine's CPUs; 1 runs everything in this process).
    ``progress(n)`` is called as each bucket of ``n`` patients is done (reports come out in
    export order once every bucket is done).
    """
    workers = workers or default_workers()
    with ExitStack() as stack:
        pool: Executor | None = stack.enter_context(_pool(workers)) if workers > 1 else None
        export.prepare(pool)
        # The worker gets the export without its own temporary-folder handle (it must not delete).
        job_export = _shippable(export)
        run = partial(screen_bucket, job_export, settings, tuple(what_if))
        done: list[BucketDone] = []
        read_ahead: dict[int, list[Any]] = {}  # bucket (index in done) -> its reports, read
        if pool is None:
            for job in export.jobs:
                done.append(run(job))
                if progress:
                    progress(done[-1].account.patients)
        else:
            # The largest buckets first: the last ones, small, end at about the same time.
            largest_first = sorted(export.jobs, key=lambda job: -job.size)
            submitted = {job.bucket: pool.submit(run, job) for job in largest_first}
            futures = [submitted[job.bucket] for job in export.jobs]
            room = READ_AHEAD_REPORTS
            left = len(futures)
            for future in as_completed(futures):
                left -= 1
                if progress:
                    progress(future.result().account.patients)
                if 0 < left < workers:  # a worker is idle until the last buckets end
                    room = _read_ahead(futures, read_ahead, room)
            done = [future.result() for future in futures]
        if pool is not None:
            stack.pop_all().close()  # free the workers before the merge
    for part in done:
        export.account.merge(part.account)
    export.account.sort()
    streams = [
        iter(read_ahead[index]) if index in read_ahead else _reports(part.results_path)
        for index, part in enumerate(done)
    ]
    try:
        for _, report, variants in heapq.merge(*streams, key=lambda item: item[0]):
            yield report, variants
    finally:
        export.close()


def _shippable(export: NdjsonExport) -> Any:
    """A copy of the export for worker processes: same rules and paths, no cleanup duty."""
    copy = object.__new__(NdjsonExport)
    copy.__dict__.update(export.__dict__)
    copy._tmp = None
    copy.account = InputAccount()
    copy.jobs = []
    return copy
