"""UCUM normalisation: the spellings laboratories use, and refusing what cannot be read."""

from __future__ import annotations

import pytest

from fhir_trial.units import (
    CELL_COUNT,
    HEMOGLOBIN_G_PER_MMOL,
    MASS_CONCENTRATION,
    PERCENT,
    UnitError,
    canonical_spelling,
    normalise,
)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (2.1, "10*9/L", 2.1),
        (2.1, "10^9/L", 2.1),
        (2.1, "x10E9/L", 2.1),
        (2.1, "G/L", 2.1),
        (4.2, "10*3/uL", 4.2),
        (4.2, "10*3/µL", 4.2),
        (4.2, "K/uL", 4.2),
        (4.2, "x10E3/uL", 4.2),
        (4.2, "10^3/uL", 4.2),
        (4.2, "10*3/mm3", 4.2),
        (4.2, "thou/uL", 4.2),
        (4.2, "10E3/uL", 4.2),
        (4.2, "10*3{cells}/uL", 4.2),
        (4200, "/uL", 4.2),
        (4200, "/mm3", 4.2),
        (4200, "cells/uL", 4.2),
        (4200, "{cells}/uL", 4.2),
        (4200, "cells/mm^3", 4.2),
    ],
)
def test_cell_counts_are_read_in_10e9_per_litre(value: float, unit: str, expected: float) -> None:
    assert normalise(value, unit, CELL_COUNT).value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (115, "g/L", 115),
        (11.5, "g/dL", 115),
        (11.5, "g/dl", 115),
        (11.5, "g/100mL", 115),
        (11500, "mg/dL", 115),
    ],
)
def test_mass_concentrations_are_read_in_grams_per_litre(
    value: float, unit: str, expected: float
) -> None:
    assert normalise(value, unit, MASS_CONCENTRATION).value == pytest.approx(expected)


def test_hemoglobin_in_mmol_per_litre_needs_the_molar_factor() -> None:
    converted = normalise(7.0, "mmol/L", MASS_CONCENTRATION, grams_per_mmol=HEMOGLOBIN_G_PER_MMOL)
    assert converted.value == pytest.approx(112.77)
    with pytest.raises(UnitError, match="mmol/L"):
        normalise(7.0, "mmol/L", MASS_CONCENTRATION)


def test_grams_are_not_giga() -> None:
    with pytest.raises(UnitError):
        normalise(2.1, "g/L", CELL_COUNT)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [(55, "%", 55), (0.55, "1", 55), (0.55, "{fraction}", 55), (1, "1", 100)],
)
def test_percent_and_fractions(value: float, unit: str, expected: float) -> None:
    assert normalise(value, unit, PERCENT).value == pytest.approx(expected)


def test_a_fraction_above_one_is_refused() -> None:
    with pytest.raises(UnitError, match="fraction cannot be 55"):
        normalise(55, "1", PERCENT)


@pytest.mark.parametrize("unit", [None, "", "  "])
def test_no_unit_is_refused(unit: str | None) -> None:
    with pytest.raises(UnitError, match="no unit"):
        normalise(4.2, unit, CELL_COUNT)


@pytest.mark.parametrize(
    ("unit", "dimension"),
    [
        ("mEq/L", MASS_CONCENTRATION),
        ("fL", CELL_COUNT),
        ("mg", MASS_CONCENTRATION),
        ("%", CELL_COUNT),
    ],
)
def test_unknown_units_are_named_in_the_error(unit: str, dimension: object) -> None:
    with pytest.raises(UnitError) as caught:
        normalise(1.0, unit, dimension)  # type: ignore[arg-type]
    assert unit in caught.value.message
    assert caught.value.unit == unit


def test_canonical_spelling_folds_variants() -> None:
    assert canonical_spelling(" x10E3 / uL ") == "10*3/ul"
    assert canonical_spelling("10^3/mm^3") == "10*3/mm3"
    assert canonical_spelling("{cells}/µL") == "/ul"


def test_describe_shows_original_and_converted() -> None:
    assert normalise(11.5, "g/dL", MASS_CONCENTRATION).describe() == "11.5 g/dL (115 g/L)"
    assert normalise(2.1, "10*9/L", CELL_COUNT).describe() == "2.1 10*9/L"
