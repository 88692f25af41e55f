"""FHIR date, dateTime and Period values as date intervals, honest about partial precision.

``"2021"`` means some day in 2021: it is read as the interval 2021-01-01..2021-12-31, and callers
decide whether such an interval is inside a window (all of it), outside (none of it) or ambiguous.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
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
    if not isinstance(value, str) or len(value) < 4:
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
