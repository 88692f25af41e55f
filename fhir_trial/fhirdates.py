"""FHIR date, dateTime and Period values as date intervals, honest about partial precision.

``"2021"`` means some day in 2021: it is read as the interval 2021-01-01..2021-12-31, and callers
decide whether such an interval is inside a window (all of it), outside (none of it) or ambiguous.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class DateSpan:
    """An inclusive interval of days; a full date gives ``start == end``."""

    start: dt.date
    end: dt.date

    @property
    def exact(self) -> bool:
        """Whether the value was a single day."""
        return self.start == self.end


def parse_span(value: object) -> DateSpan | None:
    """Read a FHIR date/dateTime/instant (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD[Thh:mm...]``).

    Returns None for anything unreadable (the caller reports it, never guesses).
    """
    if type(value) is not str:
        return None if not isinstance(value, str) else _read_span(value)
    # A dateTime's time cannot change its day span (only its first ten characters are read), so
    # "2024-03-05T10:00:00Z" and "2024-03-05T11:30:00+01:00" share one cached answer: results are
    # timestamped to the minute, their days repeat. Spaces at either end of those ten characters
    # are left to the full rule, which strips the whole value first.
    if len(value) > 10 and value[10] in "T " and not value[0].isspace() and not value[9].isspace():
        value = value[:10]
    return _cached_span(value)


def _read_span(value: str) -> DateSpan | None:
    """The full rule behind :func:`parse_span` (uncached)."""
    if len(value) < 4:
        return None
    text = value.strip()
    try:
        year = int(text[0:4])
        if len(text) == 4:
            return DateSpan(dt.date(year, 1, 1), dt.date(year, 12, 31))
        if text[4] != "-":
            return None
        month = int(text[5:7])
        if len(text) == 7:
            last = calendar.monthrange(year, month)[1]
            return DateSpan(dt.date(year, month, 1), dt.date(year, month, last))
        day = dt.date(year, month, int(text[8:10]))
        if len(text) > 10 and text[10] not in "T ":
            return None
        return DateSpan(day, day)
    except (ValueError, IndexError):
        return None


# DateSpan is immutable, so one parsed value can be shared by every resource writing that day.
_cached_span = lru_cache(maxsize=16384)(_read_span)
# What parse_span(value) gives for a dateTime whose first ten characters are its day
# (``value[10]`` is "T" or a space, ``value[0]`` and ``value[9]`` are not blank): the span of
# ``value[:10]``, cached. For readers that test that shape themselves, without a call to
# parse_span per value (tests/test_eval_fast_paths.py).
day_span = _cached_span


def parse_date(value: object) -> dt.date | None:
    """A full-precision day, or None (partial or unreadable)."""
    span = parse_span(value)
    return span.start if span and span.exact else None


def period_span(period: Mapping[str, Any] | None) -> tuple[DateSpan | None, DateSpan | None]:
    """The start and end of a FHIR Period as spans (either may be None = open)."""
    if not period:
        return None, None
    return parse_span(period.get("start")), parse_span(period.get("end"))


def completed_years(birth: dt.date, on: dt.date) -> int:
    """Age in completed years on a date."""
    years = on.year - birth.year
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years
