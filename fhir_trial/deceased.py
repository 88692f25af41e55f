"""Whether the patient was alive on the screening date (CRITERIA.md, "Real-world records").

``Patient.deceasedBoolean`` true, or a ``deceasedDateTime`` whose earliest possible day is on or
before ``as_of``, makes the patient deceased: the verdict is ``ineligible`` whatever the criteria
say, with a top-level reason. A death date after ``as_of`` means alive at the screening date;
``deceasedBoolean`` false or absent means alive.

Dates are read as the record writes them: the day of a full dateTime is its own calendar day, in
the time zone it was recorded in (``2026-11-26T20:00:00-05:00`` is 26 November, not the 27th of
UTC); a partial date counts from its first day (``2026`` is on or before 2026-11-26).

Data that cannot be read never makes anyone deceased (never ineligible on unreadable data) and
never passes silently as alive: the status is ``unclear``, the verdict is at best
``potentially-eligible`` and the report carries a warning and a reason for a person to check.
Unclear are: a ``deceasedBoolean`` that is not a JSON boolean (``"true"``), a ``deceasedDateTime``
that is not a readable date (``"2026-13-45"``, a number, an empty string), a ``deceased[x]`` sent
with only an extension (a data-absent-reason), and a record saying both "not deceased"
(``deceasedBoolean`` false) and a death date on or before ``as_of``. ``Patient.active`` false is not
death (it marks an inactive record) and is not read here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fhir_trial.fhirdates import DateSpan, parse_span

# FHIR dateTime, read leniently where real exports are and where the CQL engine (cql-exec-fhir)
# reads them too: minutes, seconds and the zone are optional (FHIR requires them with a time).
# Ranges are checked by fhirdates.parse_span. Forms the engine cannot read either (an offset
# without its colon, "+0800"; "20261114") are unclear, not guessed.
_DATE_TIME = re.compile(
    r"^\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
# The strict FHIR R4 dateTime (the value may go into a valueDateTime as written).
_FHIR_DATE_TIME = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]"
    r"|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3])"
    r":[0-5][0-9]|14:00)))?)?)?$"
)

State = Literal["alive", "deceased", "unclear"]

# SNOMED CT 419099009 |Dead (finding)|: the value of C-CDA's Deceased Observation (verified in
# terminology/VERIFICATION.md); it names the reason in FHIR outputs and the Group's characteristic.
DEAD_CODING: Mapping[str, str] = {
    "system": "http://snomed.info/sct",
    "code": "419099009",
    "display": "Dead",
}


@dataclass(frozen=True)
class VitalStatus:
    """The patient's vital status at the screening date, as the report states it.

    ``deceased`` is the death date as recorded (text) or True when only ``deceasedBoolean`` says
    it; None unless ``state`` is ``deceased``. ``reason`` is the top-level reason of the report
    (deceased or unclear); ``warning`` what could not be read.
    """

    state: State = "alive"
    deceased: str | bool | None = None
    reason: str | None = None
    warning: str | None = None


ALIVE = VitalStatus()


def _death_span(value: object) -> DateSpan | None:
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        return None
    return parse_span(value)


def _said(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _has_extension_only(patient: Mapping[str, Any], element: str) -> bool:
    return element not in patient and isinstance(patient.get(f"_{element}"), Mapping)


def _death_reason(value: str, span: DateSpan) -> str:
    """``deceased on 2026-11-14`` (the recorded day of a full date), ``deceased in 2026`` (partial)."""
    if span.exact:
        return f"deceased on {span.start.isoformat()}"
    return f"deceased in {value.strip()}"


def _unclear(what: str) -> VitalStatus:
    return VitalStatus(
        state="unclear",
        reason=(
            f"whether the patient was alive on the screening date cannot be read: {what}; "
            "check the chart before referral"
        ),
        warning=f"vital status unreadable: {what}",
    )


def vital_status(patient: Mapping[str, Any] | None, as_of: dt.date) -> VitalStatus:
    """The vital status of ``patient`` (a FHIR Patient as JSON) on ``as_of``."""
    if not isinstance(patient, Mapping):
        return ALIVE
    flag = patient.get("deceasedBoolean")
    raw_date = patient.get("deceasedDateTime")
    if flag is not None and not isinstance(flag, bool):
        flag_problem: str | None = f"Patient.deceasedBoolean is {_said(flag)}, not true or false"
    elif flag is None and _has_extension_only(patient, "deceasedBoolean"):
        flag_problem = "Patient.deceasedBoolean carries no value (only an extension)"
    else:
        flag_problem = None

    span = _death_span(raw_date)
    date_problem: str | None = None
    if raw_date is not None and span is None:
        date_problem = f"Patient.deceasedDateTime {_said(raw_date)} is not a readable date"
    elif raw_date is None and _has_extension_only(patient, "deceasedDateTime"):
        date_problem = "Patient.deceasedDateTime carries no date (only an extension)"

    if flag is True:
        # deceasedBoolean true decides; a readable death date by the screening date names the day.
        if span is not None and isinstance(raw_date, str) and span.start <= as_of:
            return VitalStatus(
                state="deceased",
                deceased=raw_date,
                reason=_death_reason(raw_date, span),
            )
        return VitalStatus(
            state="deceased",
            deceased=True,
            reason="recorded as deceased (Patient.deceasedBoolean true)",
            warning=date_problem,
        )
    if flag_problem is not None:
        # Even beside a readable date: an unreadable flag may be a "false" (FHIR allows one of the
        # two elements, and the CQL engine reads only the flag when both are sent).
        return _unclear(flag_problem)
    if span is not None and isinstance(raw_date, str):
        if span.start > as_of:
            return ALIVE  # died after the screening date: alive on it
        if flag is False:
            return _unclear(
                f"Patient.deceasedBoolean is false but Patient.deceasedDateTime is {raw_date}"
            )
        return VitalStatus(
            state="deceased", deceased=raw_date, reason=_death_reason(raw_date, span)
        )
    if date_problem is not None:
        return _unclear(date_problem)
    return ALIVE


def fhir_date_time(value: str) -> bool:
    """Whether ``value`` is a valid FHIR R4 dateTime as written (for valueDateTime outputs)."""
    return bool(_FHIR_DATE_TIME.match(value))
