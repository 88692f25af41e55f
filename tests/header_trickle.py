"""A 127.0.0.1 server that sends its status line and headers one byte at a time (issue 19).

``requests``' read timeout applies to each socket read, so an answer whose *headers* arrive a byte
every 0.2 s never trips it: only an overall deadline enforced on the socket can end the wait.

    with HeaderTrickle(backend=fake.base_url, match="Condition") as server:
        server.base_url      # http://127.0.0.1:<port>/fhir: give this to the client
        server.dripping      # answers being dripped right now
        server.dripped       # how many requests were answered that way

A request whose request line or body contains ``match`` (every request when ``match`` is None)
gets ``HTTP/1.1 200 OK`` and a header that never ends, one byte every ``interval`` seconds. Any
other request is forwarded to ``backend`` (a :class:`fake_fhir_server.FakeFhirServer` base URL)
and its answer relayed whole, one request per connection. With no ``backend``, every request
drips.

It stops by itself: a drip ends when the client hangs up, after ``max_s`` seconds, or when the
server is closed (the context manager closes it).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit

_HEADER_END = b"\r\n\r\n"


class HeaderTrickle:
    """See the module docstring."""

    def __init__(
        self,
        backend: str | None = None,
        *,
        match: str | None = None,
        interval: float = 0.2,
        max_s: float = 20.0,
    ) -> None:
        self.backend = backend
        self.match = match.encode() if match is not None else None
        self.interval = interval
        self.max_s = max_s
        self.dripping = 0
        self.dripped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        path = urlsplit(backend).path.rstrip("/") if backend else "/fhir"
        self.base_url = f"http://127.0.0.1:{self.port}{path}"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="header-trickle", daemon=True)

    def __enter__(self) -> HeaderTrickle:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and end every drip (joins the threads)."""
        self._stop.set()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    # ------------------------------------------------------------------ serving
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head, body = _read_request(conn)
            except OSError:
                return
            if not head:
                return
            if self.backend is None or self.match is None or self.match in head + body:
                self._drip(conn)
            else:
                self._forward(conn, head, body)

    def _drip(self, conn: socket.socket) -> None:
        with self._lock:
            self.dripping += 1
            self.dripped += 1
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nX-Slow: "
        answer += b"z" * 100_000
        end = time.monotonic() + self.max_s
        try:
            for index in range(len(answer)):
                if self._stop.wait(self.interval) or time.monotonic() > end:
                    return
                try:
                    conn.sendall(answer[index : index + 1])
                except OSError:
                    return  # the client hung up
        finally:
            with self._lock:
                self.dripping -= 1

    def _forward(self, conn: socket.socket, head: bytes, body: bytes) -> None:
        assert self.backend is not None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name and name.lower() not in ("host", "connection", "content-length"):
                headers[name] = value.strip()
        origin = urlsplit(self.backend)
        upstream = http.client.HTTPConnection(origin.hostname, origin.port, timeout=10)
        try:
            upstream.request(method, target, body=body or None, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            out = [f"HTTP/1.1 {answer.status} {answer.reason}"]
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                    out.append(f"{name}: {value}")
            out += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
            conn.sendall("\r\n".join(out).encode("latin-1") + payload)
        except OSError:
            return
        finally:
            upstream.close()


def _read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request's head (without the blank line) and its body (by Content-Length)."""
    data = b""
    while _HEADER_END not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, body = data.partition(_HEADER_END)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body
