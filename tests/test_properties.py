"""Property tests on the pure evaluator (issue 19, point 5), with hypothesis.

The base records are the clinical cases under tests/cases (each a chart a clinician can read), so
every property is checked against the situations the criteria were written for:

1. an unrelated resource (body height, heart rate, a procedure, a vaccination) never changes a
   status or the verdict;
2. the order in which a server sends resources never changes the report (CRITERIA.md defines
   "latest" with ties, so reasons and evidence must not depend on order either);
3. a lab value written in another unit that CRITERIA.md converts gives the same status;
4. a data category that failed to load only turns the criteria that read it into `unknown` or
   `needs-review`: never `not-met`, never `met`.

Runs are derandomized (the same examples on every machine) and small, so the file stays fast.
"""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from clinical_cases import PATIENT_ID, ClinicalCase, all_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import CATEGORIES, OBSERVATION_PARTS, PatientRecord
from fhir_trial.report import EligibilityReport

CASES = all_cases()
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHANGED_TO_WHEN_DATA_FAILS = {"unknown", "needs-review"}

cases = st.sampled_from(CASES)


def _record(case: ClinicalCase, resources: list[dict[str, Any]] | None = None) -> PatientRecord:
    """The case's record, built from ``resources`` (in that order) instead of the case's own."""
    if resources is None:
        return case.record()
    twin = copy.copy(case)
    twin.resources = resources
    return twin.record()


def _report(case: ClinicalCase, record: PatientRecord) -> EligibilityReport:
    return evaluate(record, case.settings_object())


def _decisions(report: EligibilityReport) -> dict[str, Any]:
    """What a coordinator reads: each status with its reason, evidence and what is missing."""
    return {
        "verdict": report.verdict,
        **{r.id: (r.status, r.reason, r.evidence, r.missing) for r in report.criteria},
    }


# --- 1. unrelated resources -------------------------------------------------------------------

_SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}


def _vital(
    code: str, display: str, value: float, unit: str, ucum: str, when: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": _SUBJECT,
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": ucum,
        },
    }


@st.composite
def unrelated_resources(draw: st.DrawFn, as_of: dt.date) -> dict[str, Any]:
    """A resource no criterion reads, dated within every window (or at any time)."""
    when = (as_of - dt.timedelta(days=draw(st.integers(0, 400)))).isoformat()
    kind = draw(st.sampled_from(["height", "heart-rate", "temperature", "procedure", "vaccine"]))
    number = draw(st.integers(0, 10_000))
    rid = f"unrelated-{kind}-{number}"
    if kind == "height":
        value = draw(st.integers(140, 200))
        resource = _vital("8302-2", "Body height", value, "cm", "cm", when)
    elif kind == "heart-rate":
        value = draw(st.integers(45, 130))
        resource = _vital("8867-4", "Heart rate", value, "beats/minute", "/min", when)
    elif kind == "temperature":
        value = float(Decimal(draw(st.integers(355, 395))) / 10)
        resource = _vital("8310-5", "Body temperature", value, "C", "Cel", when)
    elif kind == "procedure":
        resource = {
            "resourceType": "Procedure",
            "status": "completed",
            # SNOMED CT 80146002 Appendectomy.
            "code": {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "80146002",
                        "display": "Appendectomy",
                    }
                ]
            },
            "subject": _SUBJECT,
            "performedDateTime": when,
        }
    else:
        resource = {
            "resourceType": "Immunization",
            "status": "completed",
            # CVX 140: influenza, seasonal, injectable, preservative free.
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
            "patient": _SUBJECT,
            "occurrenceDateTime": when,
        }
    resource["id"] = rid
    return resource


@SETTINGS
@given(data=st.data(), case=cases)
def test_an_unrelated_resource_never_changes_a_status(
    data: st.DataObject, case: ClinicalCase
) -> None:
    extra = data.draw(st.lists(unrelated_resources(case.as_of), min_size=1, max_size=3))
    position = data.draw(st.integers(0, len(case.resources)))
    resources = [*case.resources[:position], *extra, *case.resources[position:]]
    before = _report(case, _record(case))
    after = _report(case, _record(case, resources))
    assert after.verdict == before.verdict
    assert after.statuses() == before.statuses()


# --- 2. order of resources --------------------------------------------------------------------


def _order_free(report: EligibilityReport) -> dict[str, Any]:
    """The decisions with evidence as a set: what must not depend on the order of resources."""
    return {
        "verdict": report.verdict,
        **{r.id: (r.status, sorted(r.evidence), r.missing) for r in report.criteria},
    }


@SETTINGS
@given(data=st.data(), case=cases)
def test_the_order_of_resources_never_changes_a_decision(
    data: st.DataObject, case: ClinicalCase
) -> None:
    shuffled = data.draw(st.permutations(case.resources))
    before = _report(case, _record(case))
    after = _report(case, _record(case, list(shuffled)))
    assert _order_free(after) == _order_free(before)


def _case(name: str) -> ClinicalCase:
    return next(c for c in CASES if c.name == name)


@pytest.mark.xfail(
    strict=True,
    reason="finding: reasons and evidence list conditions (and medication records, percent "
    "neutrophil results, same-day lab results) in the order the server sent them, so the same "
    "chart read from two servers gives two report texts; statuses and verdicts do not change",
)
@pytest.mark.parametrize(
    "name",
    [
        "exc-major-comorbidity/lists-active-conditions-other-than-lupus",
        "inc-neutrophils/many-percent-results-are-counted-not-all-listed",
        "inc-hemoglobin/component-and-separate-result-same-time-disagree-needs-review",
    ],
)
def test_the_order_of_resources_never_changes_the_report_text(name: str) -> None:
    case = _case(name)
    before = _report(case, _record(case))
    after = _report(case, _record(case, list(reversed(case.resources))))
    assert _decisions(after) == _decisions(before)


