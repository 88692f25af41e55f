"""Time and request budgets: one screening must finish (or give up) within known limits.

``Deadline(1.5)`` starts counting at creation. Code that waits on the network asks
:meth:`Deadline.timeout` for the longest it may wait (never more than the budget left, never more
than its own cap) and gets :class:`DeadlineExceeded` when nothing is left. A deadline can also cap
the number of HTTP requests (``max_requests``): every request calls :meth:`Deadline.count_request`,
so a server whose ``next`` links never end is cut off in requests as well as in time.

``limit`` names the setting that set the budget (``fhir_deadline_s``, ``cds_deadline_s``), so the
message of a screening cut off names the limit that was hit.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Deadline", "DeadlineExceeded"]


class DeadlineExceeded(Exception):
    """The time (or request) budget ran out; the message names the limit."""


class Deadline:
    """A monotonic-clock budget, shareable between threads; :meth:`cancel` stops the work early."""

    def __init__(
        self,
        seconds: float,
        *,
        limit: str = "the time budget",
        max_requests: int | None = None,
        requests_limit: str = "the request budget",
    ) -> None:
        self.budget = max(0.0, float(seconds))
        self.limit = limit
        self.max_requests = max_requests
        self.requests_limit = requests_limit
        self.requests = 0
        self._end = time.monotonic() + self.budget
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        """Seconds left (0.0 once expired or cancelled)."""
        if self._cancelled.is_set():
            return 0.0
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """True once the budget is spent or the work was cancelled."""
        return self.remaining() <= 0.0

    def cancel(self) -> None:
        """Tell every worker sharing this deadline to stop at its next check."""
        self._cancelled.set()

    def message(self) -> str:
        """``the overall limit of 60 s (fhir_deadline_s) was reached``."""
        return f"the overall limit of {self.budget:g} s ({self.limit}) was reached"

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` when nothing is left."""
        if self.expired():
            raise DeadlineExceeded(self.message())

    def count_request(self) -> None:
        """Count one HTTP request; raise :class:`DeadlineExceeded` past ``max_requests``."""
        self.check()
        with self._lock:
            self.requests += 1
            if self.max_requests is not None and self.requests > self.max_requests:
                raise DeadlineExceeded(
                    f"the limit of {self.max_requests} requests per screening "
                    f"({self.requests_limit}) was reached"
                )

    def timeout(self, cap: float | None = None, reserve: float = 0.0) -> float:
        """The longest a single wait may last: the budget left minus ``reserve``, at most ``cap``."""
        left = self.remaining() - reserve
        if left <= 0.0:
            raise DeadlineExceeded(self.message())
        return left if cap is None else min(cap, left)

    def sleep(self, seconds: float) -> None:
        """Sleep, but never past the deadline (returns early when cancelled)."""
        self._cancelled.wait(max(0.0, min(seconds, self.remaining())))
