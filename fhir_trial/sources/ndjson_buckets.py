"""A Bulk NDJSON export split into per-patient buckets on disk, then screened bucket by bucket.

Why: parsing every line is the cost that matters (evaluation costs about as much again). The old
reader parsed each line twice (an index pass, then assembly) in one process. Here each line is
parsed once, in parallel, and memory does not grow with the export:

1. **Split** (:func:`split_range`, one task per file range, in parallel): each line is routed
   without parsing it, by a byte-level search for ``Patient/<id>`` (a superset of the top-level
   patient references the full rule looks at), to the bucket ``crc32(id) % buckets`` of each
   patient it names. A line naming one patient once (nearly all) joins that patient's *run*
   (its lines and their numbers, written as one record per flush), so neither this step nor the
   next handles it on its own; the search runs over a block of lines in C and a patient's
   consecutive lines join its run as one slice (:func:`stretches`). Only lines naming no patient, and lines that may be a Patient (they hold the
   string ``"Patient"``), are parsed here (Patients, shared Medications, orphans, OperationOutcomes:
   a small share). Files of types the criteria do not read are counted, not parsed. Each task
   writes its lines grouped by bucket into one file (``segments`` says where each bucket's lines
   are); in a plain (not gzip) file a run stays where it is: the bucket gets only where it lies
   (a *span*: offset, size, first line, count) and the worker reads it there, so most of the
   export is neither joined, written nor read back. A line longer than
   ``Settings.ndjson_max_line_bytes`` is refused without being held whole in memory.
2. **Screen** (:func:`bucket_patients`, one task per bucket, in parallel): a bucket's lines (a few
   MiB) are read, grouped per patient (a run is sliced, not read record by record), parsed once, checked against the full rule
   (:func:`fhir_trial.sources._common.patient_refs`: a resource joins a patient only when a
   top-level reference names it) and turned into records, in export order within the bucket.

Every line keeps its position (file, range, line within the range), so per-patient resource
order, "first one wins" rules and ``<file>:<line>`` places are the same as reading the files in
order (and as the Spark engine's). The driver (:class:`~fhir_trial.sources.ndjson.NdjsonExport`)
turns ranges into line numbers, merges the accounts and reads the export's own reports.
"""

from __future__ import annotations

import gc
import gzip
import heapq
import os
import re
import sqlite3
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, compress, islice, repeat
from operator import itemgetter, ne
from pathlib import Path
from typing import IO, Any

import orjson

from fhir_trial.errors import InputError
from fhir_trial.json_input import parse_json
from fhir_trial.record import CATEGORIES, Resource
from fhir_trial.sources._common import KEPT_TYPES
from fhir_trial.sources.ndjson_account import InputAccount, RejectedLine
from fhir_trial.sources.ndjson_versions import PlacedResources

PATIENT_REF = re.compile(rb"Patient\\?/([A-Za-z0-9\-.]{1,64})")
PATIENT_REF_TEXT = re.compile(PATIENT_REF.pattern.decode())  # the same, for text (Spark)
# Every "Patient" in a line, with the id when it starts a reference: one scan tells the split
# both whether the line names one patient once and which (an id holding "Patient" goes slow).
PATIENT_WORD = re.compile(rb"Patient(?:\\?/([A-Za-z0-9\-.]{1,64}))?")
PATIENT_ID = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"')
MAY_BE_PATIENT = b'"Patient"'
RANGE_BYTES = 16 * 1024 * 1024  # one split task per this much of a plain file
# A patient's consecutive lines in a plain file stay there (a span the worker reads in place);
# False copies them into the buckets as a gzip file's are (the tests compare both ways).
IN_PLACE = True
FLUSH_BYTES = 16 * 1024 * 1024
BLOCK_BYTES = (
    4 * 1024 * 1024
)  # read at a time by a split task  # a split task writes its buckets out past this much
BUCKET_BYTES = 6 * 1024 * 1024  # aimed size of a bucket: what one worker holds at a time
MIN_BUCKETS = 1

# flags in a bucket line's header
PRIMARY = 1  # the copy that counts the line in the account (a line may go to several buckets)
PATIENT_LINE = 2  # parsed in the split: a Patient resource, routed by its own id
SINGLE = 4  # the line names one patient (once): the worker may check ownership cheaply
RUN_MARK = ord("+")  # first byte of a run record (a routed line's header starts with a digit)
SPAN_MARK = ord("=")  # first byte of a span record: a run left in the source file

