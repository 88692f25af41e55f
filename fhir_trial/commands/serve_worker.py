"""The gunicorn worker of ``fhir-trial serve``: threads for requests, nothing for slow clients.

gunicorn's ``gthread`` worker waits for a connection's first byte in its event loop, then gives
the connection to a request thread, which blocks reading the rest of the headers and the body
with no time limit. Six clients that send a byte and then trickle (or upload a body slowly) held
every thread of the old ``sync`` workers, and would hold ``gthread``'s too: ``/healthz`` and the
hook stopped answering. This worker changes three things:

- **requests are read in the event loop**, not in a thread: the bytes of a connection are
  collected without blocking until the header block is complete (``\\r\\n\\r\\n``, or more than
  :data:`MAX_HEADER_BYTES`, which the parser then refuses) and, for a body of at most
  ``max_request_bytes`` (every route but a ``$screen-population`` upload), until the body is
  there too; only then does a thread take the request. A connection whose headers are not
  complete ``header_timeout_s`` after it was opened (or after its first byte, on a kept-alive
  connection), or whose buffered body is not complete within the body deadline, is answered 408
  and closed; one that never sends anything is closed at the header deadline.
- **a larger body is read on the thread under a deadline** for the whole body,
  ``body_timeout_s`` plus its ``Content-Length`` at ``body_min_bytes_per_s``: past it the read
  raises :class:`BodyReadTimeout` (a 408 from the app's error handlers) and the connection is
  closed. Only ``$screen-population`` takes such bodies, and it refuses a caller without an
  access token before reading any of it.
- **a body the app did not read closes the connection** (unless it was all received before the
  thread took the request), instead of gunicorn draining it on the thread before the next
  request: a client refused with 401 cannot then hold the thread by trickling the rest of it.

Everything else (the arbiter, preloading, keep-alive, graceful restarts) is gunicorn's own.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import selectors
import time
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import RequestTimeout

__all__ = ["BodyReadTimeout", "SlowClientSafeWorker"]

MAX_HEADER_BYTES = 64 * 1024
_RECV = 64 * 1024
_HEADER_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,15})[ \t]*(?=\r\n|$)")
_HEADER_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked")
_HEADER_EXPECT = re.compile(rb"\r\nexpect:[ \t]*100-continue")
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b'Content-Length: 64\r\n\r\n{"error":"request-timeout","message":"the request was too slow"}'
)


class BodyReadTimeout(RequestTimeout):
    """The request body did not arrive within its deadline (answered 408)."""

    description = "the request body did not arrive in time"


class _DeadlineSocket:
    """The socket as gunicorn's request parser sees it: every ``recv`` under a deadline.

    In the header phase (headers longer than :data:`MAX_HEADER_BYTES`, still arriving) a missed
    deadline ends the connection quietly (gunicorn's ``NoMoreData``); in the body phase it raises
    :class:`BodyReadTimeout` inside the app, which answers 408.
    """

    def __init__(self, sock: Any, idle_s: float) -> None:
        self._sock = sock
        self.idle_s = idle_s
        self.deadline = math.inf
        self.in_body = False
        self.timed_out = False

    def recv(self, size: int) -> bytes:
        """Read under the deadline (and at most ``idle_s`` of silence)."""
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            self._sock.settimeout(min(remaining, self.idle_s))
            try:
                data: bytes = self._sock.recv(size)
                return data
            except TimeoutError:
                pass
            finally:
                self._sock.settimeout(self.idle_s)  # bounds the answer's sendall too
        self.timed_out = True
        if self.in_body:
            raise BodyReadTimeout()
        raise NoMoreData(b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Conn(TConn):
    """A connection that collects its header bytes in the event loop before a thread reads it."""

    def __init__(self, cfg: Any, sock: Any, client: Any, server: Any, idle_s: float) -> None:
        super().__init__(cfg, sock, client, server)
        self.parser: Any = None
        self.received = bytearray()
        self.wanted: int | None = None  # bytes the request needs (-1: chunked), once headers are in
        self.buffered = False  # the whole request was received before a thread took it
        self.header_deadline = math.inf
        self.reader = _DeadlineSocket(sock, idle_s)

    def init(self) -> None:
        self.initialized = True
        # Blocking, but never forever: a client that stops reading our answer frees the thread.
        self.sock.settimeout(self.reader.idle_s)
        if self.parser is None:
            self.parser = http.RequestParser(self.cfg, self.reader, self.client)
        if self.received:
            # After whatever the parser kept from the previous request (pipelining).
            self.parser.unreader.unread(bytes(self.received))
            self.received.clear()
        self.wanted = None


class SlowClientSafeWorker(ThreadWorker):
    """``gthread`` with header reading in the event loop and a deadline on body reads."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    body_min_bytes_per_s = 256 * 1024
    buffer_body_bytes = 5 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: dict[_Conn, None] = {}  # connections whose headers are still arriving

    # ------------------------------------------------------------------ event loop
    def accept(self, server: Any, listener: Any) -> None:
        """Accept a connection and wait (in the event loop) for its headers."""
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        conn = _Conn(self.cfg, sock, client, server, self.header_timeout_s)
        conn.header_deadline = time.monotonic() + self.header_timeout_s
        self.nr_conns += 1
        with self._lock:
            self._reading[conn] = None
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
            )

    def on_client_socket_readable(self, conn: _Conn, client: Any) -> None:
        """Collect what arrived; hand the request to a thread once it is all there."""
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        with self._lock:
            if conn.initialized and conn in self._keep:  # a kept-alive connection woke up
                self._keep.remove(conn)
                conn.header_deadline = time.monotonic() + self.header_timeout_s
                self._reading[conn] = None
            if not data:
                self._drop(conn)
                return
            conn.received += data
            if not self._complete(conn):
                return
            self._reading.pop(conn, None)
            self.poller.unregister(conn.sock)
        self.enqueue_req(conn)

    def _complete(self, conn: _Conn) -> bool:
        """Whether the request is ready for a thread (headers, and a body of at most
        ``buffer_body_bytes``, all received); sets the body's deadline when the headers are in.
        ``conn.buffered`` says whether the whole request is in memory (then an unread body costs
        nothing to skip, and the connection can be kept alive)."""
        received = conn.received
        conn.buffered = False
        if conn.wanted is None:
            end = received.find(b"\r\n\r\n")
            if end < 0:
                return len(received) > MAX_HEADER_BYTES  # the parser answers "too large"
            head = bytes(received[:end]).lower()
            length = _HEADER_LENGTH.search(head)
            if _HEADER_CHUNKED.search(head):
                conn.wanted = -1
            elif length:
                conn.wanted = end + 4 + int(length.group(1))
            else:
                conn.buffered = True
                return True  # no body
            size = int(length.group(1)) if length else 0
            if size > self.buffer_body_bytes:
                return True  # a large upload: read on the thread, under its deadline
            conn.header_deadline = (
                time.monotonic() + self.body_timeout_s + size / self.body_min_bytes_per_s
            )
            if _HEADER_EXPECT.search(head):
                with contextlib.suppress(OSError):  # the client waits for it to send the body
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if conn.wanted < 0:  # chunked: until the last chunk, or the buffer limit
            conn.buffered = b"\r\n0\r\n\r\n" in received[-4096:]
            return conn.buffered or len(received) > self.buffer_body_bytes
        conn.buffered = len(received) >= conn.wanted
        return conn.buffered

    def murder_keepalived(self) -> None:
        """gunicorn's keep-alive expiry, plus: close connections whose headers are overdue."""
        super().murder_keepalived()
        now = time.monotonic()
        with self._lock:
            overdue = [conn for conn in self._reading if conn.header_deadline <= now]
            for conn in overdue:
                if conn.received:  # best effort, non-blocking: the client is slow by definition
                    with contextlib.suppress(OSError):
                        conn.sock.send(_REQUEST_TIMEOUT)
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        """Forget and close a connection (the caller holds the lock)."""
        self._reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    # ------------------------------------------------------------------ request thread
    def handle(self, conn: _Conn) -> tuple[bool, _Conn]:
        """Parse and answer one request; the header phase keeps the connection's deadline."""
        conn.reader.deadline = conn.header_deadline
        conn.reader.in_body = False
        conn.reader.timed_out = False
        result: tuple[bool, _Conn] = super().handle(conn)
        return result

    def handle_request(self, req: Any, conn: _Conn) -> bool:
        """Run the app with the body under its deadline; close unless the body was all read."""
        length = _content_length(req)
        budget = self.body_timeout_s + (length or 0) / self.body_min_bytes_per_s
        conn.reader.deadline = time.monotonic() + budget
        conn.reader.in_body = True
        try:
            keepalive: bool = super().handle_request(req, conn)
        finally:
            conn.reader.deadline = math.inf
        if conn.reader.timed_out or not (conn.buffered or _body_consumed(req)):
            return False
        return keepalive


def _content_length(req: Any) -> int | None:
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


def _body_consumed(req: Any) -> bool:
    """Whether nothing of the request body is left to read (a chunked body: unknown, so no)."""
    body = req.body
    reader = body.reader
    return isinstance(reader, LengthReader) and reader.length == 0 and body.buf.tell() == 0


def configure(settings: Any) -> type[SlowClientSafeWorker]:
    """The worker class with the settings' timeouts (a subclass, so gunicorn can import it)."""
    return type(
        "SlowClientSafeWorker",
        (SlowClientSafeWorker,),
        {
            "header_timeout_s": float(settings.header_timeout_s),
            "body_timeout_s": float(settings.body_timeout_s),
            "body_min_bytes_per_s": max(1, int(settings.body_min_bytes_per_s)),
            "buffer_body_bytes": int(settings.max_request_bytes),
        },
    )
