"""The caller reads finished buckets' reports ahead while the last buckets are screened.

What it reads ahead must be what the merge would have read from the files, each bucket whole,
never more than READ_AHEAD_REPORTS at once, and only while some bucket still runs.
"""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.sources import ndjson_screen
from fhir_trial.sources.ndjson_account import InputAccount
from fhir_trial.sources.ndjson_screen import BucketDone, _read_ahead, _reports


def _bucket(path: Path, reports: list[Any]) -> BucketDone:
    with path.open("wb") as sink:
        for item in reports:
            pickle.dump(item, sink, protocol=pickle.HIGHEST_PROTOCOL)
    account = InputAccount()
    account.patients = len(reports)
    return BucketDone(str(path), account)


def _future(result: BucketDone | None = None, error: Exception | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if result is not None:
        future.set_result(result)
    elif error is not None:
        future.set_exception(error)
    return future


def test_finished_buckets_are_read_whole_within_the_room(tmp_path: Path) -> None:
    sizes = [3, 5, 2, 4]
    parts = [
        _bucket(
            tmp_path / f"r{n}", [((0, 0, n * 10 + k), f"report {n}.{k}", ()) for k in range(size)]
        )
        for n, size in enumerate(sizes)
    ]
    running = _future()  # still screened: reading ahead is worth it
    futures = [_future(parts[0]), _future(parts[1]), running, _future(parts[3])]
    read: dict[int, list[Any]] = {}
    room = _read_ahead(futures, read, 8)
    # Bucket 0 (3) fits, bucket 1 (5) fits in the 5 left, bucket 3 (4) does not: left to the files.
    assert sorted(read) == [0, 1]
    assert room == 0
    for index in read:
        assert read[index] == list(_reports(parts[index].results_path))
    # Once every bucket is done, nothing more is read ahead (the merge reads the files).
    running.set_result(parts[2])
    assert _read_ahead(futures, read, 100) == 100
    assert sorted(read) == [0, 1]


def test_a_failed_bucket_is_not_read_ahead(tmp_path: Path) -> None:
    part = _bucket(tmp_path / "r", [((0, 0, 1), "report", ())])
    futures = [_future(error=RuntimeError("worker died")), _future(part), _future()]
    read: dict[int, list[Any]] = {}
    assert _read_ahead(futures, read, 10) == 9
    assert list(read) == [1]


def test_the_room_is_bounded() -> None:
    assert 0 < ndjson_screen.READ_AHEAD_REPORTS <= 4096


def test_reports_read_ahead_are_merged_in_export_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_ndjson_spans import SETTINGS, _export

    from fhir_trial.population import screen_ndjson
    from fhir_trial.record import CATEGORIES
    from fhir_trial.sources import ndjson_buckets
    from fhir_trial.sources.ndjson import NdjsonExport

    _export(tmp_path / "export")
    monkeypatch.setattr(ndjson_buckets, "BUCKET_BYTES", 3000)  # several buckets

    def screen(workers: int) -> tuple[list[Any], Any]:
        export = NdjsonExport(tmp_path / "export", complete_types=CATEGORIES)
        reports = [s.report.to_json() for s in screen_ndjson(export, SETTINGS, workers=workers)]
        return reports, export.account.to_json()

    alone = screen(1)
    read: list[int] = []

    def every_finished_bucket(futures: list[Any], ahead: dict[int, list[Any]], room: int) -> int:
        # Deterministic: every finished bucket read ahead, whatever still runs.
        for index, future in enumerate(futures):
            if future.done() and index not in ahead:
                ahead[index] = list(_reports(future.result().results_path))
                read.append(index)
        return room

    monkeypatch.setattr(ndjson_screen, "_read_ahead", every_finished_bucket)
    assert screen(2) == alone
    assert read  # some buckets came from memory, the others from their files
