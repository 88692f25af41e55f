"""Medication exposure periods (fhir_trial.medications): the four resource types, drug matching,
routes, partial dates, and the interval arithmetic inc-prior-therapy relies on.

The drug codes here are made up (system ``urn:test:drugs``): these tests are about how records
become periods, not about which real drugs are in which ValueSet (the clinical cases cover that).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fhir_trial.fhirdates import DateSpan
from fhir_trial.medications import (
    build_history,
    clip,
    days_in,
    intersect,
    medication_history,
    merge,
    overlaps,
    unidentified_text,
)
from fhir_trial.record import MEDICATION_TYPES, PatientRecord
from fhir_trial.terminology import RXNORM, ValueSet

AS_OF = dt.date(2026, 11, 26)
SUPPLY = 30
SYSTEM = "urn:test:drugs"
ROUTES = "urn:test:routes"


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def valueset(*codes: str, system: str = SYSTEM) -> ValueSet:
    return ValueSet(
        id="test",
        url="urn:test:vs",
        title="test",
        codes=frozenset((system, c) for c in codes),
        displays={},
    )


def concept(code: str, system: str = SYSTEM) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": f"drug {code}"}]}


def record_of(*resources: dict[str, Any]) -> PatientRecord:
    record = PatientRecord()
    for i, resource in enumerate(resources):
        resource.setdefault("id", f"r{i}")
        record.add(resource)
    record.mark_obtained(*MEDICATION_TYPES)
    return record


def only_exposure(resource: dict[str, Any]) -> tuple[dt.date, dt.date]:
    history = build_history(record_of(resource), AS_OF, SUPPLY)
    assert len(history.exposures) == 1, history
    found = history.exposures[0].certain()
    assert found is not None
    return found


# ----------------------------------------------------------------------------- periods per type
def test_statement_datetime_is_that_day() -> None:
    resource = {
        "resourceType": "MedicationStatement",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "effectiveDateTime": "2026-03-04T10:00:00Z",
    }
    assert only_exposure(resource) == (d("2026-03-04"), d("2026-03-04"))


def test_statement_active_open_period_runs_to_as_of() -> None:
    resource = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": concept("a"),
        "effectivePeriod": {"start": "2026-01-01"},
    }
    assert only_exposure(resource) == (d("2026-01-01"), AS_OF)


def test_statement_completed_open_period_is_start_day_only() -> None:
    resource = {
        "resourceType": "MedicationStatement",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "effectivePeriod": {"start": "2026-01-01"},
    }
    assert only_exposure(resource) == (d("2026-01-01"), d("2026-01-01"))


def test_administration_period() -> None:
    resource = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "effectivePeriod": {"start": "2026-02-01T08:00:00Z", "end": "2026-02-03T08:00:00Z"},
    }
    assert only_exposure(resource) == (d("2026-02-01"), d("2026-02-03"))


@pytest.mark.parametrize(
    ("supply", "last"),
    [
        (
            {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
            "2026-03-30",
        ),
        ({"value": 2, "code": "wk"}, "2026-03-14"),
        ({"value": 10}, "2026-03-10"),
        (None, "2026-03-30"),  # default supply
        ({"value": 5, "code": "furlong"}, "2026-03-30"),  # unreadable unit: default supply
    ],
)
def test_dispense_days_supply(supply: dict[str, Any] | None, last: str) -> None:
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "whenHandedOver": "2026-03-01",
    }
    if supply is not None:
        resource["daysSupply"] = supply
    assert only_exposure(resource) == (d("2026-03-01"), d(last))


@pytest.mark.parametrize(
    ("dates", "basis"),
    [
        ({"whenHandedOver": "2026-03-01"}, "handed over 2026-03-01, 30-day supply"),
        ({"whenPrepared": "2026-03-01"}, "prepared 2026-03-01, 30-day supply"),
    ],
)
def test_dispense_basis_names_the_date_used(dates: dict[str, str], basis: str) -> None:
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "daysSupply": {"value": 30, "unit": "d"},
        **dates,
    }
    history = build_history(record_of(resource), AS_OF, SUPPLY)
    assert [e.basis for e in history.exposures] == [basis]


def request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": "completed",
        "intent": "order",
        "medicationCodeableConcept": concept("a"),
        "authoredOn": "2026-01-10",
    }
    base.update(fields)
    return base


def test_request_bounds_period_comes_first() -> None:
    resource = request(
        dosageInstruction=[
            {"timing": {"repeat": {"boundsPeriod": {"start": "2026-02-01", "end": "2026-04-30"}}}},
            {"timing": {"repeat": {"boundsPeriod": {"start": "2026-01-15", "end": "2026-03-01"}}}},
        ],
        dispenseRequest={"validityPeriod": {"start": "2025-01-01", "end": "2025-02-01"}},
    )
    assert only_exposure(resource) == (d("2026-01-15"), d("2026-04-30"))


def test_request_validity_period() -> None:
    resource = request(
        dispenseRequest={"validityPeriod": {"start": "2026-01-10", "end": "2026-07-09"}}
    )
    assert only_exposure(resource) == (d("2026-01-10"), d("2026-07-09"))


def test_request_expected_supply_times_fills() -> None:
    resource = request(
        dispenseRequest={
            "numberOfRepeatsAllowed": 2,
            "expectedSupplyDuration": {"value": 30, "code": "d"},
        }
    )
    # 3 fills of 30 days from 10 January: 90 days, 10 January to 9 April.
    assert only_exposure(resource) == (d("2026-01-10"), d("2026-04-09"))


def test_request_active_runs_to_as_of() -> None:
    assert only_exposure(request(status="active")) == (d("2026-01-10"), AS_OF)


def test_request_default_supply_is_configurable() -> None:
    assert only_exposure(request()) == (d("2026-01-10"), d("2026-02-08"))
    history = build_history(record_of(request()), AS_OF, 90)
    assert history.exposures[0].certain() == (d("2026-01-10"), d("2026-04-09"))


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "not-taken", "draft"])
def test_ignored_statuses(status: str) -> None:
    history = build_history(record_of(request(status=status)), AS_OF, SUPPLY)
    assert history.exposures == ()
    assert history.ignored == 1
    assert history.retrieved == 1
    assert history.usable == 0


def _of_type(rtype: str, status: str) -> dict[str, Any]:
    """A dated record of the given medication type and status."""
    dates = {
        "MedicationStatement": {"effectiveDateTime": "2026-11-20"},
        "MedicationAdministration": {"effectiveDateTime": "2026-11-20"},
        "MedicationDispense": {"whenHandedOver": "2026-11-20"},
        "MedicationRequest": {"authoredOn": "2026-11-20"},
    }[rtype]
    return {"resourceType": rtype, "status": status, "medicationCodeableConcept": concept("a")} | (
        dates
    )


@pytest.mark.parametrize(
    ("rtype", "status"),
    [
        ("MedicationStatement", "not-taken"),
        ("MedicationStatement", "intended"),
        ("MedicationStatement", "entered-in-error"),
        ("MedicationRequest", "cancelled"),
        ("MedicationRequest", "draft"),
        ("MedicationRequest", "entered-in-error"),
        ("MedicationAdministration", "not-done"),
        ("MedicationAdministration", "entered-in-error"),
        ("MedicationDispense", "declined"),
        ("MedicationDispense", "cancelled"),
        ("MedicationDispense", "preparation"),
        ("MedicationDispense", "entered-in-error"),
    ],
)
def test_not_given_statuses_of_each_type_are_ignored(rtype: str, status: str) -> None:
    history = build_history(record_of(_of_type(rtype, status)), AS_OF, SUPPLY)
    assert history.exposures == ()
    assert history.ignored == 1


@pytest.mark.parametrize(
    ("rtype", "status"),
    [
        ("MedicationStatement", "active"),
        ("MedicationStatement", "completed"),
        ("MedicationRequest", "completed"),
        ("MedicationAdministration", "completed"),
        ("MedicationAdministration", "in-progress"),
        ("MedicationDispense", "completed"),
    ],
)
def test_given_statuses_count(rtype: str, status: str) -> None:
    history = build_history(record_of(_of_type(rtype, status)), AS_OF, SUPPLY)
    assert len(history.exposures) == 1
    assert history.ignored == 0


def test_open_ended_only_when_running_to_as_of() -> None:
    active = request(status="active")
    finished = request(status="completed")
    future = request(status="active", authoredOn="2026-12-01")
    history = build_history(record_of(active, finished, future), AS_OF, SUPPLY)
    by_ref = {e.reference: e for e in history.exposures}
    assert by_ref["MedicationRequest/r0"].open_ended
    assert not by_ref["MedicationRequest/r1"].open_ended
    assert not by_ref["MedicationRequest/r2"].open_ended  # starts after as_of: not cut there


def test_record_without_dates_is_kept_as_undated() -> None:
    resource = request()
    del resource["authoredOn"]
    history = build_history(record_of(resource), AS_OF, SUPPLY)
    assert history.exposures == ()
    assert len(history.undated) == 1
    assert "authoredOn" in history.undated[0].why
    assert history.undated_with_drug(valueset("a"))


# ----------------------------------------------------------------------------- drugs and routes
def test_product_and_ingredient_codes_match() -> None:
    product = request(medicationCodeableConcept=concept("product-x"))
    history = build_history(record_of(product), AS_OF, SUPPLY)
    assert history.with_drug(valueset("ingredient-x", "product-x"))
    assert not history.with_drug(valueset("ingredient-x"))


def _rxnorm(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": RXNORM, "code": code, "display": display}]}


# Made-up RxNorm codes: only the displays (RxNorm-style product names) matter here.
METHOTREXATE = ValueSet(
    id="mtx",
    url="urn:test:mtx",
    title="mtx",
    codes=frozenset({(RXNORM, "1001"), (RXNORM, "1002")}),
    displays={(RXNORM, "1001"): "methotrexate", (RXNORM, "1002"): "Methotrexate 10 MG Oral Tablet"},
    ingredient_names={"methotrexate": "methotrexate"},
)


def test_an_unlisted_product_matches_by_ingredient_name_and_its_label_says_so() -> None:
    product = request(medicationCodeableConcept=_rxnorm("2001", "Methotrexate 2.5 MG Oral Tablet"))
    history = build_history(record_of(product), AS_OF, SUPPLY)
    (exposure,) = history.with_drug(METHOTREXATE)
    assert exposure.label(METHOTREXATE) == (
        "Methotrexate 2.5 MG Oral Tablet (identified by name: methotrexate)"
    )
    assert not history.with_drug(valueset("other"))


def test_a_listed_product_code_matches_by_code_and_is_labelled_plainly() -> None:
    product = request(medicationCodeableConcept=_rxnorm("1002", "Methotrexate 10 MG Oral Tablet"))
    (exposure,) = build_history(record_of(product), AS_OF, SUPPLY).with_drug(METHOTREXATE)
    assert exposure.label(METHOTREXATE) == "Methotrexate 10 MG Oral Tablet"


def test_a_contained_ingredient_named_in_a_product_name_matches() -> None:
    resource = request(
        contained=[
            {
                "resourceType": "Medication",
                "id": "m",
                "code": _rxnorm("2002", "0.4 ML methotrexate 25 MG/ML Prefilled Syringe"),
            }
        ],
        medicationReference={"reference": "#m"},
    )
    del resource["medicationCodeableConcept"]
    assert build_history(record_of(resource), AS_OF, SUPPLY).with_drug(METHOTREXATE)


@pytest.mark.parametrize(
    "drug",
    [
        _rxnorm("2003", "Aspirin 81 MG Oral Tablet"),
        {"text": "Methotrexate 2.5 MG Oral Tablet"},  # no coding: nothing to match
    ],
)
def test_no_name_match_without_a_coded_drug_naming_the_ingredient(drug: Any) -> None:
    history = build_history(record_of(request(medicationCodeableConcept=drug)), AS_OF, SUPPLY)
    assert not history.with_drug(METHOTREXATE)
    assert not history.undated_with_drug(METHOTREXATE)


@pytest.mark.parametrize(
    "drug",
    [
        # any system: a local code, NDC, PZN, dm+d, or no system at all
        {"coding": [{"system": SYSTEM, "code": "x", "display": "Methotrexate 2.5 MG Oral Tablet"}]},
        {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "1-2-3"}], "text": "MTX"},
        {"coding": [{"code": "L-77", "display": "Méthotrexate 10 mg comprimé"}]},
        {
            "coding": [{"system": "http://fhir.de/CodeSystem/ifa/pzn", "code": "01234567"}],
            "text": "METHOTREXATE 7,5 mg Fertigspritze",
        },
    ],
)
def test_a_code_of_any_system_is_read_by_the_name_it_carries(drug: Any) -> None:
    history = build_history(record_of(request(medicationCodeableConcept=drug)), AS_OF, SUPPLY)
    if drug.get("text") == "MTX":  # "MTX" is no listed name: identified, as another drug
        assert not history.with_drug(METHOTREXATE)
        assert not history.unidentified([METHOTREXATE])
        return
    (exposure,) = history.with_drug(METHOTREXATE)
    assert exposure.label(METHOTREXATE).endswith("(identified by name: methotrexate)")


def test_a_bare_code_in_no_list_is_unidentified_and_a_listed_one_is_not() -> None:
    ndc = {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "50242-051-21"}]}
    listed = {"coding": [{"system": RXNORM, "code": "1002"}]}
    history = build_history(
        record_of(
            request(medicationCodeableConcept=ndc), request(medicationCodeableConcept=listed)
        ),
        AS_OF,
        SUPPLY,
    )
    (unknown,) = history.unidentified([METHOTREXATE])
    assert unknown.codings[0]["code"] == "50242-051-21"
    assert "a code in no list, without a name" in unidentified_text([unknown])


def test_referenced_medication_and_its_ingredients() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "med1",
        "code": concept("product-y"),
        "ingredient": [{"itemCodeableConcept": concept("ingredient-y")}],
    }
    resource = request(medicationReference={"reference": "Medication/med1"})
    del resource["medicationCodeableConcept"]
    history = build_history(record_of(medication, resource), AS_OF, SUPPLY)
    assert history.with_drug(valueset("product-y"))
    assert history.with_drug(valueset("ingredient-y"))
    assert not history.with_drug(valueset("other"))


def test_contained_medication_with_ingredient_only() -> None:
    resource = request(
        contained=[
            {
                "resourceType": "Medication",
                "id": "m",
                "code": {"text": "compounded capsule"},
                "ingredient": [{"itemCodeableConcept": concept("ingredient-z")}],
            }
        ],
        medicationReference={"reference": "#m"},
    )
    del resource["medicationCodeableConcept"]
    history = build_history(record_of(resource), AS_OF, SUPPLY)
    assert history.with_drug(valueset("ingredient-z"))
    assert history.exposures[0].drug == "compounded capsule"


def test_routes_from_each_dosage_shape() -> None:
    oral = {"coding": [{"system": ROUTES, "code": "oral", "display": "Oral"}]}
    oral_vs = valueset("oral", system=ROUTES)
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": concept("a"),
        "effectiveDateTime": "2026-01-01",
        "dosage": [{"route": oral}],
    }
    administration = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "effectiveDateTime": "2026-01-01",
        "dosage": {"route": oral},
    }
    req = request(dosageInstruction=[{"route": oral}])
    bare = request()
    history = build_history(record_of(statement, administration, req, bare), AS_OF, SUPPLY)
    by_type = {e.reference: e for e in history.exposures}
    assert by_type["MedicationStatement/r0"].route_in(oral_vs)
    assert by_type["MedicationAdministration/r1"].route_in(oral_vs)
    assert by_type["MedicationRequest/r2"].route_in(oral_vs)
    assert by_type["MedicationRequest/r2"].route_label() == "Oral"
    assert not by_type["MedicationRequest/r3"].route_stated()


def test_unreadable_routes() -> None:
    oral_vs = valueset("oral", system=ROUTES)
    iv_vs = valueset("iv", system=ROUTES)
    known = (oral_vs, iv_vs)
    coded_iv = request(dosageInstruction=[{"route": concept("iv", ROUTES)}])
    text_only = request(dosageInstruction=[{"route": {"text": "by mouth"}}])
    unlisted = request(dosageInstruction=[{"route": concept("im", ROUTES)}])
    bare = request()
    history = build_history(record_of(coded_iv, text_only, unlisted, bare), AS_OF, SUPPLY)
    e = {x.reference: x for x in history.exposures}
    assert not e["MedicationRequest/r0"].route_unreadable(known)
    assert e["MedicationRequest/r1"].route_unreadable(known)
    assert "text only" in e["MedicationRequest/r1"].route_unreadable_text()
    assert "'by mouth'" in e["MedicationRequest/r1"].route_unreadable_text()
    assert e["MedicationRequest/r2"].route_unreadable(known)
    assert f"{ROUTES}|im" in e["MedicationRequest/r2"].route_unreadable_text()
    assert not e["MedicationRequest/r3"].route_unreadable(known)  # no route: not "unreadable"


# ----------------------------------------------------------------------------- partial dates
def test_partial_date_gives_certain_and_possible_periods() -> None:
    resource = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "whenHandedOver": "2026-03",
        "daysSupply": {"value": 60, "code": "d"},
    }
    exposure = build_history(record_of(resource), AS_OF, SUPPLY).exposures[0]
    assert exposure.partial
    assert exposure.start == DateSpan(d("2026-03-01"), d("2026-03-31"))
    # Handed over some day in March, 60 days: surely covers 31 March .. 29 April.
    assert exposure.certain() == (d("2026-03-31"), d("2026-04-29"))
    assert exposure.possible() == (d("2026-03-01"), d("2026-05-29"))


def test_partial_single_day_has_no_certain_day() -> None:
    resource = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": concept("a"),
        "effectiveDateTime": "2026-05",
    }
    exposure = build_history(record_of(resource), AS_OF, SUPPLY).exposures[0]
    assert exposure.certain() is None
    assert exposure.possible() == (d("2026-05-01"), d("2026-05-31"))


# ----------------------------------------------------------------------------- interval arithmetic
def test_merge_bridges_gaps_up_to_the_limit() -> None:
    first = (d("2026-01-01"), d("2026-01-31"))
    # 30 uncovered days (1 Feb .. 2 Mar) are bridged ...
    assert merge([first, (d("2026-03-03"), d("2026-03-31"))], 30) == [
        (d("2026-01-01"), d("2026-03-31"))
    ]
    # ... 31 are not.
    assert merge([first, (d("2026-03-04"), d("2026-03-31"))], 30) == [
        first,
        (d("2026-03-04"), d("2026-03-31")),
    ]


def test_merge_handles_overlap_and_order() -> None:
    periods = [(d("2026-02-01"), d("2026-02-10")), (d("2026-01-01"), d("2026-03-01"))]
    assert merge(periods, 0) == [(d("2026-01-01"), d("2026-03-01"))]


def test_intersect_and_clip() -> None:
    a = [(d("2026-01-01"), d("2026-01-31")), (d("2026-03-01"), d("2026-03-31"))]
    b = [(d("2026-01-20"), d("2026-03-10"))]
    assert intersect(a, b) == [
        (d("2026-01-20"), d("2026-01-31")),
        (d("2026-03-01"), d("2026-03-10")),
    ]
    assert intersect(a, []) == []
    assert clip(a, d("2026-03-05")) == [a[0], (d("2026-03-01"), d("2026-03-05"))]
    assert clip(a, d("2025-12-31")) == []


def test_days_and_overlaps() -> None:
    assert days_in((d("2026-01-01"), d("2026-01-01"))) == 1
    assert days_in((d("2026-05-28"), d("2026-11-25"))) == 182
    assert overlaps((d("2026-01-01"), d("2026-01-05")), (d("2026-01-05"), d("2026-01-09")))
    assert not overlaps((d("2026-01-01"), d("2026-01-04")), (d("2026-01-05"), d("2026-01-09")))


# ----------------------------------------------------------------------------- cache
def test_history_is_cached_per_record_and_rebuilt_when_records_change() -> None:
    record = record_of(request())
    first = medication_history(record, AS_OF, SUPPLY)
    assert medication_history(record, AS_OF, SUPPLY) is first
    assert medication_history(record, AS_OF, 60) is not first
    record.add(request(id="later"))
    assert len(medication_history(record, AS_OF, SUPPLY).exposures) == 2