# --- 3. units ---------------------------------------------------------------------------------

_AS_OF = dt.date.fromisoformat("2026-11-26")
_PATIENT = {
    "resourceType": "Patient",
    "id": PATIENT_ID,
    "gender": "female",
    "birthDate": "1990-06-15",
}


def _lab_status(criterion: str, loinc: str, value: float, unit: str, days_ago: int) -> str:
    """The criterion's status for a record holding one lab result, all categories obtained."""
    record = PatientRecord()
    record.add(copy.deepcopy(_PATIENT))
    record.add(
        {
            "resourceType": "Observation",
            "id": "lab",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "subject": _SUBJECT,
            "effectiveDateTime": (_AS_OF - dt.timedelta(days=days_ago)).isoformat(),
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }
    )
    record.mark_obtained(*CATEGORIES)
    return evaluate(record, Settings(as_of=_AS_OF)).criterion(criterion).status


def _away_from(threshold: int, low: int, high: int, margin: int) -> st.SearchStrategy[int]:
    """Integers in [low, high] at least ``margin`` from ``threshold`` (rounding stays on its side)."""
    return st.integers(low, high).filter(lambda v: abs(v - threshold) >= margin)


def _decimal(tenths_or_hundredths: int, places: int) -> float:
    return float(Decimal(tenths_or_hundredths).scaleb(-places))


@SETTINGS
@given(grams_per_litre=_away_from(60, 250, 2000, 10), days_ago=st.integers(0, 29))
def test_hemoglobin_in_any_unit_gives_the_same_status(grams_per_litre: int, days_ago: int) -> None:
    # grams_per_litre is in tenths of g/L: 25.0-200.0 g/L (the possible range starts at 20), at least 1 g/L from the 60 g/L line.
    g_l = _decimal(grams_per_litre, 1)
    expected = "met" if g_l >= 60 else "not-met"
    written = {
        "g/L": g_l,
        "g/dL": _decimal(grams_per_litre, 2),
        "mg/dL": float(Decimal(grams_per_litre) * 10),
        # CRITERIA.md: mmol/L x 16.11; two decimals, as laboratories report it.
        "mmol/L": round(g_l / 16.11, 2),
    }
    statuses = {
        unit: _lab_status("inc-hemoglobin", "718-7", v, unit, days_ago)
        for unit, v in written.items()
    }
    assert statuses == dict.fromkeys(written, expected), written


@SETTINGS
@given(hundredths=_away_from(100, 1, 3000, 5), days_ago=st.integers(0, 29))
def test_neutrophils_in_any_unit_give_the_same_status(hundredths: int, days_ago: int) -> None:
    count = _decimal(hundredths, 2)  # 10*9/L, at least 0.05 from the 1.0 line
    expected = "met" if count >= 1.0 else "not-met"
    written = {
        "10*9/L": count,
        "10*3/uL": count,
        "10*3/mm3": count,
        "/uL": float(hundredths * 10),
        "/mm3": float(hundredths * 10),
    }
    statuses = {
        unit: _lab_status("inc-neutrophils", "751-8", v, unit, days_ago)
        for unit, v in written.items()
    }
    assert statuses == dict.fromkeys(written, expected), written


@SETTINGS
@given(percent=_away_from(50, 10, 80, 1), days_ago=st.integers(0, 179))
def test_lvef_as_a_fraction_or_a_percentage_gives_the_same_status(
    percent: int, days_ago: int
) -> None:
    expected = "met" if percent >= 50 else "not-met"
    as_percent = _lab_status("inc-lvef", "10230-1", float(percent), "%", days_ago)
    as_fraction = _lab_status("inc-lvef", "10230-1", _decimal(percent, 2), "1", days_ago)
    assert (as_percent, as_fraction) == (expected, expected)


# --- 4. failed categories ---------------------------------------------------------------------

FAILABLE = (*CATEGORIES, *OBSERVATION_PARTS)


@SETTINGS
@given(case=cases, category=st.sampled_from(FAILABLE))
def test_a_failed_category_never_decides_a_criterion(case: ClinicalCase, category: str) -> None:
    before = _report(case, _record(case))
    record = _record(case)
    record.mark_failed(category, "the server answered 500")
    after = _report(case, record)
    changed = {
        cid: (was, now)
        for cid, was in before.statuses().items()
        if (now := after.statuses()[cid]) != was
    }
    wrong = {cid: ch for cid, ch in changed.items() if ch[1] not in CHANGED_TO_WHEN_DATA_FAILS}
    assert not wrong, f"{case.name} with {category} failed: {wrong}"
    if after.verdict in ("eligible", "ineligible"):
        assert after.verdict == before.verdict, f"{case.name}: {before.verdict} -> {after.verdict}"


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("exc-heart-failure/undated-class-ii-with-dated-class-iii-needs-review", "Condition"),
        ("exc-heart-failure/undated-class-iii-with-dated-class-ii-needs-review", "Observation"),
    ],
)
def test_a_failed_category_never_turns_review_into_an_exclusion(name: str, category: str) -> None:
    """The NYHA finding left when the category holding a conflicting one failed never excludes."""
    case = _case(name)
    record = _record(case)
    record.mark_failed(category, "the server answered 500")
    assert _report(case, record).criterion("exc-heart-failure").status != "met"
