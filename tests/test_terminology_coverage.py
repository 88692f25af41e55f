"""Terminology coverage: the criteria read the codes of the published VSAC expansions they use.

For every VSAC value set of ``../shared/fixtures/vsac`` that the project imports (see
``fhir_trial.study.vsac_import``), a fixed-seed sample of its in-scope codes is screened one by one,
code only (no display, so no name or display-word net can help), each in a minimal record like the
one ``measure_coverage.py`` of that folder builds, and the matching criterion must read it. Which
codes are in scope, and which statuses count, is written here as data (the assessor's ``scope()``
of ``measure_coverage.py``, reimplemented, not imported), with the project's own decisions noted
where they differ.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import CATEGORIES, PatientRecord

VSAC_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "vsac"
SEED = 20261126
PER_ROW = 12  # codes per (value set, criterion): about 330 in all
AS_OF = dt.date(2026, 11, 26)
SN = "http://snomed.info/sct"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"

Entry = tuple[str, str, str]  # system, code, display
# (criterion, entry) -> statuses that count as read, or None when the code is out of scope.
Scope = Callable[[str, Entry], "frozenset[str] | None"]
MET = frozenset({"met"})
REVIEW = frozenset({"needs-review"})


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# ----------------------------------------------------------------------------- scope as data
NOT_MALIGNANT = _rx(r"uncertain behavio|unspecified behavio|benign|in situ")
NOT_MALIGNANT_ICD = re.compile(r"D(0\d|3[7-9]|4\d)")
IMMUNODEFICIENCY = _rx(
    r"immunodeficien|immune deficien|agammaglobulin|hypogammaglobulin|wiskott|hyper-?\s?i(mmuno)?g|"
    r"hyperimmunoglobulin|di ?george|ataxia|chediak|granulomatous disease|leukocyte adhesion|"
    r"lymphocyte function antigen|nezelof|reticular dysgenesis|\bscid\b|complement|deficiency|"
    r"human immunodeficiency|\bhiv\b|\baids\b"
)
# Project decision (the VSAC README's carve-out): hereditary angioedema (C1 esterase inhibitor
# deficiency) and complement overactivity are not immunodeficiencies, unlike the assessor's scope.
NOT_IMMUNODEFICIENCY = _rx(r"angioedema|c1 esterase inhibitor|hyperactivation|graft.versus.host")
SEVERE_HERPES = _rx(
    r"encephal|mening|myelit|ophthalm|ocular|\beye|kerat|conjunctiv|iritis|iridocycl|uveit|"
    r"scleritis|retin|cornea|hutchinson|disseminat|generali[sz]ed"
)
PREGNANT = _rx(
    r"pregnan|trimester|gestation|fetus|fetal|antepartum|placent|amnio|chorio|twin|triplet|"
    r"quadruplet|quintuplet|multiple gestation|supervision|ectopic|molar|hydatidiform|miscarriage|"
    r"abortion|preterm labor|maternal care|oligohydramnios|polyhydramnios|eclampsia|hyperemesis"
)
NOT_PREGNANT_NOW = _rx(
    r"puerper|postpartum|after delivery|following (delivery|childbirth)|^history of"
)
PARTNERS = _rx(
    r"azathioprine|cyclosporine|tacrolimus|mycophenol|leflunomide|methotrexate|cyclophosphamide|"
    r"rituximab"
)


def lupus(crit: str, e: Entry) -> frozenset[str] | None:
    drug = "drug-induced" in e[2].lower() or e[1] == "M32.0"
    generic = e[1] in ("200936003", "239886003", "239888002")
    if crit == "inc-sle-diagnosis":
        return None if drug else (REVIEW if generic else MET)
    return MET if drug else None


def autoimmune(crit: str, e: Entry) -> frozenset[str] | None:
    code = e[1]
    if crit == "inc-sle-diagnosis":
        return MET if code.startswith("M32.1") or code in ("M32.8", "M32.9") else None
    return MET if code == "M32.0" or code.startswith(("M33", "M34")) or code == "M36.0" else None


def cancer(crit: str, e: Entry) -> frozenset[str] | None:
    return None if NOT_MALIGNANT.search(e[2]) or NOT_MALIGNANT_ICD.match(e[1]) else MET


def immune(crit: str, e: Entry) -> frozenset[str] | None:
    system, code, display = e
    if code == "414029004" or NOT_IMMUNODEFICIENCY.search(display):
        return None
    if system.endswith("icd-10-cm"):
        if code.startswith("D84.82"):
            return frozenset({"met", "needs-review"})
        return MET if code.startswith(("D80", "D81", "D82", "D83", "D84")) else None
    return MET if IMMUNODEFICIENCY.search(display) else None


def herpes(crit: str, e: Entry) -> frozenset[str] | None:
    if crit == "exc-recent-herpes-zoster":
        return None if re.search(r"history of|immune \(finding\)|vaccin", e[2].lower()) else MET
    return MET if SEVERE_HERPES.search(e[2]) else None


def pregnancy(crit: str, e: Entry) -> frozenset[str] | None:
    current = PREGNANT.search(e[2]) or e[1].startswith(("Z33", "Z34", "Z3A", "O09"))
    return MET if current and not NOT_PREGNANT_NOW.search(e[2]) else None


def partner(crit: str, e: Entry) -> frozenset[str] | None:
    if crit == "inc-prior-therapy":
        return MET if PARTNERS.search(e[2]) else None
    return MET if "rituximab" in e[2].lower() else None


def every(statuses: frozenset[str]) -> Scope:
    return lambda crit, e: statuses


def unless(codes: tuple[str, ...] = (), words: str = "") -> Scope:
    return lambda crit, e: None if e[1] in codes or (words and words in e[2]) else MET


@dataclass(frozen=True)
class Plan:
    """One VSAC value set: its OID, the record kind that carries a code, criteria and scope."""

    key: str
    oid: str
    kind: str
    criteria: tuple[str, ...]
    scope: Scope


PLANS = (
    Plan(
        "Lupus",
        "2.16.840.1.113883.3.464.1003.117.12.1010",
        "condition",
        ("inc-sle-diagnosis", "exc-skin-disease"),
        lupus,
    ),
    Plan(
        "AutoimmuneDisease",
        "2.16.840.1.113762.1.4.1029.311",
        "condition",
        ("inc-sle-diagnosis", "exc-skin-disease"),
        autoimmune,
    ),
    Plan(
        "PsoriaticArthritis",
        "2.16.840.1.113883.3.464.1003.113.12.1046",
        "condition",
        ("exc-skin-disease",),
        every(MET),
    ),
    Plan(
        "AllPrimarySecondaryCancer",
        "2.16.840.1.113762.1.4.1111.161",
        "condition",
        ("exc-malignancy",),
        cancer,
    ),
    Plan("Cancer", "2.16.840.1.113883.3.526.3.1010", "condition", ("exc-malignancy",), cancer),
    Plan(
        "LymphaticHematopoietic",
        "2.16.840.1.113883.3.464.1003.108.12.1009",
        "condition",
        ("exc-malignancy",),
        cancer,
    ),
    Plan(
        "LeukemiaLymphoma",
        "2.16.840.1.113762.1.4.1248.136",
        "condition",
        ("exc-malignancy",),
        cancer,
    ),
    Plan(
        "HIV",
        "2.16.840.1.113883.3.464.1003.120.12.1003",
        "condition",
        ("exc-immunodeficiency",),
        every(MET),
    ),
    Plan(
        "SCID",
        "2.16.840.1.113883.3.464.1003.120.12.1007",
        "condition",
        ("exc-immunodeficiency",),
        every(MET),
    ),
    Plan(
        "ImmuneDisorders",
        "2.16.840.1.113883.3.464.1003.120.12.1001",
        "condition",
        ("exc-immunodeficiency",),
        immune,
    ),
    Plan(
        "Epilepsy",
        "2.16.840.1.113762.1.4.1248.171",
        "condition",
        ("exc-cns-disease",),
        lambda crit, e: MET if e[1].startswith("G40") else None,
    ),
    Plan(
        "SeizureDisorder",
        "2.16.840.1.113883.3.464.1003.105.12.1206",
        "condition",
        ("exc-cns-disease",),
        every(MET),
    ),
    Plan(
        "HeartFailure",
        "2.16.840.1.113883.3.526.3.376",
        "condition",
        ("exc-heart-failure",),
        every(frozenset({"met", "needs-review"})),
    ),
    Plan(
        "VaricellaZoster",
        "2.16.840.1.113883.3.464.1003.110.12.1039",
        "condition",
        ("exc-recent-herpes-zoster", "exc-severe-herpes"),
        herpes,
    ),
    Plan(
        "GenitalHerpes",
        "2.16.840.1.113883.3.464.1003.110.12.1049",
        "condition",
        ("exc-recent-herpes-zoster", "exc-severe-herpes"),
        herpes,
    ),
    Plan(
        "Pregnancy",
        "2.16.840.1.113883.3.526.3.378",
        "condition",
        ("exc-pregnancy-lactation",),
        pregnancy,
    ),
    Plan(
        "PregnantState",
        "2.16.840.1.113883.3.3157.4055",
        "condition",
        ("exc-pregnancy-lactation",),
        every(MET),
    ),
    Plan(
        "Breastfeeding",
        "2.16.840.1.113762.1.4.1047.73",
        "condition",
        ("exc-pregnancy-lactation",),
        unless(codes=("169643005",)),
    ),
    Plan(
        "OralGlucocorticoids",
        "2.16.840.1.113883.3.464.1003.196.12.1266",
        "steroid",
        ("inc-prior-therapy",),
        unless(words="Paste"),
    ),
    Plan(
        "Immunosuppressive",
        "2.16.840.1.113762.1.4.1151.32",
        "partner",
        ("inc-prior-therapy", "exc-b-cell-therapy"),
        partner,
    ),
    Plan(
        "Chemotherapy",
        "2.16.840.1.113762.1.4.1151.60",
        "partner",
        ("inc-prior-therapy", "exc-b-cell-therapy"),
        partner,
    ),
    Plan(
        "ChemotherapyAllergens",
        "2.16.840.1.113762.1.4.1151.60",
        "allergy",
        ("exc-drug-allergy",),
        lambda crit, e: MET if re.search(r"cyclophosphamide|fludarabine", e[2], re.I) else None,
    ),
    Plan(
        "Antibiotics",
        "2.16.840.1.113883.3.464.1003.1190",
        "antibiotic",
        ("exc-iv-antibiotics",),
        unless(words="Inhalation"),
    ),
    Plan(
        "IntravenousRoute",
        "2.16.840.1.113883.3.117.1.7.1.222",
        "route",
        ("exc-iv-antibiotics",),
        every(MET),
    ),
    Plan(
        "Hemoglobin",
        "2.16.840.1.113762.1.4.1248.219",
        "hemoglobin",
        ("inc-hemoglobin",),
        unless(codes=("35183-3", "24360-0")),
    ),
    Plan("EjectionFraction", "2.16.840.1.113883.3.526.3.1134", "lvef", ("inc-lvef",), every(MET)),
    Plan(
        "PregnancyTest",
        "2.16.840.1.113883.3.464.1003.111.12.1011",
        "hcg",
        ("exc-pregnancy-lactation",),
        unless(codes=("55870-0",)),
    ),
)


# ----------------------------------------------------------------------------- records
def _coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


ORAL = {"coding": [{"system": SN, "code": "26643006", "display": "Oral route"}]}
IV = {"coding": [{"system": SN, "code": "47625008", "display": "Intravenous route"}]}
MMF = {"coding": [{"system": RX, "code": "68149", "display": "mycophenolate mofetil"}]}
PREDNISONE = {"coding": [{"system": RX, "code": "8640", "display": "prednisone"}]}
CEFTRIAXONE = {"coding": [{"system": RX, "code": "2193", "display": "ceftriaxone"}]}
ACTIVE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    ]
}
CONFIRMED = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "confirmed",
        }
    ]
}
LAB = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
            }
        ]
    }
]


def _statement(cc: dict[str, Any], route: dict[str, Any] | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": cc,
        "effectivePeriod": {"start": "2026-01-01"},
    }
    if route:
        resource["dosage"] = [{"route": route}]
    return resource


def _administration(cc: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": cc,
        "effectiveDateTime": "2026-11-24",
        "dosage": {"route": route},
    }


def _observation(cc: dict[str, Any], when: str, **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": LAB,
        "code": cc,
        "effectiveDateTime": when,
        **value,
    }


def records(kind: str, entry: Entry) -> list[dict[str, Any]]:
    """The minimal record carrying one code (as measure_coverage.py builds it), code only."""
    system, code, display = entry
    cc = _coding(system, code)
    if kind == "condition":
        return [
            {
                "resourceType": "Condition",
                "clinicalStatus": ACTIVE,
                "verificationStatus": CONFIRMED,
                "code": cc,
                "onsetDateTime": "2026-11-01",
                "recordedDate": "2026-11-01",
            }
        ]
    if kind == "steroid":
        return [_statement(cc), _statement(MMF)]
    if kind == "partner":
        return [_statement(PREDNISONE, ORAL), _statement(cc)]
    if kind == "antibiotic":
        return [_administration(cc, IV)]
    if kind == "route":
        return [_administration(CEFTRIAXONE, cc)]
    if kind == "allergy":
        return [
            {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                            "code": "confirmed",
                        }
                    ]
                },
                "type": "allergy",
                "category": ["medication"],
                "code": cc,
                "recordedDate": "2026-11-01",
            }
        ]
    if kind == "hemoglobin":
        moles = "Moles/volume" in display  # the unit follows the test's property
        unit = "mmol/L" if moles else "g/dL"
        quantity = {"value": 7.4 if moles else 12.0, "unit": unit, "system": UCUM, "code": unit}
        return [_observation(cc, "2026-11-20", valueQuantity=quantity)]
    if kind == "lvef":
        quantity = {"value": 60, "unit": "%", "system": UCUM, "code": "%"}
        return [_observation(cc, "2026-11-01", valueQuantity=quantity)]
    if kind == "hcg":
        interpretation = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
        if "Presence" in display or "Interpretation" in display:
            value: dict[str, Any] = {
                "valueCodeableConcept": {
                    "coding": [{"system": SN, "code": "10828004", "display": "Positive"}]
                }
            }
            flag = "POS"
        else:
            iu = {"unit": "[IU]/L", "system": UCUM, "code": "[IU]/L"}
            value = {
                "valueQuantity": {"value": 250, **iu},
                "referenceRange": [{"high": {"value": 5, **iu}}],
            }
            flag = "H"
        value["interpretation"] = [{"coding": [{"system": interpretation, "code": flag}]}]
        return [_observation(cc, "2026-11-20", **value)]
    raise ValueError(kind)


# ----------------------------------------------------------------------------- sample
@dataclass(frozen=True)
class Sampled:
    plan: Plan
    criterion: str
    entry: Entry
    expected: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.plan.key}-{self.criterion}-{self.entry[1]}"


def _expansion(oid: str) -> list[Entry]:
    data = json.loads((VSAC_DIR / f"valueset-{oid}.json").read_text(encoding="utf-8"))
    out: list[Entry] = []
    stack = list(reversed(data["expansion"]["contains"]))
    while stack:
        item = stack.pop()
        if item.get("code"):
            out.append((item["system"], item["code"], item.get("display", "")))
        stack.extend(reversed(item.get("contains", [])))
    return out


def _sample() -> list[Sampled]:
    if not VSAC_DIR.is_dir():
        return []
    chosen: list[Sampled] = []
    for plan in PLANS:
        entries = _expansion(plan.oid)
        for criterion in plan.criteria:
            in_scope = [(e, s) for e in entries if (s := plan.scope(criterion, e)) is not None]
            rng = random.Random(f"{SEED}-{plan.key}-{criterion}")
            picked = rng.sample(in_scope, min(PER_ROW, len(in_scope)))
            chosen += [Sampled(plan, criterion, e, s) for e, s in picked]
    return chosen


SAMPLE = _sample()


def test_the_sample_covers_every_imported_value_set() -> None:
    if not VSAC_DIR.is_dir():
        pytest.skip(f"{VSAC_DIR} is not there (the shared fixtures sit beside the checkout)")
    assert 250 <= len(SAMPLE) <= 450
    assert {s.plan.key for s in SAMPLE} == {p.key for p in PLANS}


@pytest.mark.parametrize("sampled", SAMPLE, ids=[s.id for s in SAMPLE])
def test_code_only_is_read_by_its_criterion(sampled: Sampled) -> None:
    record = PatientRecord()
    record.add(
        {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1985-06-15"}
    )
    for index, resource in enumerate(records(sampled.plan.kind, sampled.entry)):
        resource["id"] = f"r{index}"
        resource["patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"] = {
            "reference": "Patient/p"
        }
        record.add(resource)
    record.mark_obtained(*CATEGORIES)
    result = evaluate(record, Settings(as_of=AS_OF)).criterion(sampled.criterion)
    system, code, display = sampled.entry
    assert result.status in sampled.expected, (
        f"{system}|{code} ({display}) in VSAC {sampled.plan.oid}: {sampled.criterion} is "
        f"{result.status} ({result.reason}), expected {sorted(sampled.expected)}"
    )
