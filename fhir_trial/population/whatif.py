"""What-if runs: the same population screened again with some screening settings changed.

``--set sledai_min_score=6`` is one what-if run; ``--set sledai_min_score=6,sledai_window_days=120``
one run changing both; the option repeats for more runs. Only the screening fields of
:class:`~fhir_trial.config.Settings` (dates, thresholds, windows) can be changed: the others do not
change who is eligible.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir_trial.config import Settings
from fhir_trial.errors import InputError

# The fields before the FHIR client's are the screening ones (config.py keeps them first).
_FIRST_NON_SCREENING = "connect_timeout_s"


def screening_fields() -> dict[str, str]:
    """``{field name: type name}`` of the settings a what-if run may change, in declared order."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        if f.name == _FIRST_NON_SCREENING:
            break
        out[f.name] = str(f.type)
    return out


@dataclass(frozen=True)
class WhatIf:
    """One what-if run: a label (as typed), the changed fields as text, the resulting settings."""

    label: str
    changes: dict[str, str]
    settings: Settings


def _value(name: str, type_name: str, raw: str) -> Any:
    if "date" in type_name:
        try:
            return dt.date.fromisoformat(raw)
        except ValueError:
            raise InputError(f"--set {name}={raw}: expected a date like 2026-11-26") from None
    number: float
    try:
        number = int(raw) if type_name.startswith("int") else float(raw)
    except ValueError:
        kind = "a whole number" if type_name.startswith("int") else "a number"
        raise InputError(f"--set {name}={raw}: expected {kind}") from None
    if number < 0 or number != number or number in (float("inf"), float("-inf")):
        raise InputError(f"--set {name}={raw}: expected a number of 0 or more")
    return number


def parse_what_if(specs: Sequence[str], baseline: Settings) -> list[WhatIf]:
    """One :class:`WhatIf` per ``--set`` value (``field=value[,field=value...]``).

    Raises :class:`InputError` (exit 2) naming the bad field or value.
    """
    known = screening_fields()
    runs: list[WhatIf] = []
    for spec in specs:
        changes: dict[str, str] = {}
        values: dict[str, Any] = {}
        for part in (p.strip() for p in spec.split(",")):
            name, sep, raw = part.partition("=")
            name, raw = name.strip(), raw.strip()
            if not sep or not name or not raw:
                raise InputError(f"--set {spec!r}: expected FIELD=VALUE (e.g. sledai_min_score=6)")
            if name not in known:
                raise InputError(
                    f"--set {name}: not a screening setting; choose from: {', '.join(known)}"
                )
            changes[name] = raw
            values[name] = _value(name, known[name], raw)
        label = ", ".join(f"{name}={raw}" for name, raw in changes.items())
        runs.append(WhatIf(label, changes, baseline.replace(**values)))
    return runs
