"""Shared Observation reading: status, time, windows, titers, above-normal readings."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fhir_trial.fhirdates import DateSpan
from fhir_trial.observations import (
    Dated,
    Titer,
    above_normal,
    latest,
    meets_at_least,
    observation_status,
    observation_time,
    parse_number,
    parse_titer,
    place_in_window,
    quantity_of,
    read_titer,
    reference_high,
    split_by_window,
    unrecognised_interpretations,
)
from fhir_trial.terminology import ValueSet

# Mechanism tests use a made-up code system: the clinical codes live in resources/ValueSets.
SYSTEM = "urn:test:codes"
ABOVE = ValueSet(
    "above", "urn:test:above", "above", frozenset({(SYSTEM, "H"), (SYSTEM, "POS")}), {}
)
POSITIVE = ValueSet("pos", "urn:test:pos", "pos", frozenset({(SYSTEM, "positive")}), {})
NORMAL = ValueSet(
    "normal", "urn:test:normal", "normal", frozenset({(SYSTEM, "N"), (SYSTEM, "NEG")}), {}
)


def concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": SYSTEM, "code": code}]}


def obs(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "x", "status": "final", **fields}


# --------------------------------------------------------------------------- status and time
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("final", "final"),
        ("amended", "final"),
        ("corrected", "final"),
        ("preliminary", "preliminary"),
        ("entered-in-error", "ignored"),
        ("cancelled", "ignored"),
        (None, "ignored"),
    ],
)
def test_status_classes(status: str | None, expected: str) -> None:
    assert observation_status({"status": status}) == expected


def test_time_prefers_effective_then_issued() -> None:
    assert observation_time(obs(effectiveDateTime="2026-11-01T10:00:00Z", issued="2026-11-03")) == (
        DateSpan(dt.date(2026, 11, 1), dt.date(2026, 11, 1))
    )
    assert observation_time(obs(effectivePeriod={"start": "2026-10"})) == DateSpan(
        dt.date(2026, 10, 1), dt.date(2026, 10, 31)
    )
    assert observation_time(obs(issued="2026-11-03T08:00:00Z")).start == dt.date(2026, 11, 3)  # type: ignore[union-attr]
    assert observation_time(obs()) is None


def test_place_in_window_is_honest_about_partial_dates() -> None:
    start, end = dt.date(2026, 10, 27), dt.date(2026, 11, 26)
    day = DateSpan(start, start)
    assert place_in_window(day, start, end) == "inside"  # boundary day counts
    before = DateSpan(start - dt.timedelta(days=1), start - dt.timedelta(days=1))
    assert place_in_window(before, start, end) == "before"
    october = DateSpan(dt.date(2026, 10, 1), dt.date(2026, 10, 31))
    assert place_in_window(october, start, end) == "ambiguous"
    assert (
        place_in_window(DateSpan(dt.date(2026, 12, 1), dt.date(2026, 12, 1)), start, end) == "after"
    )
    assert place_in_window(None, start, end) == "undated"


def test_split_by_window_drops_ignored_statuses() -> None:
    items = [
        obs(effectiveDateTime="2026-11-20"),
        obs(status="preliminary", effectiveDateTime="2026-11-21"),
        obs(status="entered-in-error", effectiveDateTime="2026-11-22"),
        obs(effectiveDateTime="2025-01-01"),
    ]
    split = split_by_window(items, dt.date(2026, 10, 27), dt.date(2026, 11, 26))
    assert len(split.inside) == 2
    assert [d.preliminary for d in split.inside] == [False, True]
    assert len(split.ignored) == 1
    assert len(split.before) == 1


def test_latest_reports_conflicts_from_imprecise_dates() -> None:
    exact = Dated(obs(id="a"), DateSpan(dt.date(2026, 11, 2), dt.date(2026, 11, 2)), "final")
    month = Dated(obs(id="b"), DateSpan(dt.date(2026, 11, 1), dt.date(2026, 11, 30)), "final")
    verdict = {"a": "pass", "b": "fail"}
    best, conflicts = latest([exact, month], lambda d: verdict[d.resource["id"]])
    assert best is exact
    assert conflicts == [month]
    same = {"a": "pass", "b": "pass"}
    assert latest([exact, month], lambda d: same[d.resource["id"]])[1] == []


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [
        (1.2, "", True),
        (0.9, "", False),
        (1.0, "", True),
        (0.5, "<", False),
        (1.5, "<", None),
        (1.0, "<", False),
        (1.0, "<=", None),
        (2.0, ">", True),
        (0.5, ">", None),
        (1.0, ">=", True),
        (1.0, "~", None),
    ],
)
def test_meets_at_least(value: float, comparator: str, expected: bool | None) -> None:
    assert meets_at_least(value, comparator, 1.0) is expected


def test_parse_number() -> None:
    assert parse_number("<10") == (10.0, "<")
    assert parse_number(" 15.5 ") == (15.5, "")
    assert parse_number("≥ 3") == (3.0, ">=")
    assert parse_number("positive") is None
    assert parse_number(None) is None


def test_quantity_prefers_the_ucum_code_and_keeps_the_unit() -> None:
    q = quantity_of(
        obs(
            valueQuantity={
                "value": 4.2,
                "unit": "K/uL",
                "system": "http://unitsofmeasure.org",
                "code": "10*3/uL",
                "comparator": "<",
            }
        )
    )
    assert q is not None
    assert q.units == ("10*3/uL", "K/uL")
    assert q.comparator == "<"
    assert quantity_of(obs(valueInteger=12)) is not None
    assert quantity_of(obs(valueQuantity={"value": "4.2"})) is None
    assert quantity_of(obs(valueQuantity={"value": True})) is None


# --------------------------------------------------------------------------- titers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:160", Titer(160, "")),
        ("1/160", Titer(160, "")),
        ("160", Titer(160, "")),
        (">=1:160", Titer(160, ">=")),
        ("≥1:80", Titer(80, ">=")),
        ("<1:40", Titer(40, "<")),
        ("1:80", Titer(80, "")),
        ("1:320 speckled", Titer(320, "")),
        ("1:160 speckled (AC-4,5)", Titer(160, "")),
        ("1:40 homogeneous, 1:640 speckled", None),
        ("1:0.5", None),
        (" 1 : 640 ", Titer(640, "")),
        ("negative", None),
        ("1:", None),
        ("0", None),
        ("1:160:2", None),
    ],
)
def test_parse_titer(text: str, expected: Titer | None) -> None:
    assert parse_titer(text) == expected


def test_read_titer_from_every_shape() -> None:
    ratio = {"numerator": {"value": 1}, "denominator": {"value": 160}}
    assert read_titer(obs(valueRatio=ratio)) == Titer(160, "")
    assert read_titer(obs(valueString="1:80")) == Titer(80, "")
    assert read_titer(obs(valueQuantity={"value": 320, "unit": "{titer}"})) == Titer(320, "")
    assert read_titer(obs(valueQuantity={"value": 80, "code": "{titer}", "comparator": ">="})) == (
        Titer(80, ">=")
    )
    assert read_titer(obs(valueQuantity={"value": 12, "unit": "IU/mL"})) is None
    assert read_titer(obs(valueInteger=640)) == Titer(640, "")
    swapped = {"numerator": {"value": 160}, "denominator": {"value": 1}}
    assert read_titer(obs(valueRatio=swapped)) is None
    assert str(Titer(160, ">=")) == ">=1:160"


# --------------------------------------------------------------------------- above normal
def test_interpretation_above_normal_is_positive() -> None:
    reading = above_normal(
        obs(interpretation=[concept("H")], valueQuantity={"value": 5}), ABOVE, POSITIVE
    )
    assert reading.outcome == "positive"
    assert "H" in reading.detail


def test_coded_positive_answer() -> None:
    reading = above_normal(obs(valueCodeableConcept=concept("positive")), ABOVE, POSITIVE)
    assert reading.outcome == "positive"


def test_value_against_its_own_reference_range() -> None:
    rng = [{"high": {"value": 30, "unit": "IU/mL"}}]
    high = obs(valueQuantity={"value": 45, "unit": "IU/mL"}, referenceRange=rng)
    low = obs(valueQuantity={"value": 12, "unit": "IU/mL"}, referenceRange=rng)
    equal = obs(valueQuantity={"value": 30, "unit": "IU/mL"}, referenceRange=rng)
    below = obs(valueString="<10", referenceRange=rng)
    odd = obs(valueQuantity={"value": 45, "unit": "U/mL"}, referenceRange=rng)
    assert above_normal(high, ABOVE, POSITIVE).outcome == "positive"
    assert above_normal(low, ABOVE, POSITIVE).outcome == "negative"
    assert above_normal(equal, ABOVE, POSITIVE).outcome == "negative"
    assert above_normal(below, ABOVE, POSITIVE).outcome == "negative"
    assert above_normal(odd, ABOVE, POSITIVE).outcome == "unreadable"
    assert reference_high(high) == (30.0, "IU/mL")


def test_no_fixed_cut_off_without_a_reference_range() -> None:
    reading = above_normal(obs(valueQuantity={"value": 450, "unit": "IU/mL"}), ABOVE, POSITIVE)
    assert reading.outcome == "unreadable"
    assert "no reference range" in reading.detail


def test_normal_interpretation_is_negative_and_other_codes_unreadable() -> None:
    flagged_normal = obs(interpretation=[concept("N")])
    assert above_normal(flagged_normal, ABOVE, POSITIVE, None, NORMAL).outcome == "negative"
    # Without a set of normal flags, no flag can say "normal".
    assert above_normal(flagged_normal, ABOVE, POSITIVE).outcome == "unreadable"
    coded = above_normal(obs(valueCodeableConcept=concept("equivocal")), ABOVE, POSITIVE)
    assert coded.outcome == "unreadable"
    assert above_normal(obs(valueString="weakly reactive"), ABOVE, POSITIVE).outcome == "unreadable"
    assert above_normal(obs(), ABOVE, POSITIVE).detail == "no value"


@pytest.mark.parametrize(
    ("interpretation", "shown"),
    [
        ([concept("IND")], "'IND'"),
        ([concept(">")], "'>'"),
        ([{"text": "Positive"}], "'Positive'"),
        ([{"coding": [{"code": "H"}]}], "'H (no code system)'"),
        ([concept("N"), concept("E")], "'E'"),
    ],
)
def test_unrecognised_interpretation_is_unreadable_never_negative(
    interpretation: list[dict[str, Any]], shown: str
) -> None:
    reading = above_normal(obs(interpretation=interpretation), ABOVE, POSITIVE, None, NORMAL)
    assert reading.outcome == "unreadable"
    assert shown in reading.detail


def test_within_range_but_unrecognised_flag_is_unreadable() -> None:
    observation = obs(
        valueQuantity={"value": 20, "unit": "IU/mL"},
        referenceRange=[{"high": {"value": 30, "unit": "IU/mL"}}],
        interpretation=[concept("IND")],
    )
    reading = above_normal(observation, ABOVE, POSITIVE, None, NORMAL)
    assert reading.outcome == "unreadable"
    assert "within its reference range high 30" in reading.detail and "'IND'" in reading.detail
    normal = {**observation, "interpretation": [concept("N")]}
    assert above_normal(normal, ABOVE, POSITIVE, None, NORMAL).outcome == "negative"


def test_above_normal_flag_wins_over_other_flags() -> None:
    observation = obs(interpretation=[concept("IND"), concept("H")])
    assert above_normal(observation, ABOVE, POSITIVE, None, NORMAL).outcome == "positive"


def test_empty_interpretation_entries_are_not_flags() -> None:
    observation = obs(interpretation=[{}, concept("NEG")])
    assert above_normal(observation, ABOVE, POSITIVE, None, NORMAL).outcome == "negative"
    assert unrecognised_interpretations(obs(interpretation=[{}]), NORMAL) == []


# --------------------------------------------------------------------------- malformed data
@pytest.mark.parametrize(
    "fields",
    [
        {"interpretation": {"coding": [{"system": SYSTEM, "code": "H"}]}},
        {"interpretation": ["H"]},
        {"referenceRange": "x", "valueQuantity": {"value": 45}},
        {"referenceRange": [{"high": "30"}], "valueQuantity": {"value": 45}},
        {"valueCodeableConcept": "positive"},
        {"valueQuantity": {"value": float("nan"), "unit": "IU/mL"}},
        {"valueQuantity": "45"},
        {"valueRatio": {"numerator": 1}},
    ],
)
def test_malformed_values_are_read_without_crashing(fields: dict[str, Any]) -> None:
    observation = obs(**fields)
    reading = above_normal(observation, ABOVE, POSITIVE)
    assert reading.outcome in {"positive", "negative", "unreadable"}
    assert read_titer(observation) is None or read_titer(observation) == Titer(45, "")


def test_a_dict_interpretation_is_read_as_one_concept() -> None:
    observation = obs(interpretation={"coding": [{"system": SYSTEM, "code": "H"}]})
    assert above_normal(observation, ABOVE, POSITIVE).outcome == "positive"


def test_non_string_status_is_ignored() -> None:
    assert observation_status({"status": ["final"]}) == "ignored"
    assert quantity_of(obs(valueQuantity={"value": float("inf"), "unit": "%"})) is None
