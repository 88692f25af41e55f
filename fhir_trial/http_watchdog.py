"""Cut off an HTTP exchange on its socket when its deadline passes, whatever it is waiting for.

``requests``' read timeout applies to each socket read. A server that sends its status line and
headers one byte every 0.2 s never trips it, and those bytes are read inside ``http.client``,
where none of our code runs between them: only something outside the reading thread can end the
wait. So :func:`watch` arms a timer for the deadline; when it fires it shuts down the socket of
every connection the exchange used. The blocked read returns at once, ``requests`` raises (or
returns an answer cut short), and the caller, seeing :attr:`Watch.fired`, reports the limit.
:func:`within` does all of this for one exchange and raises :class:`CutOff`: the callers (the
FHIR client, the Bulk client and its token calls, the SMART app, the JWK Set fetch) only say
what was cut off.

Why this design: a thread that makes the request while the caller stops waiting at the deadline
would leave that thread reading (and a connection open) for as long as the server trickles, which
is the pile-up the deadline is there to prevent; shrinking the socket timeout before each read
would need a wrapper around the socket inside ``http.client`` and ``ssl``. ``shutdown`` (not
``close``) is what wakes a read blocked in another thread; a connection shut down is discarded
by urllib3 (an error closes it, and a dropped connection is never taken from the pool again).

How the connection is found: :func:`guard_session` mounts an adapter whose connection pools use
connection classes that enrol themselves, when a request is sent on them, with the watch armed in
the sending thread (urllib3 does not hand the connection out before the answer's headers are in).

Not covered: the TLS handshake (the socket is not on the connection until it ends; the connect
timeout, cut to the deadline, bounds each of its reads), and sessions carrying an adapter of their
own (left as they are).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import requests
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["CutOff", "Watch", "guard_session", "watch", "within"]

T = TypeVar("T")

_local = threading.local()


class Watch:
    """A timer over one exchange: at ``seconds`` it shuts down the sockets enrolled so far."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + max(0.0, seconds)
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._timer: threading.Timer | None = None
        self._done = False
        self.fired = False

    def enrol(self, connection: HTTPConnection) -> None:
        """Watch ``connection`` (its socket is looked up when the timer fires)."""
        with self._lock:
            if self._done:
                return
            self._connections.append(connection)
            if self.fired:
                _shut(connection)
            elif self._timer is None:  # armed lazily: no thread for an exchange that sends nothing
                self._timer = threading.Timer(max(0.0, self._end - time.monotonic()), self._fire)
                self._timer.name = "fhir-http-watchdog"
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for connection in self._connections:
                _shut(connection)

    def close(self) -> bool:
        """Disarm; True when the timer had fired (the exchange was cut off)."""
        with self._lock:
            self._done = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        return self.fired


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    # socket.socket's own shutdown, also for an SSLSocket: the SSL override also drops the SSL
    # object, from this thread while the reading thread is using it.
    with suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextmanager
def watch(seconds: float | None) -> Iterator[Watch | None]:
    """Arm a :class:`Watch` over the exchanges this thread sends inside the block.

    ``None`` watches nothing (yields None). Check :attr:`Watch.fired` after the block: an answer
    cut off by the watch may look complete (headers ended by the closed socket).
    """
    if seconds is None:
        yield None
        return
    armed = Watch(seconds)
    previous = getattr(_local, "watch", None)
    _local.watch = armed
    try:
        yield armed
    finally:
        _local.watch = previous
        armed.close()


class CutOff(Exception):
    """The watch cut an exchange off: its answer did not arrive complete within ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within {seconds:g} s")
        self.seconds = seconds


def within(seconds: float | None, exchange: Callable[[], T]) -> T:
    """Run ``exchange`` (requests sent, and answers read, in this thread) under a :class:`Watch`.

    Raises :class:`CutOff` when the watch fired, whether the exchange then failed (the shut
    socket's error) or returned (an answer cut short may look complete: a returned
    :class:`requests.Response` is closed). Any other error of the exchange passes through.
    """
    with watch(seconds) as armed:
        try:
            result = exchange()
        except Exception as exc:
            if armed is not None and armed.fired:
                raise CutOff(armed.seconds) from exc
            raise
    if armed is not None and armed.fired:
        if isinstance(result, requests.Response):
            result.close()
        raise CutOff(armed.seconds)
    return result


def _enrol(connection: HTTPConnection) -> None:
    armed: Watch | None = getattr(_local, "watch", None)
    if armed is not None:
        armed.enrol(connection)


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _enrol(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _enrol(self)
        super().request(*args, **kwargs)


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, with connections that :func:`watch` can cut off."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def guard_session(session: requests.Session) -> None:
    """Mount :class:`WatchedAdapter` for http and https, unless the session has its own adapter.

    A plain :class:`HTTPAdapter` (requests' default, or one made for its retries or pool sizes)
    is replaced by a watched one with the same settings; a subclass is someone's own transport
    and is left alone (its exchanges are then bounded by the per-read timeouts only).
    """
    for prefix in ("http://", "https://"):
        current = session.adapters.get(prefix)
        if type(current) is HTTPAdapter:
            session.mount(
                prefix,
                WatchedAdapter(
                    pool_connections=getattr(current, "_pool_connections", DEFAULT_POOLSIZE),
                    pool_maxsize=getattr(current, "_pool_maxsize", DEFAULT_POOLSIZE),
                    max_retries=current.max_retries,
                    pool_block=getattr(current, "_pool_block", DEFAULT_POOLBLOCK),
                ),
            )
