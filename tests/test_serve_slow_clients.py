"""Slow clients cannot take ``fhir-trial serve`` down.

The real server (gunicorn, two workers) on 127.0.0.1 gets 50 connections that are idle or
trickle their headers or bodies, and meanwhile ``/healthz`` and a sandbox-signed hook call must
each answer within 1 s. With gunicorn's sync workers six such connections were enough to make
both time out. Then the deadlines close the slow connections by themselves (408 or EOF).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from cds_helpers import (
    SERVICE_PATH,
    bearer,
    free_port,
    full_prefetch,
    hook_request,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)

HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 5.0


def _wait_until_up(base: str, process: subprocess.Popen[str]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise AssertionError("the server exited")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


class Trickler:
    """One slow client: sends ``head`` (or nothing), then a byte of ``tail`` every ``every`` s."""

    def __init__(self, port: int, head: bytes, tail: bytes, every: float = 0.25) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(head) if head else None
        self.tail = tail
        self.every = every
        self.answer = b""
        self.closed_by_server = False

    def step(self) -> None:
        """Send the next byte (if the server still listens)."""
        if self.tail and not self.closed_by_server:
            try:
                self.sock.sendall(self.tail[:1])
                self.tail = self.tail[1:]
            except OSError:
                self.closed_by_server = True

    def collect(self) -> None:
        """Read whatever the server said (non-blocking) and whether it closed."""
        self.sock.settimeout(0.05)
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    self.closed_by_server = True
                    return
                self.answer += data
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            self.closed_by_server = True


def _recv_some(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise AssertionError("the server closed a connection it should have kept alive")
    return data


def _slow_clients(port: int) -> list[Trickler]:
    trickle = b"X-Padding: " + b"a" * 400 + b"\r\n\r\n"
    form = b"_id=" + b"x" * 996
    hook_head = (
        f"POST {SERVICE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    search_head = (
        b"POST /fhir/PlanDefinition/_search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    )
    chunked_head = (
        b"POST /fhir/PlanDefinition/_search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    clients: list[Trickler] = []
    clients += [Trickler(port, b"", b"") for _ in range(10)]  # idle: connect, say nothing
    clients += [  # slow headers
        Trickler(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", trickle) for _ in range(10)
    ]
    clients += [Trickler(port, hook_head, b"{" * 100000) for _ in range(10)]  # slow hook upload
    clients += [Trickler(port, search_head, form) for _ in range(10)]  # slow form on an open route
    clients += [Trickler(port, chunked_head, b"3e8\r\n" + form) for _ in range(10)]  # chunked
    return clients


def test_fifty_slow_clients_do_not_stop_health_or_hook(tmp_path: Path, shared_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issuers = write_issuers(tmp_path / "issuers.json", [sandbox_issuer(shared_dir)])
    env = dict(
        os.environ,
        FHIR_TRIAL_DATABASE_PATH=str(tmp_path / "db.sqlite3"),
        FHIR_TRIAL_CDS_TRUSTED_ISSUERS_FILE=issuers,
        FHIR_TRIAL_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        FHIR_TRIAL_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    )
    # The log goes to a file: a pipe nobody reads fills up (one JSON line per request) and
    # then blocks the workers' writes.
    log_path = tmp_path / "serve.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_trial", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        text=True,
        start_new_session=True,
    )
    clients: list[Trickler] = []
    stop = threading.Event()
    try:
        _wait_until_up(base, process)
        with requests.Session() as warm:  # first hook call of each worker builds its caches
            for _ in range(4):
                token = sandbox_token(shared_dir, aud=f"{base}{SERVICE_PATH}")
                warm.post(
                    f"{base}{SERVICE_PATH}",
                    json=hook_request(full_prefetch()),
                    headers=bearer(token),
                    timeout=10,
                )
        clients = _slow_clients(port)
        assert len(clients) == 50

        def trickle() -> None:
            while not stop.is_set():
                for client in clients:
                    client.step()
                stop.wait(0.25)

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        time.sleep(0.5)
        slowest = {"health": 0.0, "hook": 0.0}
        started = time.monotonic()
        while time.monotonic() - started < HEADER_TIMEOUT_S - 1.5:
            with requests.Session() as session:  # a new connection each time, as a client would
                t0 = time.monotonic()
                health = session.get(f"{base}/healthz", timeout=5)
                slowest["health"] = max(slowest["health"], time.monotonic() - t0)
                assert health.status_code == 200
            token = sandbox_token(shared_dir, aud=f"{base}{SERVICE_PATH}")
            t0 = time.monotonic()
            hook = requests.post(
                f"{base}{SERVICE_PATH}",
                json=hook_request(full_prefetch()),
                headers=bearer(token),
                timeout=5,
            )
            slowest["hook"] = max(slowest["hook"], time.monotonic() - t0)
            assert hook.status_code == 200, hook.text[:300]
            assert hook.json()["cards"]
        print(f"slowest with 50 slow clients: {slowest}")  # the README's figure (pytest -s)
        assert slowest["health"] < 1.0 and slowest["hook"] < 1.0, slowest

        # The deadlines end every slow connection by themselves.
        time.sleep(max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 2.0)
        stop.set()
        feeder.join(timeout=5)
        for client in clients:
            client.collect()
        still_open = [c for c in clients if not c.closed_by_server]
        assert not still_open, f"{len(still_open)} slow connections are still open"
        # Slow headers and bodies get a 408 (the idle ones are just closed): a body up to
        # max_request_bytes is collected before any thread or the app sees the request.
        answers = [c.answer[:12] for c in clients[10:]]
        assert answers == [b"HTTP/1.1 408"] * 40, answers
    finally:
        stop.set()
        for client in clients:
            client.sock.close()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log_file.close()
        print(log_path.read_text()[-3000:])  # shown when the test fails


def test_large_uploads_and_keep_alive_through_the_worker(tmp_path: Path, shared_dir: Path) -> None:
    """Bodies over the buffer (read on the thread), chunked ones, and kept-alive connections."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        FHIR_TRIAL_DATABASE_PATH=str(tmp_path / "db.sqlite3"),
        FHIR_TRIAL_CDS_DEVELOPMENT_MODE="1",
        FHIR_TRIAL_MAX_REQUEST_BYTES=str(256 * 1024),  # the event-loop buffer: 256 KiB
    )
    log_file = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_trial", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        text=True,
        start_new_session=True,
    )
    folder = shared_dir / "fixtures/synthea/bulk-ndjson-10-patients"
    export = b"".join(
        data if data.endswith(b"\n") else data + b"\n"
        for data in (path.read_bytes() for path in sorted(folder.glob("*.ndjson")))
    )
    url = f"{base}/fhir/ResearchStudy/nct06010472/$screen-population"
    params = {"asOf": "2026-11-26"}
    headers = {"Content-Type": "application/fhir+ndjson"}
    try:
        _wait_until_up(base, process)
        assert len(export) > 4 * 1024 * 1024
        sized = requests.post(url, data=export, params=params, headers=headers, timeout=120)
        assert sized.status_code == 200, sized.text[:300]
        chunks = (export[i : i + 65536] for i in range(0, len(export), 65536))
        chunked = requests.post(url, data=chunks, params=params, headers=headers, timeout=120)
        assert chunked.status_code == 200 and chunked.json() == sized.json()
        with socket.create_connection(("127.0.0.1", port)) as sock:  # one connection throughout
            sock.settimeout(10)
            for request in (
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",  # unread
                b"POST /fhir/PlanDefinition/_search HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\n_id=no",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            ):
                sock.sendall(request)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += _recv_some(sock)
                head, _, rest = answer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                while len(rest) < length:
                    rest += _recv_some(sock)
                assert head.split(b" ")[1] in (b"200", b"405"), head
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        log_file.close()
