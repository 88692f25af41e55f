"""Code matching on codes as real exports send them: text, JSON numbers, and malformed values."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fhir_trial.canonical import CODESYSTEM_URL
from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import PatientRecord
from fhir_trial.terminology import (
    ATC,
    ICD10,
    ICD10CM,
    INGREDIENT_NAME_USE,
    RXNORM,
    SNOMED,
    ValueSet,
    code_text,
    load_terminology,
    lookup_keys,
    normalise_system,
    valueset_from_resource,
)

MALFORMED = [{"coding": "55464009"}, ["55464009"], 55464009.0, True, None, "", "   "]


@pytest.mark.parametrize(
    ("code", "text"),
    [(" 55464009 ", "55464009"), (55464009, "55464009"), ("M32.14", "M32.14")]
    + [(bad, None) for bad in MALFORMED],
)
def test_code_text(code: Any, text: str | None) -> None:
    assert code_text(code) == text


@pytest.mark.parametrize("system", [5, ["http://snomed.info/sct"], {"uri": "x"}, None, ""])
def test_a_system_that_is_not_text_is_no_system(system: Any) -> None:
    assert normalise_system(system) == ""


def test_lookup_keys_for_numbers_and_malformed_codes() -> None:
    assert lookup_keys(SNOMED, 55464009) == [(SNOMED, "55464009")]
    assert lookup_keys(ICD10CM, "M32.14")[-1] == (ICD10CM, "M")
    for bad in MALFORMED:
        assert lookup_keys(SNOMED, bad) == []
    assert lookup_keys({"not": "a system"}, "55464009") == [("", "55464009")]


@pytest.mark.parametrize(
    ("code", "dotted"), [("D090", "D09.0"), ("B004", "B00.4"), ("D8489", "D84.89")]
)
def test_a_dotless_icd10_code_also_gives_its_own_dotted_form(code: str, dotted: str) -> None:
    for system in (ICD10CM, ICD10):
        keys = lookup_keys(system, code)
        assert keys[0] == (system, code)
        assert (system, dotted) in keys
        assert (system, dotted[:3]) in keys


def test_dotted_and_three_character_icd10_codes_keep_their_keys() -> None:
    dotted = [(ICD10CM, "D09.0"), (ICD10CM, "D09"), (ICD10CM, "D0"), (ICD10CM, "D")]
    assert lookup_keys(ICD10CM, "D09.0") == dotted
    assert lookup_keys(ICD10CM, "C50") == [(ICD10CM, "C50"), (ICD10CM, "C5"), (ICD10CM, "C")]


def test_atc_codes_get_no_dots() -> None:
    keys = lookup_keys(ATC, "J01CA04")
    assert all("." not in code for _, code in keys)
    assert (ATC, "J01") in keys


@pytest.mark.parametrize(
    ("valueset", "code"),
    [("malignancy-carve-outs", "D090"), ("severe-herpes", "B004"), ("immunodeficiency", "D8489")],
)
def test_a_dotless_code_is_a_member_where_its_dotted_form_is_listed(
    valueset: str, code: str
) -> None:
    assert load_terminology(Settings().resources_dir).get(valueset).contains(ICD10CM, code)


def test_valueset_membership_never_raises_on_malformed_codes() -> None:
    sle = load_terminology(Settings().resources_dir).get("sle")
    assert sle.contains(SNOMED, 55464009)  # a JSON number is the same SNOMED CT code
    for bad in MALFORMED:
        assert not sle.contains(SNOMED, bad)
    assert not sle.contains(["not", "a", "system"], "55464009")


def _with_condition(code: Any) -> PatientRecord:
    record = PatientRecord()
    record.add(
        {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1990-01-01"}
    )
    record.add(
        {
            "resourceType": "Condition",
            "id": "c",
            "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": SNOMED, "code": code}]},
        }
    )
    record.mark_obtained("Patient", "Condition")
    return record


def test_sle_sent_as_a_json_number_is_found() -> None:
    record = _with_condition(55464009)
    report = evaluate(record)
    assert report.criterion("inc-sle-diagnosis").status == "met"
    assert report.warnings == ()


def test_a_malformed_code_is_ignored_and_the_report_says_so() -> None:
    record = _with_condition({"value": "55464009"})
    report = evaluate(record)
    assert report.criterion("inc-sle-diagnosis").status == "not-met"
    assert report.warnings == (
        "Condition codings whose code is not text were ignored: they match no ValueSet, "
        "so what they record was not seen",
    )


# ----------------------------------------------------------------------------- ingredient names
NAMES_USE = {"system": CODESYSTEM_URL, "code": INGREDIENT_NAME_USE}


def _named_valueset(*entries: tuple[str, str, list[str]]) -> ValueSet:
    """A ValueSet of RxNorm (code, display, ingredient names) entries, as a shipped expansion."""
    contains = [
        {
            "system": RXNORM,
            "code": code,
            "display": display,
            "designation": [{"use": NAMES_USE, "value": name} for name in names],
        }
        for code, display, names in entries
    ]
    return valueset_from_resource(
        {"resourceType": "ValueSet", "id": "t", "url": "urn:t", "expansion": {"contains": contains}}
    )


STEROIDS = _named_valueset(
    ("8640", "prednisone", ["prednisone"]), ("8638", "prednisolone", ["prednisolone"])
)


@pytest.mark.parametrize(
    ("display", "ingredient"),
    [
        ("Methotrexate 2.5 MG Oral Tablet", "methotrexate"),
        ("0.2 ML methotrexate 50 MG/ML Auto-Injector [Rasuvo]", "methotrexate"),
        ("cycloSPORINE, modified 25 MG Oral Capsule", "cyclosporine"),
        ("Ciclosporin 25 mg capsules", "cyclosporine"),
        ("mycophenolate  mofetil 250 MG Oral Capsule", "mycophenolate mofetil"),
        ("Mycophenolate sodium 360 mg gastro-resistant tablets", "mycophenolic acid"),
        ("Aspirin 81 MG Oral Tablet", None),
        ("methotrexatex 10 MG", None),
        ("", None),
    ],
)
def test_product_names_name_listed_ingredients(display: str, ingredient: str | None) -> None:
    vs = load_terminology(Settings().resources_dir).get("immunosuppressants")
    coding = {"system": RXNORM, "code": "999999001", "display": display}
    assert vs.coding_ingredient(coding) == ingredient
    assert (vs.matching_coding({"coding": [coding]}) is coding) is (ingredient is not None)


@pytest.mark.parametrize(
    ("display", "ingredient"),
    [
        ("predniSONE 10 MG Oral Tablet", "prednisone"),
        ("prednisoLONE 5 MG Oral Tablet", "prednisolone"),
        ("methylPREDNISolone 4 MG Oral Tablet", None),  # not prednisolone
        ("prednisolone acetate", "prednisolone"),
        ("PREDNISONE", "prednisone"),
    ],
)
def test_whole_words_keep_similar_steroids_apart(display: str, ingredient: str | None) -> None:
    coding = {"system": RXNORM, "code": "999999002", "display": display}
    assert STEROIDS.coding_ingredient(coding) == ingredient


def test_the_shipped_steroid_set_tells_the_three_steroids_apart() -> None:
    vs = load_terminology(Settings().resources_dir).get("oral-corticosteroids")
    for display, ingredient in [
        ("methylPREDNISolone 4 MG Oral Tablet", "methylprednisolone"),
        ("prednisoLONE 15 MG/5ML Oral Solution", "prednisolone"),
        ("predniSONE 1 MG Oral Tablet", "prednisone"),
    ]:
        coding = {"system": RXNORM, "code": "999999003", "display": display}
        assert vs.coding_ingredient(coding) == ingredient


@pytest.mark.parametrize(
    "coding",
    [
        {"system": SNOMED, "code": "999999004", "display": "prednisone 5 MG Oral Tablet"},
        {"system": RXNORM, "display": "prednisone 5 MG Oral Tablet"},  # no code: CQL cannot agree
        {"system": RXNORM, "code": "999999004", "display": {"text": "prednisone"}},
        {"system": RXNORM, "code": "8640", "display": "prednisone"},  # listed: a code match
    ],
)
def test_only_unlisted_rxnorm_codings_with_a_display_match_by_name(coding: Any) -> None:
    assert STEROIDS.coding_ingredient(coding) is None


def test_rxnorm_spelled_as_an_oid_matches_by_name_too() -> None:
    coding = {"system": "urn:oid:2.16.840.1.113883.6.88", "code": "1", "display": "prednisone 5 MG"}
    assert STEROIDS.coding_ingredient(coding) == "prednisone"


def test_names_are_cached_per_display() -> None:
    vs = _named_valueset(("6851", "methotrexate", ["methotrexate"]))
    assert vs.ingredient_named("Methotrexate 2.5 MG Oral Tablet") == "methotrexate"
    assert vs.ingredient_named("Aspirin") is None
    assert vs._by_display == {"Methotrexate 2.5 MG Oral Tablet": "methotrexate", "Aspirin": None}


def test_a_valueset_without_names_matches_by_code_only() -> None:
    vs = load_terminology(Settings().resources_dir).get("sle")
    assert not vs.ingredient_names
    assert vs.coding_ingredient({"system": RXNORM, "code": "1", "display": "lupus"}) is None


_INGREDIENT_DISPLAY = re.compile(r"^[a-z][a-z -]*$")


def test_every_listed_rxnorm_ingredient_records_its_name() -> None:
    """An ingredient entry (lower-case name, no strength or form) carries its ingredient name."""
    terminology = load_terminology(Settings().resources_dir)
    for vs_id in terminology.ids():
        vs = terminology.get(vs_id)
        for (system, code), display in vs.displays.items():
            if system == RXNORM and _INGREDIENT_DISPLAY.match(display):
                if vs_id == "trial-medication-allergens":
                    continue  # allergies match by code only (exc-drug-allergy)
                assert vs.ingredient_names.get(display.lower()) == display, (vs_id, code)


def test_rituximab_is_listed_alike_for_prior_therapy_and_the_b_cell_exclusion() -> None:
    terminology = load_terminology(Settings().resources_dir)
    biologics, b_cell = terminology.get("sle-biologics"), terminology.get("b-cell-therapies")
    rituximab = {
        key
        for key, display in b_cell.displays.items()
        if re.search(r"rituximab|rituxan|truxima|ruxience|riabni", display, re.IGNORECASE)
    }
    assert {(RXNORM, c) for c in ("121191", "2105824", "2273510", "1927884")} <= rituximab
    assert rituximab <= biologics.codes


def test_the_cql_expansion_additions_carry_name_and_dotless_matches() -> None:
    """The CQL oracle is given the same members (fhir_trial.cql.engine.ExpansionIndex)."""
    from fhir_trial.cql.engine import ExpansionIndex

    terminology = load_terminology(Settings().resources_dir)
    index = ExpansionIndex(terminology)
    mtx = {"system": RXNORM, "code": "999999005", "display": "Methotrexate 2.5 MG Oral Tablet"}
    aspirin = {"system": RXNORM, "code": "999999006", "display": "Aspirin 81 MG Oral Tablet"}
    dotless = {"system": ICD10CM, "code": "D090", "display": "Carcinoma in situ of bladder"}
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "MedicationRequest", "medicationCodeableConcept": c}}
            for c in ({"coding": [mtx]}, {"coding": [aspirin]})
        ]
        + [{"resource": {"resourceType": "Condition", "code": {"coding": [dotless]}}}],
    }
    extra = index.extra_codes(bundle)
    immunosuppressants = terminology.get("immunosuppressants").url
    carve_outs = terminology.get("malignancy-carve-outs").url
    assert extra[immunosuppressants] == [{"system": RXNORM, "code": "999999005"}]
    assert {"system": ICD10CM, "code": "D090"} in extra[carve_outs]
    assert all({"system": RXNORM, "code": "999999006"} not in codes for codes in extra.values())


def test_lookups_by_code_answer_in_record_order_whatever_the_string_hashing() -> None:
    """Reasons and evidence must not depend on set order, which varies between processes."""
    codes = [f"C{n:02d}" for n in range(40, 10, -1)]  # listed in the ValueSet in another order
    valueset = ValueSet(
        "test-malignancy",
        "urn:test",
        "test",
        frozenset((ICD10CM, c) for c in reversed(codes)),
        {},
    )
    record = PatientRecord()
    for n, code in enumerate(codes):
        record.add(
            {
                "resourceType": "Condition",
                "id": f"c{n}",
                "code": {"coding": [{"system": ICD10CM, "code": code}]},
            }
        )
    found = [c["id"] for c in record.with_code("Condition", valueset)]
    assert found == [f"c{n}" for n in range(len(codes))]
