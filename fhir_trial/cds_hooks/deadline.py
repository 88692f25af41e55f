"""A time budget for one hook call: fetching and evaluating must finish before it runs out.

``Deadline(1.5)`` starts counting at creation. Code that waits on the network asks
:meth:`Deadline.timeout` for the longest it may wait (never more than the budget left, never more than
its own cap) and gets :class:`DeadlineExceeded` when nothing is left.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Deadline", "DeadlineExceeded"]


class DeadlineExceeded(Exception):
    """The time budget ran out."""


class Deadline:
    """A monotonic-clock budget, shareable between threads; :meth:`cancel` stops the work early."""

    def __init__(self, seconds: float) -> None:
        self.budget = max(0.0, float(seconds))
        self._end = time.monotonic() + self.budget
        self._cancelled = threading.Event()

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

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` when nothing is left."""
        if self.expired():
            raise DeadlineExceeded(f"the {self.budget:g} s budget is spent")

    def timeout(self, cap: float | None = None, reserve: float = 0.0) -> float:
        """The longest a single wait may last: the budget left minus ``reserve``, at most ``cap``."""
        left = self.remaining() - reserve
        if left <= 0.0:
            raise DeadlineExceeded(f"the {self.budget:g} s budget is spent")
        return left if cap is None else min(cap, left)

    def sleep(self, seconds: float) -> None:
        """Sleep, but never past the deadline (returns early when cancelled)."""
        self._cancelled.wait(max(0.0, min(seconds, self.remaining())))
