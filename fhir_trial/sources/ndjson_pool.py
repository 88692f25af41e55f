"""The worker processes of an NDJSON screening, and this process's share of the split.

Workers start from a fork server (on Linux; elsewhere they are spawned): a clean
process, started once, that imports the screening code and loads the ValueSets, then forks each
worker ready to run. Spawned workers each paid that import and load again (about 0.1 s of CPU
apiece), and both cores were busy with it while the split waited. Nothing is forked from the
calling process, which may hold threads or open SQLite handles.

While the fork server starts, this process splits the export itself (:func:`map_helped`): the
split tasks go to the pool largest first (from a thread: the first one waits for the server), and
this process takes the ones no worker has started, smallest first, until none is left.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Imported by the fork server before it forks workers: the main module (what spawned workers
# import first, so a task may name a function of it), then the screening code and the ValueSets.
PRELOAD = ["__main__", "fhir_trial.sources.ndjson_warm"]


def worker_context() -> BaseContext:
    """The fork server context with the screening code preloaded (Linux), else spawn.

    Elsewhere the workers are spawned: Windows has no fork server, and on macOS system libraries
    may not survive a fork (Python spawns there by default for that reason).
    """
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    _start_fork_server()
    return context


_START_LOCK = threading.Lock()


def _start_fork_server() -> None:
    """Start the fork server (once per process) importing from this process's import path.

    Why: the server is a fresh ``python -c`` process, so its path starts with the current
    folder, and Python 3.11 does not give it the caller's path (spawned workers got it). A
    ``fhir_trial`` folder (another version's checkout) or any module named like one the workers
    import, in the folder the command runs from, was then imported by the workers instead of
    the code the caller runs. The server is started with ``PYTHONSAFEPATH`` (no current folder,
    Python 3.11+) and ``PYTHONPATH`` set to this process's path, in order; the environment is
    restored at once (the server keeps its own copy).
    """
    with _START_LOCK:
        saved = {name: os.environ.get(name) for name in ("PYTHONSAFEPATH", "PYTHONPATH")}
        path = [os.path.abspath(entry or os.curdir) for entry in sys.path]
        os.environ["PYTHONSAFEPATH"] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        try:
            forkserver.ensure_running()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def map_helped(
    pool: Executor, function: Callable[[T], R], tasks: Sequence[T], sizes: Sequence[int]
) -> list[R]:
    """``[function(task) for task in tasks]`` in ``pool``, this process taking its share.

    A thread submits the tasks largest first (``sizes``: their relative cost; the first
    submission waits for the fork server to be ready); meanwhile this process runs the tasks not
    submitted yet, smallest first, then those no worker has taken (a task is taken back by
    cancelling it, which fails once a worker holds it). Results come in task order.
    """
    order = sorted(range(len(tasks)), key=lambda index: -sizes[index])
    waiting = deque(order)  # the pool takes from the left, this process from the right
    lock = threading.Lock()
    futures: dict[int, Future[R]] = {}
    failed: list[BaseException] = []

    def submit() -> None:
        try:
            while True:
                with lock:
                    if not waiting:
                        return
                    index = waiting.popleft()
                futures[index] = pool.submit(function, tasks[index])
        except BaseException as exc:  # raised again in the calling thread
            failed.append(exc)

    submitter = threading.Thread(target=submit, name="ndjson-submit", daemon=True)
    submitter.start()
    done: dict[int, R] = {}
    try:
        while True:
            with lock:
                if not waiting:
                    break
                index = waiting.pop()
            done[index] = function(tasks[index])
    finally:
        with lock:
            waiting.clear()  # on an error: the thread submits no more
        submitter.join()
    if failed:
        raise failed[0]
    for index in reversed(order):
        if index in futures and futures[index].cancel():
            done[index] = function(tasks[index])
    return [
        done[index] if index in done else futures[index].result() for index in range(len(tasks))
    ]