Order = tuple[int, int, int]  # (file index, range index, line within the range), 1-based line


def bucket_of(patient_id: bytes, buckets: int) -> int:
    """The bucket of a patient id (stable across processes, unlike ``hash``)."""
    return zlib.crc32(patient_id) % buckets


def bucket_count(total_bytes: int) -> int:
    """How many buckets for an export of this size (independent of the number of workers)."""
    return max(MIN_BUCKETS, -(-total_bytes // BUCKET_BYTES))


def reads(ftype: str | None) -> bool:
    """Whether lines of a file of this type are looked at (types the criteria read, errors)."""
    return ftype is None or ftype in KEPT_TYPES or ftype == "OperationOutcome"


# ------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class SplitTask:
    """One range of one data file to split into buckets."""

    file_index: int
    range_index: int
    path: str
    ftype: str | None
    start: int
    end: int | None  # None: to the end of the file (gzip files are one task)
    out_path: str
    buckets: int
    max_line: int


@dataclass
class SplitResult:
    """What one split task found; line numbers are within its range (the driver makes them global)."""

    file_index: int
    range_index: int
    out_path: str
    lines: int = 0  # every line of the range, empty ones too (for line numbers)
    nonempty: int = 0
    patients: int = 0  # Patient resources with an id
    segments: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    not_read: dict[str, int] = field(default_factory=dict)
    # (line, why, resource type, patient ids it names, the id of a Patient line)
    bad: list[tuple[int, str, str | None, tuple[str, ...], str | None]] = field(
        default_factory=list
    )
    outcomes: list[tuple[int, bytes]] = field(default_factory=list)
    medications: list[tuple[int, str, bytes]] = field(default_factory=list)
    orphans: list[tuple[str, str, str]] = field(default_factory=list)  # (type, id, why)
    resources: dict[str, int] = field(default_factory=dict)  # parsed here, per type
    oversized: list[int] = field(default_factory=list)
    spanned: dict[int, int] = field(default_factory=dict)  # bucket -> bytes its spans cover


def plan_ranges(path: Path, size: int) -> list[tuple[int, int | None]]:
    """Byte ranges of a file for split tasks (gzip: one range, it cannot be entered midway)."""
    if path.name.endswith(".gz") or size <= RANGE_BYTES:
        return [(0, None)]
    bounds = list(range(0, size, RANGE_BYTES))
    return [
        (start, bounds[i + 1] if i + 1 < len(bounds) else None) for i, start in enumerate(bounds)
    ]


def _open_binary(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _skip_line(handle: IO[bytes]) -> None:
    """Read past the next newline in chunks (never a whole long line in memory)."""
    while True:
        chunk = handle.readline(1024 * 1024)
        if not chunk or chunk.endswith(b"\n"):
            return


def _blocks(
    task: SplitTask, handle: IO[bytes]
) -> Iterator[tuple[int, list[bytes | None], list[int]]]:
    """The lines of the task's range, a block at a time (split in C, not line by line), each
    block with the offset of its first line in the file (-1 in a gzip file) and the lengths of
    its lines (when none is None).

    A line belongs to the range its first byte is in. Empty lines are kept (they count for line
    numbers); a line longer than ``max_line`` comes as None and is never held whole.
    """
    if task.start:
        handle.seek(task.start - 1)
        _skip_line(handle)  # the line straddling the start belongs to the previous range
    plain = not task.path.endswith(".gz")
    position = handle.tell() if plain else 0
    line_at = position if plain else -1  # where the line in progress (``carry``) starts
    limit = task.max_line
    carry = b""  # the start of a line whose end is in a later block
    skipping = False  # inside a line longer than the limit
    while True:
        size = BLOCK_BYTES if task.end is None else min(BLOCK_BYTES, task.end - position)
        data = handle.read(size) if size > 0 else b""
        if not data:
            break
        position += len(data)
        pieces = data.split(b"\n")
        last = pieces.pop()
        if not pieces:  # no newline in this block
            if not skipping:
                carry += last
                if len(carry) > limit:
                    carry, skipping = b"", True
            continue
        lines: list[bytes | None] = pieces  # type: ignore[assignment]
        lengths = list(map(len, pieces))
        if skipping:
            lines[0] = None
            skipping = False
        elif carry:
            lines[0] = carry + pieces[0]
            lengths[0] += len(carry)
        carry = last
        if len(carry) > limit:
            carry, skipping = b"", True
        if max(lengths) > limit:
            lines = [None if line is not None and len(line) > limit else line for line in lines]
        yield line_at, lines, lengths
        if plain:
            line_at = position - len(last)
    if task.end is not None and carry and not skipping:  # the range ends inside a line
        while True:
            chunk = handle.readline(1024 * 1024)
            done = not chunk or chunk.endswith(b"\n")
            if len(carry) + len(chunk) > limit + 1:
                skipping, carry = True, b""
                if not done:
                    _skip_line(handle)
                break
            carry += chunk
            if done:
                break
        carry = carry.rstrip(b"\n")
    if skipping:
        yield -1, [None], [0]
    elif carry:
        yield line_at, [carry], [len(carry)]


Run = tuple["array[int]", list[bytes]]  # one patient's line numbers and lines, in order
Span = list[int]  # [first line number, lines, offset in the source file, bytes]: lines in place
NUMBER = "q"  # a line number in a run record: 8 bytes, machine order (written and read here)
NUMBER_BYTES = array(NUMBER).itemsize


class _PatientRuns:
    """One patient's lines in one split task since the last flush, in order: runs copied
    (line numbers and lines) and spans (consecutive lines left in place in the source file)."""

    __slots__ = ("bucket", "pieces")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.pieces: list[Run | Span] = []

    def copied(self) -> Run:
        """The run to add copied lines to (a new one after a span)."""
        pieces = self.pieces
        last = pieces[-1] if pieces else None
        if isinstance(last, tuple):
            return last
        run: Run = (array(NUMBER), [])
        pieces.append(run)
        return run

    def span(self, first: int, count: int, offset: int, size: int) -> int:
        """Add ``count`` lines from ``first``, ``size`` bytes at ``offset`` of the source file
        (joined to the last span when they follow it there); the bytes added to the bucket."""
        pieces = self.pieces
        last = pieces[-1] if pieces else None
        if type(last) is list and last[0] + last[1] == first and last[2] + last[3] + 1 == offset:
            last[1] += count
            last[3] += size + 1
            return size + 1
        pieces.append([first, count, offset, size])
        return size


class _Writer:
    """Buckets of one split task, written to one file in segments.

    A segment holds, for its bucket, the runs of each patient in order: a copied run is
    ``+<file> <range> <id> <count> <size>``, then ``count`` line numbers as 8-byte integers and
    the lines, each ending in a newline (``size`` counts both); a span is
    ``=<file> <range> <id> <first> <count> <offset> <size>``: ``count`` lines from line ``first``
    of the range, ``size`` bytes at ``offset`` in the source file, read there by the worker.
    Then the lines routed one by one (``<file> <range> <number> <flags> <ids>\t<line>``).
    """

    def __init__(self, result: SplitResult, file_index: int, range_index: int) -> None:
        self.result = result
        self.pending: dict[int, list[bytes]] = {}
        self.runs: dict[int, dict[bytes, _PatientRuns]] = {}
        self.size = 0
        self.handle = open(result.out_path, "wb")  # noqa: SIM115 - closed in close()
        self.offset = 0
        self.run_head = b"+%d %d " % (file_index, range_index) + b"%s %d %d\n"
        self.span_record = b"=%d %d " % (file_index, range_index) + b"%s %d %d %d %d\n"

    def run(self, pid: bytes, buckets: int) -> _PatientRuns:
        """The runs of one patient (kept across flushes: flush empties them in place)."""
        bucket = bucket_of(pid, buckets)
        by_pid = self.runs.get(bucket)
        if by_pid is None:
            by_pid = self.runs[bucket] = {}
        runs = by_pid.get(pid)
        if runs is None:
            runs = by_pid[pid] = _PatientRuns(bucket)
        return runs

    def add(self, bucket: int, record: bytes) -> None:
        self.pending.setdefault(bucket, []).append(record)
        self.size += len(record)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for bucket in sorted(self.pending.keys() | self.runs.keys()):
            chunks: list[bytes] = []
            for pid, runs in self.runs.get(bucket, {}).items():
                for piece in runs.pieces:
                    if isinstance(piece, list):
                        chunks.append(self.span_record % (pid, *piece))
                        continue
                    numbers, lines = piece
                    body = numbers.tobytes() + b"\n".join(lines) + b"\n"
                    chunks += (self.run_head % (pid, len(numbers), len(body)), body)
                runs.pieces.clear()  # in place: the split loop keeps references to these
            records = self.pending.get(bucket)
            if records:
                chunks += records
                records.clear()
            if not chunks:
                continue
            data = b"".join(chunks)
            self.handle.write(data)
            self.result.segments.setdefault(bucket, []).append((self.offset, len(data)))
            self.offset += len(data)
        self.size = 0

    def close(self) -> None:
        self.flush()
        self.handle.close()


def stretches(block: list[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """``(start, stop, id)`` for consecutive stretches of a block's lines, in order: ``id`` is the
    patient each line of ``block[start:stop]`` names once, or ``b""`` for lines that do not.

    The rule (one scan per line): ``"Patient"`` occurs once, as the start of a reference
    (``Patient/<id>`` or ``Patient\\/<id>``), and the id does not hold ``"Patient"``. The scans
    run in C over the block and cut it where what a line found changes (a patient's lines are
    usually consecutive); the rule is then decided once per stretch, not once per line.
    """
    size = len(block)
    if not size:
        return
    found = list(map(PATIENT_WORD.findall, block))
    cuts = compress(range(1, size), map(ne, islice(found, 1, None), found))
    start = 0
    for stop in chain(cuts, (size,)):
        words = found[start]
        if len(words) == 1 and words[0] and b"Patient" not in words[0]:
            yield start, stop, words[0]
        else:
            yield start, stop, b""
        start = stop


def split_range(task: SplitTask) -> SplitResult:
    """Split one range of a data file into per-patient buckets (see the module docstring).

    Without cyclic garbage collection while it runs: it makes a list per line (what the scan
    found), which would start a collection every few hundred lines (a tenth of its time), and
    it makes no cycles (its memory is bounded by a block and a flush, freed as it goes).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _split_range(task)
    finally:
        if enabled:
            gc.enable()


def _split_range(task: SplitTask) -> SplitResult:
    from fhir_trial.sources.ndjson import classify_line  # the one set of rules for a line

    result = SplitResult(task.file_index, task.range_index, task.out_path)
    writer = _Writer(result, task.file_index, task.range_index)
    ftype = task.ftype
    looked_at = reads(ftype)
    buckets = task.buckets
    head = b"%d %d %%d %%d " % (task.file_index, task.range_index)

    def route(line: bytes, number: int, ids: set[bytes], flags: int) -> None:
        by_bucket: dict[int, list[bytes]] = {}
        for pid in sorted(ids):
            by_bucket.setdefault(bucket_of(pid, buckets), []).append(pid)
        primary = bucket_of(min(ids), buckets)
        if len(ids) == 1:
            flags |= SINGLE
        for bucket, pids in by_bucket.items():
            mark = flags | (PRIMARY if bucket == primary else 0)
            writer.add(bucket, head % (number, mark) + b"|".join(pids) + b"\t" + line + b"\n")

    # The common line names one patient once: it joins that patient's run. Consecutive lines of
    # the same patient (the usual export order) join it as one slice.
    # In a plain file, a stretch stays where it is (the worker reads it there: a span); in a
    # gzip file, or in a block holding a line too long (whose length is not known), it is copied.
    run_of: dict[bytes, _PatientRuns] = {}
    spanned = writer.result.spanned
    number = blocks = nonempty = 0
    with _open_binary(task.path) as handle:
        for offset, block, lengths in _blocks(task, handle):
            size = len(block)
            in_place = IN_PLACE and offset >= 0 and looked_at
            if not looked_at:
                parts: Iterator[tuple[int, int, bytes]] = iter([(0, size, b"")])
            elif None in block:  # a line too long: it is looked at below (as an empty one here)
                parts = stretches([line or b"" for line in block])
                in_place = False
            else:
                parts = stretches(block)  # type: ignore[arg-type]
            for start, stop, pid in parts:
                if in_place:
                    here = offset
                    length = sum(lengths[start:stop]) + stop - start - 1
                    offset += length + 1
                if pid:
                    runs = run_of.get(pid)
                    if runs is None:
                        runs = run_of[pid] = writer.run(pid, buckets)
                    if in_place:
                        added = runs.span(number + start + 1, stop - start, here, length)
                        spanned[runs.bucket] = spanned.get(runs.bucket, 0) + added
                    else:
                        run = runs.copied()
                        run[0].extend(range(number + start + 1, number + stop + 1))
                        run[1].extend(block[start:stop])  # type: ignore[arg-type]
                    nonempty += stop - start
                    continue
                for at in range(start, stop):
                    line = block[at]
                    if not line:
                        if line is None:
                            result.oversized.append(number + at + 1)
                        continue
                    nonempty += 1
                    if not looked_at:
                        continue
                    stripped = line.strip()
                    if not stripped:  # spaces only: an empty line
                        nonempty -= 1
                        continue
                    _slow_line(stripped, number + at + 1, ftype, result, route, classify_line)
            number += size
            blocks += 1
            if blocks * BLOCK_BYTES >= FLUSH_BYTES:
                writer.flush()
                blocks = 0
    result.lines = number
    result.nonempty = nonempty
    writer.close()
    return result


def _slow_line(
    line: bytes,
    number: int,
    ftype: str | None,
    result: SplitResult,
    route: Any,
    classify_line: Any,
) -> None:
    """A line naming no patient, several, or maybe a Patient: parsed here to route it."""
    ids = set(PATIENT_REF.findall(line))
    if ids and MAY_BE_PATIENT not in line:
        route(line, number, ids, 0)
        return
    parsed = classify_line(line)
    kind = parsed.kind
    if kind == "bad":
        if ids and parsed.blame != "Patient" and ftype != "Patient":
            route(line, number, ids, 0)  # the worker fails it for those patients
            return
        own = PATIENT_ID.search(line) if ftype == "Patient" else None
        result.bad.append(
            (
                number,
                parsed.problem,
                parsed.blame or ftype,
                (),
                own.group(1).decode() if own else None,
            )
        )
    elif kind == "patient":
        result.patients += 1
        route(line, number, {parsed.key.encode()}, PATIENT_LINE)
    elif kind == "resource":
        route(line, number, {o.encode() for o in parsed.owners}, 0)
    elif kind == "medication":
        result.medications.append((number, parsed.key, line))
        result.resources["Medication"] = result.resources.get("Medication", 0) + 1
    elif kind == "outcome":
        result.outcomes.append((number, line))
    else:
        _other(result, parsed.resource)


def _other(result: SplitResult, resource: Resource | None) -> None:
    """A parsed line that is neither a patient's nor shared: a type not read, or an orphan."""
    if resource is None:
        return
    rtype = str(resource.get("resourceType"))
    if rtype not in KEPT_TYPES:
        result.not_read[rtype] = result.not_read.get(rtype, 0) + 1
        return
    rid = resource.get("id")
    result.orphans.append((rtype, str(rid) if rid else "", "no reference to a patient"))


# ------------------------------------------------------------------------------------- screen
@dataclass(frozen=True)
class BucketJob:
    """Everything one bucket's worker needs (picklable)."""

    bucket: int
    parts: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]  # (split file, its segments)
    file_names: tuple[str, ...]
    file_types: tuple[str | None, ...]
    lines_before: dict[tuple[int, int], int]  # (file, range) -> lines of the file before it
    medications_db: str | None
    # (path, size, modification time in ns) of each data file, for the spans read there
    sources: tuple[tuple[str, int, int], ...] = ()
    spanned: int = 0  # bytes of its spans

    @property
    def size(self) -> int:
        """Bytes of its lines (with headers): what screening it costs, roughly."""
        return self.spanned + sum(length for _, segments in self.parts for _, length in segments)

    def place(self, order: Order) -> str:
        """``<file>:<line>`` of a line."""
        file_index, range_index, number = order
        return (
            f"{self.file_names[file_index]}:{self.lines_before[(file_index, range_index)] + number}"
        )

    def where(self, order: Order) -> str:
        """``<file>:<line>`` of a line (the place a screened resource carries)."""
        return self.place(order)


# (file index, range index, line numbers, the lines joined by newlines)
RunSlice = tuple[int, int, "array[int] | range", bytes]


@dataclass
class PatientLines:
    """One patient's lines in a bucket, raw, in export order within each list; parsed later.

    ``runs`` hold the lines naming this patient only, once; ``lines`` those routed one by one
    (header, body, flags), which may interleave with the runs (see :func:`_in_order`).
    """

    patients: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # header, body, flags
    runs: list[RunSlice] = field(default_factory=list)
    lines: list[tuple[bytes, bytes, int]] = field(default_factory=list)


@dataclass
class PatientGroup:
    """One patient of a bucket, parsed: what the record builder needs."""

    order: Order  # of its (first) Patient line
    patient_id: str
    patient: Resource
    resources: PlacedResources  # (where: see BucketJob.where, resource), export order
    failed_for: dict[str, str]  # category -> reason (unreadable lines naming this patient)


def header_order(header: bytes) -> Order:
    """The position a bucket line's header records."""
    file_index, range_index, number, _ = header.split(b" ", 3)
    return int(file_index), int(range_index), int(number)


class _Sources:
    """The data file a bucket's spans are read from, checked unchanged since the split.

    One is open at a time: a split file (one part of a bucket) holds spans of one data file, and
    an export may have thousands of files.
    """

    def __init__(self, job: BucketJob) -> None:
        self.job = job
        self.index = -1
        self.handle: IO[bytes] | None = None

    def read(self, file_index: int, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of a data file (an InputError if it changed)."""
        path, length, modified = self.job.sources[file_index]
        if file_index != self.index or self.handle is None:
            self.close()
            try:
                self.handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise InputError(
                    f"{path} can no longer be read ({exc.strerror}); screen it again"
                ) from None
            self.index = file_index
            now = os.fstat(self.handle.fileno())
            if (now.st_size, now.st_mtime_ns) != (length, modified):
                raise InputError(f"{path} changed while the export was read; screen it again")
        if _PREAD is not None:
            data = _PREAD(self.handle.fileno(), size, offset)
        else:  # no pread (Windows)
            self.handle.seek(offset)
            data = self.handle.read(size)
        if len(data) != size:
            raise InputError(f"{path} changed while the export was read; screen it again")
        return data

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


_PREAD = getattr(os, "pread", None)


def _read_bucket(job: BucketJob) -> dict[bytes, PatientLines]:
    """A bucket's lines grouped per patient id (parts are in export order, and so are lines)."""
    groups: dict[bytes, PatientLines] = {}
    sources = _Sources(job)
    try:
        for path, segments in job.parts:
            _read_part(path, segments, groups, sources)
    finally:
        sources.close()
    return groups


def _read_part(
    path: str,
    segments: tuple[tuple[int, int], ...],
    groups: dict[bytes, PatientLines],
    sources: _Sources,
) -> None:
    """The records of one split file's segments, added to ``groups``."""
    with open(path, "rb") as handle:
        for offset, length in segments:
            handle.seek(offset)
            data = handle.read(length)
            position = 0
            while position < length:
                end = data.index(b"\n", position)
                record_kind = data[position]
                if record_kind == SPAN_MARK:
                    file_index, range_index, pid, first, count, at, size = data[
                        position + 1 : end
                    ].split(b" ")
                    position = end + 1
                    start = int(first)
                    lines = sources.read(int(file_index), int(at), int(size))
                    group = groups.get(pid)
                    if group is None:
                        group = groups[pid] = PatientLines()
                    group.runs.append(
                        (int(file_index), int(range_index), range(start, start + int(count)), lines)
                    )
                    continue
                if record_kind == RUN_MARK:
                    file_index, range_index, pid, count, size = data[position + 1 : end].split(b" ")
                    position = end + 1 + int(size)
                    split_at = end + 1 + int(count) * NUMBER_BYTES
                    numbers = array(NUMBER)
                    numbers.frombytes(data[end + 1 : split_at])
                    lines = data[split_at : position - 1]
                    group = groups.get(pid)
                    if group is None:
                        group = groups[pid] = PatientLines()
                    group.runs.append((int(file_index), int(range_index), numbers, lines))
                    continue
                record = data[position:end]
                position = end + 1
                header, _, body = record.partition(b"\t")
                head, _, pids = header.rpartition(b" ")
                mark = int(head[head.rfind(b" ") + 1 :])
                for pid in pids.split(b"|"):
                    group = groups.get(pid)
                    if group is None:
                        group = groups[pid] = PatientLines()
                    if mark & PATIENT_LINE:
                        group.patients.append((header, body, mark))
                    else:
                        group.lines.append((header, body, mark))


class _Medications:
    """Shared Medications, looked up by ``Medication/<id>`` in the split's SQLite file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None  # opened at the first lookup (most buckets: none)

    def __call__(self, ref: str) -> Resource | None:
        if self.path is None:
            return None
        if self.db is None:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        row = self.db.execute("SELECT body FROM shared WHERE ref = ?", (ref,)).fetchone()
        return parse_json(row[0]) if row else None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def bucket_patients(
    job: BucketJob, account: InputAccount
) -> Iterator[tuple[PatientGroup, _Medications]]:
    """The patients of one bucket in export order, parsed once; the account gets what is odd."""
    from fhir_trial.sources.ndjson import classify_line

    groups = _read_bucket(job)
    medications = _Medications(job.medications_db)
    try:
        for pid in sorted(groups, key=lambda p: _first_order(groups[p])):
            lines = groups.pop(pid)
            group = _parse_group(job, pid.decode(), lines, account, classify_line)
            if group is not None:
                yield group, medications
    finally:
        medications.close()


def _first_order(lines: PatientLines) -> Order:
    if lines.patients:
        return header_order(lines.patients[0][0])
    firsts = [header_order(lines.lines[0][0])] if lines.lines else []
    if lines.runs:
        file_index, range_index, numbers, _ = lines.runs[0]
        firsts.append((file_index, range_index, numbers[0]))
    return min(firsts)


def _run_entries(run: RunSlice) -> Iterator[tuple[Order, bytes, None, int]]:
    """``(order, line, None, flags)`` of every line of one run, in order (iterated in C)."""
    file_index, range_index, numbers, lines = run
    orders = zip(repeat(file_index), repeat(range_index), numbers)
    return zip(orders, lines.split(b"\n"), repeat(None), repeat(PRIMARY | SINGLE))


def _in_order(lines: PatientLines) -> Iterator[tuple[Order, bytes, bytes | None, int]]:
    """``(order, body, header or None, flags)`` of a patient's non-Patient lines, in export order:
    runs and lines routed one by one merged by position (only when the patient has both)."""
    runs = chain.from_iterable(map(_run_entries, lines.runs))
    if not lines.lines:
        return runs
    single = ((header_order(h), body, h, mark) for h, body, mark in lines.lines)
    return heapq.merge(runs, single, key=itemgetter(0))


def _parse_group(
    job: BucketJob,
    pid: str,
    lines: PatientLines,
    account: InputAccount,
    classify_line: Any,
) -> PatientGroup | None:
    patient: Resource | None = None
    clash = False
    for _header, body, _mark in lines.patients:
        resource = parse_json(body)
        account.type("Patient").resources += 1
        if patient is None:
            patient = resource
        elif resource == patient:
            account.duplicates_same += 1
        else:
            clash = True
    if clash:
        account.clashing_patients.append(pid)
    resources = PlacedResources()
    failed_for: dict[str, str] = {}
    reference = f"Patient/{pid}"
    counts: dict[str, int] = {}
    fast = patient is not None
    loads = orjson.loads

    def one(order: Order, body: bytes, header: bytes | None, mark: int) -> None:
        if fast and mark & SINGLE:
            # One patient named once, and it is this one: ownership is a dict lookup.
            try:
                resource = loads(body)
            except orjson.JSONDecodeError:
                resource = None
            if type(resource) is dict:
                rtype = resource.get("resourceType")
                holder = resource.get("subject") or resource.get("patient")
                if (
                    type(holder) is dict
                    and holder.get("reference") == reference
                    and type(rtype) is str  # damaged lines may send a list or an object
                    and rtype in KEPT_TYPES
                    and rtype != "Patient"
                ):
                    counts[rtype] = counts.get(rtype, 0) + 1
                    resources.append((order, resource))
                    return
        # A run's line names only this patient; a line routed alone counts where it is primary.
        accounts = header is None or (
            bool(mark & PRIMARY) and header.rsplit(b" ", 1)[1].split(b"|")[0] == pid.encode()
        )
        _slow_resource(
            job, pid, patient, order, body, accounts, account, classify_line, resources, failed_for
        )

    if fast and not lines.lines:
        # Only runs (the usual patient): each taken whole when every line passes the one-line
        # test above, else line by line.
        for run in lines.runs:
            if not _take_run(run, reference, resources, counts):
                for order, body, _, mark in _run_entries(run):
                    one(order, body, None, mark)
    else:
        for order, body, header, mark in _in_order(lines):
            one(order, body, header, mark)
    for rtype, count in counts.items():
        account.type(rtype).resources += count
    if patient is None or clash:
        return None
    return PatientGroup(header_order(lines.patients[0][0]), pid, patient, resources, failed_for)


FAST_TYPES = KEPT_TYPES - {"Patient"}  # what a patient's line may be to be taken whole


def _take_run(
    run: RunSlice,
    reference: str,
    resources: PlacedResources,
    counts: dict[str, int],
) -> bool:
    """Take a whole run when every line passes the test :func:`_parse_group` makes of one line
    (JSON, an object, ``subject`` (or else ``patient``) referencing ``reference``, a kept type
    other than Patient); else take nothing and say so. The tests run in C over the run."""
    file_index, range_index, numbers, lines = run
    try:
        texts = lines.split(b"\n")
        parsed = list(map(orjson.loads, texts))
        get: Any = dict.get  # raises TypeError on anything not a dict
        holders = list(map(get, parsed, repeat("subject")))
        if not all(holders):  # the one-line test's ``subject or patient`` (AllergyIntolerance)
            pairs = zip(holders, parsed, strict=True)
            holders = [held or get(resource, "patient") for held, resource in pairs]
        if list(map(get, holders, repeat("reference"))).count(reference) != len(holders):
            return False
        rtypes: list[Any] = list(map(get, parsed, repeat("resourceType")))
        kinds = dict.fromkeys(rtypes)  # in order of first line; TypeError on a list or object
    except (orjson.JSONDecodeError, TypeError):
        return False
    if not FAST_TYPES.issuperset(kinds):  # also refuses what is not text: all of them are
        return False
    for rtype in kinds:
        counts[rtype] = counts.get(rtype, 0) + rtypes.count(rtype)
    resources.add_run(file_index, range_index, numbers, parsed)  # a number per line
    return True


def _slow_resource(
    job: BucketJob,
    pid: str,
    patient: Resource | None,
    order: Order,
    body: bytes,
    accounts: bool,
    account: InputAccount,
    classify_line: Any,
    resources: PlacedResources,
    failed_for: dict[str, str],
) -> None:
    """The full rule for one line (several patients, odd references, unreadable, orphan).

    ``accounts``: this copy of the line is the one that counts it in the account.
    """
    ftype = job.file_types[order[0]]
    parsed = classify_line(body)
    kind = parsed.kind
    if kind == "bad":
        place = job.where(order)
        category = parsed.blame or ftype
        if category in CATEGORIES and category != "Patient":
            failed_for.setdefault(category, f"an unreadable line in the export ({place})")
        if accounts:
            account.reject(RejectedLine(place, parsed.problem, category, pid))
        return
    resource = parsed.resource
    if resource is None:
        return
    rtype = str(resource.get("resourceType"))
    rid = str(resource.get("id") or "")
    if accounts and kind in ("resource", "medication", "patient"):
        account.type(rtype).resources += 1
    if kind == "resource":
        if pid in parsed.owners:
            if patient is None and pid == parsed.owners[0]:
                account.orphan(rtype, rid, f"Patient/{pid} is not in the export")
            resources.append((order, resource))
        elif accounts and not parsed.owners:
            account.orphan(rtype, rid, "no reference to a patient")
    elif accounts and kind == "other":
        if rtype in KEPT_TYPES:
            account.orphan(rtype, rid, "no reference to a patient")
        else:
            account.not_read[rtype] = account.not_read.get(rtype, 0) + 1
