"""ICD-10 in every national edition: system spellings, dagger-asterisk forms and edition marks."""

from __future__ import annotations

import pytest

from fhir_trial.terminology import ICD10, ICD10CM, icd10_code_forms, lookup_keys, normalise_system


@pytest.mark.parametrize(
    "system",
    [
        "http://hl7.org/fhir/sid/icd-10",
        "urn:oid:2.16.840.1.113883.6.3",
        "urn:oid:2.16.840.1.113883.6.3.3",  # HL7 OID of a national ICD-10 variant
        "http://fhir.de/CodeSystem/bfarm/icd-10-gm",
        "http://fhir.de/CodeSystem/dimdi/icd-10-gm",
        "urn:oid:1.2.276.0.76.5.409",  # ICD-10-GM 2012
        "urn:oid:1.2.276.0.76.5.486",  # ICD-10-GM 2020
        "http://hl7.org/fhir/sid/icd-10-ca",
        "urn:oid:2.16.840.1.113883.6.94",
        "http://www.mhlw.go.jp/toukei/sippei/2013/ICD10-JP",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full",
        "http://hl7.org/fhir/sid/icd-10-am",
        "https://hospital.example.cn/fhir/CodeSystem/icd10-gb-t-14396",
        "ICD-10",
    ],
)
def test_every_icd10_edition_reads_as_who_icd10(system: str) -> None:
    assert normalise_system(system) == ICD10


@pytest.mark.parametrize(
    "system",
    ["http://hl7.org/fhir/sid/icd-10-cm", "urn:oid:2.16.840.1.113883.6.90", "ICD10CM"],
)
def test_icd10_cm_keeps_its_own_uri(system: str) -> None:
    assert normalise_system(system) == ICD10CM


@pytest.mark.parametrize(
    "system",
    [
        "http://www.cms.gov/Medicare/Coding/ICD10",  # ICD-10-PCS (procedures)
        "http://hl7.org/fhir/sid/icd-10-pcs",
        "http://terminology.hl7.org/CodeSystem/icd-o-3",
        "http://fhir.de/CodeSystem/bfarm/ops",
        "urn:oid:1.2.276.0.76.5.114",  # a German specialty code list, not ICD-10
        "http://snomed.info/sct",
    ],
)
def test_procedure_and_other_classifications_are_not_icd10(system: str) -> None:
    assert normalise_system(system) not in (ICD10, ICD10CM)


@pytest.mark.parametrize(
    ("code", "forms"),
    [
        ("M32.1\u2020", ["M32.1"]),
        ("M32.1+", ["M32.1"]),
        ("N08.5*", ["N08.5"]),
        ("U07.1!", ["U07.1"]),
        ("M32.1\u2020 N08.5*", ["M32.1", "N08.5"]),
        ("M32.1\u2020N08.5*", ["M32.1", "N08.5"]),
        ("M32.-", ["M32"]),
        ("m32.9", ["M32.9"]),
    ],
)
def test_marks_are_not_part_of_the_code(code: str, forms: list[str]) -> None:
    assert icd10_code_forms(code) == forms


def test_a_gm_code_with_its_mark_finds_its_who_category() -> None:
    keys = lookup_keys("http://fhir.de/CodeSystem/bfarm/icd-10-gm", "M32.1+")
    assert (ICD10, "M32.1") in keys and (ICD10, "M32") in keys


def test_a_japanese_code_without_dot_or_with_a_letter_suffix_finds_its_category() -> None:
    system = "http://www.mhlw.go.jp/toukei/sippei/2013/ICD10-JP"
    assert (ICD10, "M32.9") in lookup_keys(system, "M329")
    assert (ICD10, "A08.5") in lookup_keys(system, "A085a")  # a Japanese subdivision


def test_a_dagger_pair_gives_both_codes() -> None:
    keys = lookup_keys(ICD10, "M32.1\u2020 N08.5*")
    assert (ICD10, "M32.1") in keys and (ICD10, "N08.5") in keys
