"""UCUM normalisation for the few quantities the criteria compare.

Laboratories write the same unit in many ways: ``10*3/uL``, ``K/uL``, ``x10E3/uL``, ``10^3/µL``,
``thou/mm3``; ``g/dl`` and ``g/dL``; ``{cells}/uL``. This module reads those spellings, converts a
value to the one unit a criterion compares in, and refuses (:class:`UnitError`, naming the unit)
anything it does not understand: an unknown unit is never guessed.

    >>> normalise(4.2, "K/uL", CELL_COUNT).value
    4.2
    >>> normalise(11.5, "g/dL", MASS_CONCENTRATION).value
    115.0
    >>> normalise(0.55, "1", PERCENT).value
    55.0

Units are arithmetic, not clinical codes: the conversion factors below are physical facts
(``1 dL = 0.1 L``), except :data:`HEMOGLOBIN_G_PER_MMOL`, the conventional factor for haemoglobin
reported in mmol/L (monomer basis), which a caller passes explicitly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CELL_COUNT",
    "HEMOGLOBIN_G_PER_MMOL",
    "MASS_CONCENTRATION",
    "PERCENT",
    "Dimension",
    "Normalised",
    "UnitError",
    "canonical_spelling",
    "normalise",
    "reads_like_fraction",
]

HEMOGLOBIN_G_PER_MMOL = 16.11
"""Grams of haemoglobin per millimole (monomer basis): g/L = mmol/L x 16.11."""


class Dimension(Enum):
    """The kinds of quantity the criteria compare, by their target UCUM unit."""

    CELL_COUNT = "10*9/L"
    MASS_CONCENTRATION = "g/L"
    PERCENT = "%"


CELL_COUNT = Dimension.CELL_COUNT
MASS_CONCENTRATION = Dimension.MASS_CONCENTRATION
PERCENT = Dimension.PERCENT

# Values no human blood count, hemoglobin or ejection fraction can take, in the target unit: a
# result outside these is a data error (a sign slip, a unit mix-up) for a person to check, never
# evidence for or against a criterion. Deliberately wide: they catch nonsense, not disease. The
# hemoglobin floor catches the commonest mix-up, a g/dL value sent with unit g/L (11.5 "g/L"):
# below 20 g/L (2 g/dL) is not a value a patient attending screening has.
POSSIBLE_RANGE: dict[Dimension, tuple[float, float]] = {
    CELL_COUNT: (0.0, 1000.0),
    MASS_CONCENTRATION: (20.0, 400.0),
    PERCENT: (0.0, 100.0),
}


def is_possible(value: float, dimension: Dimension) -> bool:
    """Whether a converted value lies within what the quantity can physically be."""
    low, high = POSSIBLE_RANGE[dimension]
    return low <= value <= high


def reads_like_fraction(value: float, dimension: Dimension) -> bool:
    """Whether a percentage is at most 1: an ejection fraction that low is not a measurement, but
    a fraction (0.55) sent with the unit % is common; either way a person must read it."""
    return dimension is Dimension.PERCENT and value <= 1


class UnitError(ValueError):
    """A unit that cannot be converted to the unit a criterion compares in."""

    def __init__(self, unit: str | None, dimension: Dimension, detail: str = "") -> None:
        if not unit or not unit.strip():
            message = f"no unit is given, so it cannot be converted to {dimension.value}"
        else:
            message = f"unit {unit!r} cannot be converted to {dimension.value}"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)
        self.unit = unit
        self.dimension = dimension
        self.message = message


@dataclass(frozen=True)
class Normalised:
    """A value converted to the target unit of its dimension."""

    value: float
    unit: str
    original_value: float
    original_unit: str

    def describe(self) -> str:
        """``"4.2 K/uL (4.2 10*9/L)"``, or just ``"115 g/L"`` when nothing was converted."""
        original = f"{_number(self.original_value)} {self.original_unit}".strip()
        if self.original_unit == self.unit and self.original_value == self.value:
            return original
        return f"{original} ({_number(self.value)} {self.unit})"


def _number(value: float) -> str:
    """A value as a person writes it: ``2.1``, ``115``, ``0.55`` (no float noise)."""
    return f"{value:.4g}"


# --------------------------------------------------------------------------- spellings
_POWER = re.compile(r"^(?:10\*(?P<exp>\d+)|(?P<word>k|thou|thous|cells|cell|#|1|))$")
_COUNT = re.compile(r"^(?P<mult>.*?)/(?P<vol>ul|mm3|cmm|nl|ml|l)$")
_MASS = re.compile(r"^(?P<mass>kg|g|gm|mg|ug)/(?P<vol>dl|100ml|ml|l)$")
_MOLAR = re.compile(r"^(?P<amount>mol|mmol|umol)/(?P<vol>dl|ml|l)$")

_VOLUME_L = {
    "ul": 1e-6,
    "mm3": 1e-6,
    "cmm": 1e-6,
    "nl": 1e-9,
    "ml": 1e-3,
    "dl": 0.1,
    "100ml": 0.1,
    "l": 1.0,
}
_MASS_G = {"kg": 1e3, "g": 1.0, "gm": 1.0, "mg": 1e-3, "ug": 1e-6}
_AMOUNT_MMOL = {"mol": 1e3, "mmol": 1.0, "umol": 1e-3}
_WORD_POWER = {"k": 3, "thou": 3, "thous": 3, "cells": 0, "cell": 0, "#": 0, "1": 0, "": 0}
_PERCENT_SPELLINGS = frozenset({"%", "percent", "pct", "%{ef}"})
_FRACTION_SPELLINGS = frozenset({"1", "{fraction}", "{ratio}", "ratio", "fraction"})


def canonical_spelling(unit: str) -> str:
    """Fold the common non-UCUM spellings of a unit into one comparable lower-case form.

    Removes spaces and UCUM annotations (``{cells}``), reads ``µ``/``μ`` as ``u``, ``^`` and
    ``E`` powers of ten as ``10*``, and drops a leading multiplication sign (``x10E3`` -> ``10*3``).
    """
    text = unit.strip().replace(" ", "").replace("µ", "u").replace("μ", "u").replace("×", "x")
    if text.lower() not in _PERCENT_SPELLINGS | _FRACTION_SPELLINGS:
        text = re.sub(r"\{[^}]*\}", "", text)
    text = text.lower().replace("^", "*")
    text = text.replace("mm*3", "mm3")
    text = re.sub(r"^[x*]?10e(\d+)", r"10*\1", text)
    text = re.sub(r"^[x*]10\*", "10*", text)
    return text


# Cached: a handful of spellings recur across a population's results, and reading one takes
# several regular expressions. Both are pure functions of their arguments.
@functools.lru_cache(maxsize=1024)
def _cell_count_factor(unit: str) -> float | None:
    """Factor to 10*9/L for a count-per-volume spelling, or None."""
    if unit.strip() in {"G/L", "Gpt/L", "Giga/L"}:  # giga per litre (European labs); g/L is grams
        return 1.0
    match = _COUNT.match(canonical_spelling(unit))
    if not match:
        return None
    power = _POWER.match(match["mult"])
    if not power:
        return None
    exponent = int(power["exp"]) if power["exp"] is not None else _WORD_POWER[power["word"]]
    return float(10**exponent) / _VOLUME_L[match["vol"]] / 1e9


@functools.lru_cache(maxsize=1024)
def _mass_factor(unit: str, grams_per_mmol: float | None) -> float | None:
    """Factor to g/L for a mass (or, with a molar mass, an amount) per volume spelling, or None."""
    spelled = canonical_spelling(unit)
    match = _MASS.match(spelled)
    if match:
        return _MASS_G[match["mass"]] / _VOLUME_L[match["vol"]]
    molar = _MOLAR.match(spelled)
    if molar and grams_per_mmol is not None:
        return _AMOUNT_MMOL[molar["amount"]] * grams_per_mmol / _VOLUME_L[molar["vol"]]
    return None


def normalise(
    value: float,
    unit: str | None,
    dimension: Dimension,
    *,
    grams_per_mmol: float | None = None,
) -> Normalised:
    """Convert ``value unit`` to the target unit of ``dimension``; :class:`UnitError` if impossible.

    ``grams_per_mmol`` allows amount-of-substance units (mmol/L) for a mass concentration: pass
    :data:`HEMOGLOBIN_G_PER_MMOL` for haemoglobin. A PERCENT given with unit ``1`` is a fraction and
    is multiplied by 100, but only when it is at most 1 (``1`` with value 55 is refused).
    """
    if unit is None or not unit.strip():
        raise UnitError(unit, dimension)
    original = float(value)
    factor: float | None
    if dimension is Dimension.PERCENT:
        spelled = unit.strip().lower().replace(" ", "")
        if spelled in _PERCENT_SPELLINGS:
            factor = 1.0
        elif spelled in _FRACTION_SPELLINGS:
            if not 0 <= original <= 1:
                raise UnitError(unit, dimension, f"a fraction cannot be {_number(original)}")
            factor = 100.0
        else:
            factor = None
    elif dimension is Dimension.CELL_COUNT:
        factor = _cell_count_factor(unit)
    else:
        factor = _mass_factor(unit, grams_per_mmol)
    if factor is None:
        raise UnitError(unit, dimension)
    converted = round(original * factor, 9)
    return Normalised(converted, dimension.value, original, unit.strip())
