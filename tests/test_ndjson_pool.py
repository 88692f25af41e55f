"""The NDJSON screening's workers: where they come from, the split they share with the caller,
and when they collect garbage (each test fails when its rule is broken)."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pytest

from fhir_trial.sources import ndjson_screen
from fhir_trial.sources.ndjson_pool import map_helped, worker_context


class _PoolThatWaits:
    """An Executor whose first submission returns only once the caller has run a task itself
    (as the fork server's first worker comes only after a while); it runs tasks at once."""

    def __init__(self, caller_ran: threading.Event) -> None:
        self.caller_ran = caller_ran
        self.submitted: list[Any] = []

    def submit(self, function: Callable[[Any], Any], task: Any) -> Future[Any]:
        if not self.submitted:
            assert self.caller_ran.wait(10), "the caller never took a task"
        self.submitted.append(task)
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()  # a worker holds it: it cannot be taken back
        future.set_result(("pool", function(task)))
        return future


def test_map_helped_gives_each_result_in_task_order_once() -> None:
    caller_ran = threading.Event()
    ran: list[tuple[str, int]] = []

    def work(task: int) -> int:
        if threading.current_thread() is threading.main_thread():
            ran.append(("caller", task))
            caller_ran.set()
        return task * 10

    pool = _PoolThatWaits(caller_ran)
    tasks = [3, 1, 4, 1, 5, 9, 2, 6]
    results = map_helped(pool, work, tasks, sizes=tasks)  # type: ignore[arg-type]
    for task, result in zip(tasks, results, strict=True):
        assert result in (task * 10, ("pool", task * 10))
    mine = [task for who, task in ran]
    assert mine and sorted(mine + pool.submitted) == sorted(tasks)  # every task once
    assert pool.submitted[0] == 9  # the largest goes to the pool first
    assert mine[0] in (1, 1)  # the caller starts with the smallest


def _fail_unless_cancelled(future: Future[Any]) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(AssertionError("not taken back"))


def test_map_helped_takes_back_what_no_worker_holds() -> None:
    class Lazy:
        def submit(self, function: Callable[[Any], Any], task: Any) -> Future[Any]:
            future: Future[Any] = Future()  # never started: the caller cancels and runs it
            timer = threading.Timer(5, _fail_unless_cancelled, (future,))
            timer.daemon = True
            timer.start()
            return future

    assert map_helped(Lazy(), lambda t: t + 1, [5, 2, 7], sizes=[5, 2, 7]) == [6, 3, 8]  # type: ignore[arg-type]


def test_map_helped_raises_the_callers_error_and_stops_submitting() -> None:
    submitted: list[int] = []
    failing = threading.Event()

    class Slow:
        def submit(self, function: Callable[[Any], Any], task: Any) -> Future[Any]:
            assert failing.wait(10)  # the fork server is slow to come up
            submitted.append(task)
            return Future()

    def fail(task: int) -> int:
        failing.set()
        raise ValueError(task)

    with pytest.raises(ValueError):
        map_helped(Slow(), fail, list(range(50)), sizes=list(range(50)))  # type: ignore[arg-type]
    assert len(submitted) == 1  # the one it was submitting; then the thread stopped


# Evaluated in the worker: whether the screening code is imported and its ValueSets loaded. An
# expression, not a function of this module: the worker may not be able to import the tests (CI
# runs pytest without the checkout on PYTHONPATH).
_IN_WORKER = (
    "(lambda screen: (screen is not None, bool(screen and screen._SETTLED)))"
    "(__import__('sys').modules.get('fhir_trial.sources.ndjson_screen'))"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spawned elsewhere")
def test_workers_start_with_the_screening_code_and_the_valuesets() -> None:
    # Forked from the fork server, which imported the code and loaded the default ValueSets
    # (spawned workers would do both again, each).
    with ProcessPoolExecutor(max_workers=1, mp_context=worker_context()) as pool:
        probe = pool.submit(eval, _IN_WORKER)
        assert probe.result() == (True, True)


def test_young_collection_after_each_bucket_full_one_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ndjson_screen, "_buckets_since_full", 0)

    class Node:
        other: Any = None

    def cycle() -> weakref.ref[Node]:
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    gc.collect()
    old = Node()
    old.other = Node()
    old.other.other = old
    gc.collect(1)
    gc.collect(1)  # survived twice: in the oldest generation
    old_ref = weakref.ref(old)
    del old
    with ndjson_screen._no_gc():
        young_ref = cycle()  # garbage made during the bucket
    assert young_ref() is None  # collected right after it
    assert old_ref() is not None  # an old cycle waits for the full collection
    for _ in range(ndjson_screen.FULL_COLLECTION_EVERY - 1):
        with ndjson_screen._no_gc():
            pass
    assert old_ref() is None


def test_buckets_go_to_the_workers_largest_first(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from fhir_trial.config import Settings
    from fhir_trial.record import CATEGORIES
    from fhir_trial.sources import ndjson_buckets
    from fhir_trial.sources.ndjson import NdjsonExport

    folder = Path(tmp_path)
    lines = [f'{{"resourceType":"Patient","id":"p{n}"}}' for n in range(30)]
    conditions = [
        f'{{"resourceType":"Condition","id":"c{n}-{k}","subject":{{"reference":"Patient/p{n}"}}}}'
        for n in range(30)
        for k in range(n % 7)
    ]
    (folder / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    (folder / "Condition.ndjson").write_text("\n".join(conditions) + "\n")
    monkeypatch.setattr(ndjson_buckets, "BUCKET_BYTES", 400)  # many buckets of unequal sizes
    sizes: list[int] = []

    class Recording(ProcessPoolExecutor):
        def submit(self, function: Any, *args: Any, **kwargs: Any) -> Any:
            job = args[-1] if args else None
            if isinstance(job, ndjson_buckets.BucketJob):
                sizes.append(job.size)
            return super().submit(function, *args, **kwargs)

    monkeypatch.setattr(
        ndjson_screen,
        "_pool",
        lambda workers: Recording(max_workers=workers, mp_context=worker_context()),
    )
    settings = Settings(as_of=__import__("datetime").date(2026, 1, 1))
    two = [
        r.to_json()
        for r, _ in ndjson_screen.screen_export(
            NdjsonExport(folder, complete_types=CATEGORIES), settings, workers=2
        )
    ]
    one = [
        r.to_json()
        for r, _ in ndjson_screen.screen_export(
            NdjsonExport(folder, complete_types=CATEGORIES), settings, workers=1
        )
    ]
    assert two == one and len(one) == 30
    assert len(sizes) > 3 and len(set(sizes)) > 1
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(
    ("platform", "method"), [("linux", "forkserver"), ("darwin", "spawn"), ("win32", "spawn")]
)
def test_workers_come_from_a_fork_server_on_linux_only(
    platform: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if method == "forkserver" and not sys.platform.startswith("linux"):
        pytest.skip("no fork server here")
    monkeypatch.setattr(sys, "platform", platform)
    assert worker_context().get_start_method() == method


_CALLER = """
import sys
from datetime import date
from fhir_trial.config import Settings
from fhir_trial.sources.ndjson import NdjsonExport
from fhir_trial.sources.ndjson_screen import screen_export

if __name__ == "__main__":  # the fork server imports this file again
    export = NdjsonExport(sys.argv[1])
    print(sum(1 for _ in screen_export(export, Settings(as_of=date(2026, 11, 26)), workers=2)))
"""


def test_workers_import_what_the_caller_imports_not_the_current_folder(tmp_path: Any) -> None:
    """A ``fhir_trial`` folder where the command runs (another version's checkout) is not what
    the workers import: they get the caller's import path, as the caller's own code does."""
    import os
    import subprocess

    here = tmp_path / "runs-here"
    shadow = here / "fhir_trial"
    shadow.mkdir(parents=True)
    marker = tmp_path / "shadow-imported"
    (shadow / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('the folder, not the package')\n"
    )
    script = tmp_path / "script" / "screen.py"  # run as a file: its folder starts the caller's path
    script.parent.mkdir()
    script.write_text(_CALLER)
    export = tmp_path / "export"
    export.mkdir()
    patients = [
        f'{{"resourceType":"Patient","id":"p{n}","birthDate":"1990-01-01"}}' for n in range(4)
    ]
    (export / "Patient.ndjson").write_text("\n".join(patients) + "\n")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(ndjson_screen.__file__)))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.path.dirname(package_root)
    environment.pop("PYTHONSAFEPATH", None)
    run = subprocess.run(
        [sys.executable, str(script), str(export)],
        cwd=here,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "4"
    assert not marker.exists(), "a worker imported fhir_trial from the current folder"
