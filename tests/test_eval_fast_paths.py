"""The evaluator's fast paths give what the general rules give (issue 17, "Speed").

Evaluation runs 29 criteria for every patient of a population, so some helpers remember their
answers (per record, per drug, across patients) or read the usual shape flat. Each is checked
here against the rule it stands for, on ordinary and odd inputs (Mappings that are not dicts,
NaN, null, strings where objects belong, missing elements, unusual casing, Chinese and European
texts), with hypothesis where the inputs are open-ended. The whole evaluation is also compared
with and without the fast paths on every clinical case (test_reports_are_the_same_without_the_fast_paths).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import pickle
from typing import Any

import pytest
from clinical_cases import all_cases
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_trial import medications
from fhir_trial.compiled import running_compiled
from fhir_trial.config import Settings
from fhir_trial.fhirdates import DateSpan
from fhir_trial.record import PatientRecord
from fhir_trial.report import EligibilityReport, frozen_instance, instance_fields
from fhir_trial.terminology import ValueSet, load_terminology

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
TERMINOLOGY = load_terminology(Settings().resources_dir)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"


# ----------------------------------------------------------------------------- frozen_instance
def _sample_fields(cls: type) -> dict[str, Any]:
    span = DateSpan(dt.date(2026, 1, 1), dt.date(2026, 1, 31))
    values: dict[str, Any] = {
        "reference": "MedicationRequest/a",
        "resource_type": "MedicationRequest",
        "drug": "prednisone",
        "codings": ({"system": RXNORM, "code": "8640"},),
        "routes": (),
        "keys": frozenset({(RXNORM, "8640")}),
        "names": ("prednisone",),
        "has_name": True,
        "_named": {},
        "_answers": {},
        "local_use": "",
        "start": span,
        "end": span,
        "basis": "dosage bounds",
        "open_ended": True,
        "why": "it has no readable date",
    }
    return {f.name: values[f.name] for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", [medications.DrugRecord, medications.Exposure, medications.Undated])
def test_frozen_instance_is_what_the_constructor_builds(cls: type) -> None:
    fields = _sample_fields(cls)
    fast = frozen_instance(cls, dict(fields))
    slow = cls(**fields)
    assert type(fast) is cls
    assert instance_fields(fast) == instance_fields(slow) == fields
    assert fast == slow
    if hasattr(cls, "__mypyc_attrs__"):
        return  # compiled (setup.py): frozen_instance calls the compiled __init__ itself
    # What makes the shortcut valid: __init__ only stores the fields.
    assert not hasattr(cls, "__post_init__") and not hasattr(cls, "__slots__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.reference = "changed"  # type: ignore[misc]


def test_evaluate_builds_what_the_constructors_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate() builds its Context, the report entries and the report with frozen_instance."""
    from fhir_trial import evaluate as evaluation
    from fhir_trial.criteria.context import Context
    from fhir_trial.report import CriterionResult, EligibilityReport

    built: list[tuple[type, dict[str, Any]]] = []

    def spy(cls: type, fields: dict[str, Any]) -> Any:
        built.append((cls, dict(fields)))
        return frozen_instance(cls, fields)

    monkeypatch.setattr(evaluation, "frozen_instance", spy)
    report = evaluation.evaluate(_patient_with([PRED], "p1"), Settings(as_of=dt.date(2026, 11, 26)))
    assert {cls for cls, _ in built} == {Context, CriterionResult, EligibilityReport}
    for cls, fields in built:
        slow = cls(**fields)
        assert instance_fields(frozen_instance(cls, dict(fields))) == instance_fields(slow)
        if not hasattr(cls, "__mypyc_attrs__"):  # compiled: frozen_instance calls __init__
            assert not hasattr(cls, "__post_init__") and not hasattr(cls, "__slots__")
    assert report == EligibilityReport(**built[-1][1])


# ----------------------------------------------------------------------------- medications
def _request(rid: str, concept: Any = None, route: Any = None, **more: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "authoredOn": "2026-01-01",
        **more,
    }
    if concept is not None:
        resource["medicationCodeableConcept"] = concept
    if route is not None:
        resource["dosageInstruction"] = [{"route": route}]
    return resource


PRED = {"coding": [{"system": RXNORM, "code": "8640", "display": "prednisone"}]}
ORAL = {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]}
# Odd drug concepts: bare codes, a local code named in Chinese or German, a number as code,
# NaN and null displays, text only, a string where a concept belongs, a Mapping-like list.
ODD_CONCEPTS: list[Any] = [
    PRED,
    {"coding": [{"system": RXNORM, "code": "8640"}]},
    {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.88", "code": " 8640 "}]},
    {
        "coding": [
            {"system": "http://hospital.example.cn/drug", "code": "X1", "display": "泼尼松片"}
        ]
    },
    {"coding": [{"system": "http://hospital.example.cn/drug", "code": "X1"}]},
    {
        "coding": [
            {
                "system": "http://ehr.example.de/pzn",
                "code": "P1",
                "display": "PREDNISOLON 5 MG TABLETTEN",
            }
        ]
    },
    {"coding": [{"system": RXNORM, "code": 6851, "display": "Methotrexate"}]},
    {"coding": [{"system": RXNORM, "code": "6851", "display": float("nan")}]},
    {"coding": [{"system": RXNORM, "code": "6851", "display": None}]},
    {"text": "Cellcept 500 mg"},
    {"coding": "8640"},
    {"coding": [{"system": RXNORM, "code": "121191", "display": "rituximab"}], "text": "美罗华"},
    {
        "coding": [
            {"system": RXNORM, "code": "42316", "display": "Tacrolimus 0.1 % Topical Ointment"}
        ]
    },
]
ODD_ROUTES: list[Any] = [None, ORAL, {"text": "IV"}, "oral", {"coding": [{"code": "C38288"}]}]


def _patient_with(concepts: list[Any], prefix: str) -> PatientRecord:
    record = PatientRecord()
    record.add({"resourceType": "Patient", "id": prefix})
    number = 0
    for concept in concepts:
        for route in ODD_ROUTES:
            for _ in range(2):  # the same drug written the same way twice: shared
                number += 1
                record.add(_request(f"{prefix}-{number}", concept, route))
    return record


def _general_drug_records(record: PatientRecord, monkeypatch: pytest.MonkeyPatch) -> dict[int, Any]:
    with monkeypatch.context() as patch:
        patch.setattr(medications, "_same_drug_key", lambda resource, routes: None)
        return medications.drug_records(record)


def test_drugs_remembered_across_patients_are_what_each_record_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    medications._DRUG_OF_KEY.clear()
    first = _patient_with(ODD_CONCEPTS, "p1")
    second = _patient_with(ODD_CONCEPTS[::-1], "p2")
    seen = medications.drug_records(first)
    assert medications._DRUG_OF_KEY  # the second patient reads the first one's drugs
    again = medications.drug_records(second)
    for record, fast in ((first, seen), (second, again)):
        general = _general_drug_records(record, monkeypatch)
        assert list(fast) == list(general)
        for rid, drug in fast.items():
            assert drug == general[rid], drug.reference
            assert type(drug) is type(general[rid])
    # Cached answers stay with their patient (ValueSet ids are unique only within a screening).
    named_dicts = {id(d._named) for d in seen.values()}
    assert not named_dicts & {id(d._named) for d in again.values()}


def _history_rule(record: PatientRecord, as_of: dt.date, supply: int) -> Any:
    """build_history as first written: each record's own DrugRecord (nothing shared between
    records), placed by the general rule, its reference and resourceType its own."""
    drugs = _general_drug_records_plain(record)
    exposures, undated, ignored, retrieved = [], [], 0, 0
    for rtype in medications.MEDICATION_TYPES:
        for resource in record.resources(rtype):
            retrieved += 1
            status, intent = resource.get("status"), resource.get("intent")
            if (
                isinstance(status, str) and status in medications.IGNORED_STATUSES_BY_TYPE[rtype]
            ) or (
                rtype == "MedicationRequest"
                and isinstance(intent, str)
                and intent in medications.NOT_ORDERED_INTENTS
            ):
                ignored += 1
                continue
            fields = {
                f.name: getattr(drugs[id(resource)], f.name)
                for f in dataclasses.fields(medications.DrugRecord)
            }
            fields["resource_type"] = str(resource.get("resourceType"))
            original = medications._one_closed_bounds
            try:
                medications._one_closed_bounds = lambda request: None  # type: ignore[assignment]
                placed = medications._place(resource, as_of, supply)
            finally:
                medications._one_closed_bounds = original
            if isinstance(placed, str):
                undated.append(medications.Undated(**fields, why=placed))
            else:
                exposures.append(
                    medications.Exposure(
                        **fields,
                        start=placed.start,
                        end=placed.end,
                        basis=placed.basis,
                        open_ended=placed.open_ended,
                    )
                )
    return medications.MedicationHistory(tuple(exposures), tuple(undated), ignored, retrieved)


def _general_drug_records_plain(record: PatientRecord) -> dict[int, Any]:
    original = medications._same_drug_key
    try:
        medications._same_drug_key = lambda resource, routes: None  # type: ignore[assignment]
        return medications.drug_records(record)
    finally:
        medications._same_drug_key = original


_MEDICATION_SHAPES = [
    ("MedicationRequest", {"status": "active"}),
    ("MedicationRequest", {"status": "stopped", "intent": "proposal"}),
    ("MedicationRequest", {"status": "cancelled"}),
    ("MedicationStatement", {"status": "completed", "effectiveDateTime": "2026-03-01"}),
    ("MedicationAdministration", {"status": "completed", "effectiveDateTime": "2026-11"}),
    ("MedicationDispense", {"status": "completed", "whenHandedOver": "2026-10-01"}),
    ("MedicationDispense", {"status": "in-progress", "whenHandedOver": "2026-10-01"}),
]
_BOUNDS_PERIODS = [
    {"start": "2026-01-05", "end": "2026-03-01T10:00:00Z"},
    {"start": "2026-03", "end": "2026-02-01"},
    {"start": "2025-12", "end": "2026"},
    {"start": "2026-02-30", "end": "2026-03-01"},
    {"start": "2026-01-05"},
    None,
]


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_MEDICATION_SHAPES),
            st.sampled_from(ODD_CONCEPTS[:6]),
            st.sampled_from(ODD_ROUTES[:3]),
            st.sampled_from(_BOUNDS_PERIODS),
        ),
        max_size=10,
    ),
    st.booleans(),
)
def test_history_is_what_each_record_says(items: list[Any], remembered: bool) -> None:
    if not remembered:
        medications._DRUG_OF_KEY.clear()
    record = PatientRecord()
    for number, ((rtype, more), concept, route, bounds) in enumerate(items):
        resource = {**_request(f"m{number}", concept, route), "resourceType": rtype, **more}
        if bounds is not None and rtype == "MedicationRequest":
            dosage = {"timing": {"repeat": {"boundsPeriod": bounds}}}
            resource["dosageInstruction"] = [{**dosage, "route": route} if route else dosage]
        record.add(resource)
    as_of = dt.date(2026, 11, 26)
    fast = medications.build_history(record, as_of, 90)
    rule = _history_rule(record, as_of, 90)
    assert fast == rule
    for one, other in zip(
        fast.exposures + fast.undated, rule.exposures + rule.undated, strict=True
    ):
        assert type(one) is type(other) and one.names == other.names, one.reference


def test_drug_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(medications, "_MAX_CACHED_DRUGS", 3)
    medications._DRUG_OF_KEY.clear()
    medications.drug_records(_patient_with(ODD_CONCEPTS, "p1"))
    assert 0 < len(medications._DRUG_OF_KEY) <= 3


def _valueset(vs_id: str, codes: set[tuple[str, str]], names: dict[str, str]) -> ValueSet:
    return ValueSet(vs_id, f"urn:test:{vs_id}", vs_id, frozenset(codes), {}, names)


def test_drug_answers_are_not_carried_to_a_patient_screened_with_other_valuesets() -> None:
    medications._DRUG_OF_KEY.clear()
    one = _valueset("drugs", set(), {"Prednisone": "prednisone"})  # matches by name
    other = _valueset("drugs", set(), {})  # same id, another screening's terminology
    (first,) = medications.drug_records(_single(PRED, "p1")).values()
    assert first.matches(one) and first.named_as(one) == ("prednisone", "prednisone")
    (second,) = medications.drug_records(_single(PRED, "p2")).values()
    assert not second.matches(other) and second.named_as(other) is None


def test_matches_tells_apart_valuesets_sharing_an_id() -> None:
    (drug,) = medications.drug_records(_single(PRED, "p1")).values()
    listed = _valueset("test", {(RXNORM, "8640")}, {})
    other = _valueset("test", {(RXNORM, "1")}, {})
    assert drug.matches(listed) and not drug.matches(other) and drug.matches(listed)


def _single(concept: Any, prefix: str) -> PatientRecord:
    record = PatientRecord()
    record.add(_request(f"{prefix}-1", concept, ORAL))
    return record


DRUG_VALUESETS = [
    TERMINOLOGY.get(vs_id)
    for vs_id in (*medications.KNOWN_DRUG_VALUESETS, "route-oral", "route-local")
]


def test_matches_remembers_what_the_rule_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    medications._DRUG_OF_KEY.clear()
    record = _patient_with(ODD_CONCEPTS, "p1")
    drugs = list(medications.drug_records(record).values())
    answers = [_answers(drug) for drug in drugs]
    assert any(any(row) for row in answers) and not all(all(row) for row in answers)
    # A second patient with the same drugs reads the answers kept since the first one.
    again = list(medications.drug_records(_patient_with(ODD_CONCEPTS, "p2")).values())
    # Asked again (answered from the cache, shared between records of the same drug), and
    # against the rules themselves on records built without any sharing.
    general = list(_general_drug_records(record, monkeypatch).values())
    for drug, other, plain, row in zip(drugs, again, general, answers, strict=True):
        assert _answers(drug) == row == _answers(other)
        rule = [
            *(
                vs.contains_any(plain.keys) or plain.named_as(vs) is not None
                for vs in DRUG_VALUESETS
            ),
            *(_route_in_rule(plain, vs) for vs in DRUG_VALUESETS),
            *(_local_use_in_rule(plain, vs) for vs in DRUG_VALUESETS),
        ]
        assert rule == row, drug.reference


def _answers(drug: Any) -> list[Any]:
    return [
        *(drug.matches(vs) for vs in DRUG_VALUESETS),
        *(drug.route_in(vs) for vs in DRUG_VALUESETS),
        *(drug.local_use_in(vs) for vs in DRUG_VALUESETS),
    ]


def _route_in_rule(drug: Any, valueset: ValueSet) -> bool:
    return any(valueset.matches(route) for route in drug.routes)


def _local_use_in_rule(drug: Any, valueset: ValueSet) -> str:
    return str(drug.local_use or drug._local_route_label(valueset))


_DATE_TEXTS = [
    "2026-01-01",
    "2025-12",
    "2024",
    "2026-02-30",
    "2026-01-01T10:00:00Z",
    " 2026-01-05",
    "",
    "x",
]
_PERIOD_VALUES = st.one_of(
    st.sampled_from(_DATE_TEXTS), st.none(), st.integers(), st.floats(), st.text(max_size=12)
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["start", "end", "other"]), _PERIOD_VALUES, max_size=3))
def test_one_period_is_read_as_the_general_rule_reads_it(period: dict[str, Any]) -> None:
    assert medications._bounds_of_one(period) == medications._bounds_of([period])


_BOUNDS = st.one_of(
    st.dictionaries(st.sampled_from(["start", "end", "other"]), _PERIOD_VALUES, max_size=3),
    _PERIOD_VALUES,
)
_DOSAGES = st.one_of(
    st.builds(
        lambda bounds, shape: shape(bounds),
        _BOUNDS,
        st.sampled_from(
            [
                lambda b: {"timing": {"repeat": {"boundsPeriod": b}}},
                lambda b: {"timing": {"repeat": b}},
                lambda b: {"timing": b},
                lambda b: {"timing": {"repeat": {"boundsPeriod": b, "boundsDuration": {}}}},
                lambda b: _mapping({"timing": {"repeat": {"boundsPeriod": b}}}, True),
            ]
        ),
    ),
    st.just("oral"),
    st.none(),
)


@SETTINGS
@given(
    st.one_of(st.lists(_DOSAGES, max_size=3), _DOSAGES),
    st.sampled_from(["active", "completed", "stopped"]),
    st.one_of(st.none(), st.builds(dict, validityPeriod=_BOUNDS)),
)
def test_one_closed_bounds_period_is_placed_as_the_general_rule_places_it(
    dosages: Any, status: str, dispense: Any
) -> None:
    request: dict[str, Any] = {**_request("r", PRED), "status": status}
    request["dosageInstruction"] = dosages
    if dispense is not None:
        request["dispenseRequest"] = dispense
    as_of = dt.date(2026, 11, 26)
    fast = medications._place(request, as_of, 90)
    original = medications._one_closed_bounds
    try:
        medications._one_closed_bounds = lambda request: None  # type: ignore[assignment]
        assert medications._place(request, as_of, 90) == fast
    finally:
        medications._one_closed_bounds = original


def test_one_closed_bounds_period_reads_the_usual_request() -> None:
    bounds = {"start": "2026-01-05", "end": "2026-03-01T10:00:00Z"}
    request = {**_request("r", PRED), "dosageInstruction": [{"timing": {"repeat": {}}}]}
    request["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"] = bounds
    placed = medications._one_closed_bounds(request)
    assert placed == medications._place(request, dt.date(2026, 11, 26), 90)
    assert placed is not None and placed.basis == "dosage bounds 2026-01-05 to 2026-03-01"
    for period in ({"start": "2026-03-01", "end": "2026-01-05"}, {"start": "2026-01"}, {}):
        request["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"] = period
        assert medications._one_closed_bounds(request) is None
    # Two dosages (a taper): the general rule spans both, earliest start to latest end.
    taper = [
        {"timing": {"repeat": {"boundsPeriod": {"start": "2026-01-05", "end": "2026-02-01"}}}},
        {"timing": {"repeat": {"boundsPeriod": {"start": "2026-02-02", "end": "2026-04-01"}}}},
    ]
    assert medications._one_closed_bounds({**request, "dosageInstruction": taper}) is None
    test_one_closed_bounds_period_is_placed_as_the_general_rule_places_it.hypothesis.inner_test(  # type: ignore[attr-defined]
        taper, "completed", None
    )


# ----------------------------------------------------------------------------- whole reports
def use_general_rules(patch: pytest.MonkeyPatch) -> None:
    """Every fast path of the evaluator replaced by the rule it stands for."""
    patch.setattr(
        medications,
        "_group_of_key",
        lambda key, record, resource, routes: (
            vars(drug := medications._drug_record(record, resource, routes)),
            medications._exact_keys(drug),
        ),
    )
    patch.setattr(medications, "_bounds_of_one", lambda period: medications._bounds_of([period]))
    patch.setattr(medications, "_one_closed_bounds", lambda request: None)
    patch.setattr(medications, "frozen_instance", lambda cls, fields: cls(**fields))
    patch.setattr(
        medications.DrugRecord,
        "matches",
        lambda self, vs: vs.contains_any(self.keys) or self.named_as(vs) is not None,
    )
    patch.setattr(medications.DrugRecord, "route_in", _route_in_rule)
    patch.setattr(medications.DrugRecord, "local_use_in", _local_use_in_rule)
    from fhir_trial import evaluate
    from fhir_trial.criteria import comorbidity, labs, reproductive, therapy

    patch.setattr(evaluate, "frozen_instance", lambda cls, fields: cls(**fields))
    patch.setattr(
        comorbidity, "_nyha_candidates", lambda results, coded, labels=None: list(results)
    )
    patch.setattr(comorbidity, "_names_nyha", _names_nyha_rule)
    patch.setattr(labs, "split_by_window", _split_rule)
    patch.setattr(labs, "split_keeping_latest_before", _split_latest_before_rule)
    patch.setattr(therapy, "_all_exact", lambda *groups: False)
    patch.setattr(
        therapy,
        "roles_of",
        lambda record, ctx: therapy._roles(record, therapy.prior_therapy_valuesets(ctx)),
    )
    patch.setattr(reproductive, "split_by_window", _split_rule)
    patch.setattr(PatientRecord, "with_code", _with_code_rule)
    from fhir_trial.criteria import context

    patch.setattr(context, "gm_certainty", lambda c: context._gm_certainty_of(c, c.get("code")))
    patch.setattr(context, "_code_of", context._first_coded)


def _reports(cases: list[Any]) -> list[str]:
    import json

    from fhir_trial.evaluate import evaluate

    return [
        json.dumps(evaluate(case.record(), case.settings_object()).to_json(), ensure_ascii=False)
        for case in cases
    ]


def test_reports_are_the_same_without_the_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = all_cases()
    medications._DRUG_OF_KEY.clear()
    fast = _reports(cases)
    with monkeypatch.context() as patch:
        use_general_rules(patch)
        general = _reports(cases)
    for case, one, other in zip(cases, fast, general, strict=True):
        assert one == other, case.name


# ----------------------------------------------------------------------------- record lookups
def _with_code_rule(record: PatientRecord, rtype: str, valueset: ValueSet) -> list[Any]:
    """with_code as first written: every indexed resource under a code of the ValueSet, each
    once, sorted by its position in the record."""
    index = record._by_code.get(rtype) or {}
    found = {id(r): r for key in valueset.codes for r in index.get(key, ())}
    return sorted(found.values(), key=lambda r: record._rank(rtype)[id(r)])


LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
_CODINGS = [
    {"system": LOINC, "code": "718-7"},
    {"system": LOINC, "code": "751-8", "display": "Neutrophils"},
    {"system": "urn:oid:2.16.840.1.113883.6.1", "code": "718-7"},
    {"system": LOINC, "code": 7187},
    {"system": ICD10, "code": "M32.1"},
    {"system": ICD10, "code": "M321"},
    {"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": "M32.14†"},
    {"system": SNOMED, "code": "55464009"},
    {"system": SNOMED, "code": "55464009", "display": "SLE"},
    "718-7",
    None,
]


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Observation", "Condition"]),
            st.lists(st.sampled_from(_CODINGS), max_size=3),
            st.lists(st.lists(st.sampled_from(_CODINGS), max_size=2), max_size=2),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_with_code_answers_in_record_order(items: list[Any], at_once: bool) -> None:
    # Codings repeat (a resource coded twice alike is in one index list once: with_code returns
    # a single list as it is); built one by one and by add_all (each path fills the lists).
    record = PatientRecord()
    resources = []
    for number, (rtype, codings, components) in enumerate(items):
        resource: dict[str, Any] = {"resourceType": rtype, "id": f"r{number}"}
        resource["code"] = {"coding": codings}
        if rtype == "Observation" and components:
            resource["component"] = [{"code": {"coding": c}} for c in components]
        resources.append(resource)
    if at_once:
        record.add_all(resources)
    else:
        for resource in resources:
            record.add(resource)
    for vs_id in ("hemoglobin", "neutrophils-absolute", "sle", "lupus-unspecified-or-cutaneous"):
        valueset = TERMINOLOGY.get(vs_id)
        for rtype in ("Observation", "Condition"):
            assert record.with_code(rtype, valueset) == _with_code_rule(record, rtype, valueset)


# ----------------------------------------------------------------------------- Observations
_TIMES = st.one_of(
    st.sampled_from(
        [
            "2026-11-01",
            "2026-11-01T10:00:00Z",
            "2026-10",
            "2026",
            "2025-01-02T00:00:00+01:00",
            " 2026-11-01",
            "2026-11-01 ",
            "2026-11-01x",
            "",
            "2027-01-01",
        ]
    ),
    st.none(),
    st.integers(),
    st.just(float("nan")),
    st.just({"start": "2026-11-01"}),
)
_STATUSES = st.one_of(
    st.sampled_from(["final", "amended", "corrected", "preliminary", "FINAL", "cancelled", ""]),
    st.none(),
    st.integers(),
    st.just(["final"]),
)


class _Text(str):
    """A str subclass (not what a JSON parser gives)."""


@st.composite
def _observations(draw: Any) -> dict[str, Any]:
    observation: dict[str, Any] = {"resourceType": "Observation"}
    status = draw(_STATUSES)
    if draw(st.booleans()) and isinstance(status, str):
        status = _Text(status)
    if status is not None or draw(st.booleans()):
        observation["status"] = status
    for name in ("effectiveDateTime", "effectiveInstant", "issued"):
        if draw(st.booleans()):
            observation[name] = draw(_TIMES)
    if draw(st.booleans()):
        observation["effectivePeriod"] = draw(st.one_of(_TIMES, st.builds(dict, start=_TIMES)))
    return observation


def _split_rule(observations: list[Any], start: dt.date | None, end: dt.date) -> Any:
    """split_by_window as first written: observation_status, observation_time, place_in_window."""
    from fhir_trial.observations import (
        Dated,
        WindowSplit,
        observation_status,
        observation_time,
        place_in_window,
    )

    split = WindowSplit([], [], [], [], [], [])
    for observation in observations:
        status = observation_status(observation)
        if status == "ignored":
            split.ignored.append(observation)
            continue
        span = observation_time(observation)
        placement = place_in_window(span, start or dt.date.min, end)
        getattr(split, "undated" if placement == "undated" else placement).append(
            Dated(observation, span, status)
        )
    return split


def _split_latest_before_rule(observations: list[Any], start: dt.date | None, end: dt.date) -> Any:
    """split_keeping_latest_before as the rule: split_by_window's rule, then of the results
    before the window the latest by its span's start (max() keeps the first of equals)."""
    split = _split_rule(observations, start, end)
    if split.before:
        split.before[:] = [max(split.before, key=lambda item: item.span.start)]
    return split


@SETTINGS
@given(st.lists(_observations(), max_size=8), st.sampled_from([None, dt.date(2026, 10, 15)]))
def test_split_by_window_agrees_with_the_status_and_time_rules(
    observations: list[Any], start: dt.date | None
) -> None:
    from fhir_trial.observations import split_by_window, split_keeping_latest_before

    end = dt.date(2026, 11, 26)
    for fast, rule in (
        (split_by_window(observations, start, end), _split_rule(observations, start, end)),
        (
            split_keeping_latest_before(observations, start, end),
            _split_latest_before_rule(observations, start, end),
        ),
    ):
        assert fast == rule
        for name in ("inside", "ambiguous", "before", "after", "undated"):
            assert all(
                type(item) is type(other) and item[0] is other[0]
                for item, other in zip(getattr(fast, name), getattr(rule, name), strict=True)
            )


def _odd_observations() -> list[dict[str, Any]]:
    """Each shape the written-out reading of split_by_window must hand to the general rules."""
    base = {"resourceType": "Observation", "status": "final"}
    return [
        {**base, "effectiveDateTime": "2026-11-01T10:00:00Z"},
        {**base, "effectiveDateTime": "", "issued": "2026-11-01"},
        {**base, "effectiveDateTime": None, "effectiveInstant": "2026-11-02T00:00:00Z"},
        {**base, "effectiveDateTime": 20261101, "issued": "2026-11-03"},
        {**base, "effectivePeriod": {"start": "2026-10"}},
        {**base, "effectivePeriod": "2026-11-01", "issued": "2026-11-04"},
        {**base, "effectiveDateTime": _Text("2026-11-05"), "issued": "2025-01-01"},
        {**base, "effectiveDateTime": " 2026-11-06T10:00:00Z"},
        {**base, "effectiveDateTime": "2026-11-07 10:00"},
        {**base, "effectiveDateTime": "2026-11-08X10:00"},
        {**base, "effectiveDateTime": "2026-11-09T"},
        {**base, "effectiveDateTime": "2026-11-1T10:00"},
        {**base, "effectiveDateTime": "2026-13-01"},
        {**base, "effectiveDateTime": "2027-01-01"},
        {**base, "effectiveDateTime": "2024"},
        {**base, "status": "FINAL", "effectiveDateTime": "2026-11-01"},
        {**base, "status": _Text("preliminary"), "effectiveDateTime": "2026-11-01"},
        {**base, "status": ["final"], "effectiveDateTime": "2026-11-01"},
        {**base, "status": None, "effectiveDateTime": "2026-11-01"},
        {"resourceType": "Observation", "effectiveDateTime": "2026-11-01"},
        {**base, "status": "amended"},
    ]


@pytest.mark.parametrize("start", [None, dt.date(2026, 10, 15)])
def test_split_by_window_reads_odd_results_as_the_rules_do(start: dt.date | None) -> None:
    from fhir_trial.observations import split_by_window, split_keeping_latest_before

    observations = _odd_observations()
    assert split_by_window(observations, start, dt.date(2026, 11, 26)) == _split_rule(
        observations, start, dt.date(2026, 11, 26)
    )
    # Several results before the window, two of them on its latest day: the first of those.
    earlier = [
        {"resourceType": "Observation", "status": "final", "effectiveDateTime": day, "id": n}
        for n, day in enumerate(["2025-03-01", "2025-06-01T08:00:00Z", "2025-05", "2025-06-01"])
    ]
    for mixed in (earlier, [*observations, *earlier], [*earlier[::-1], *observations]):
        assert split_keeping_latest_before(
            mixed, start or dt.date(2026, 10, 15), dt.date(2026, 11, 26)
        ) == _split_latest_before_rule(mixed, start or dt.date(2026, 10, 15), dt.date(2026, 11, 26))


# ----------------------------------------------------------------------------- exc-heart-failure
_NYHA_LABELS = [
    "NYHA class",
    "nyha",
    "NyHa functional classification",
    "New York Heart Association Functional Classification",
    "NEW YORK HEART ASSOCIATION",
    "new  york heart association",
    "Capacité fonctionnelle NYHA",
    "NYHA-Klassifikation",
    "纽约心脏协会心功能分级",
    "NYHAclass",
    "Hemoglobin [Mass/volume] in Blood",
    "",
]
_LABELS = st.one_of(st.sampled_from(_NYHA_LABELS), st.none(), st.integers(), st.text(max_size=8))
_CODINGS_NYHA = st.one_of(
    st.builds(
        dict,
        system=st.sampled_from([LOINC, SNOMED, None]),
        code=st.sampled_from(["88020-3", "718-7", "420913000", "422293003", "LA28404-4"]),
        display=_LABELS,
    ),
    _LABELS,
)


def _mapping(value: Any, as_proxy: bool) -> Any:
    from types import MappingProxyType

    return MappingProxyType(value) if as_proxy and isinstance(value, dict) else value


@st.composite
def _nyha_observations(draw: Any) -> dict[str, Any]:
    code: Any = {}
    if draw(st.booleans()):
        code["text"] = draw(_LABELS)
    if draw(st.booleans()):
        code["coding"] = draw(st.one_of(st.lists(_CODINGS_NYHA, max_size=3), _LABELS))
    code = draw(st.sampled_from([code, _mapping(code, True), "NYHA class III", None]))
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": draw(st.sampled_from(["final", "preliminary", "cancelled", None])),
        "effectiveDateTime": draw(st.sampled_from(["2026-10-01", "2026-11", "2025", None])),
        "code": code,
    }
    value = draw(
        st.sampled_from(
            [
                None,
                {},
                "Class III",
                {"coding": [{"system": SNOMED, "code": "420913000"}]},
                {"coding": [{"system": SNOMED, "code": "422293003"}]},
                {"coding": [{"system": LOINC, "code": "LA28404-4"}]},
                {"text": "class 3"},
            ]
        )
    )
    if value is not None:
        observation["valueCodeableConcept"] = value
    return observation


def _names_nyha_rule(observation: Any) -> bool:
    """_names_nyha as its careful path reads any Observation."""
    from collections.abc import Mapping

    from fhir_trial.criteria.comorbidity import _label_names_nyha
    from fhir_trial.terminology import codings

    code = observation.get("code")
    if not isinstance(code, Mapping):
        return False
    labels = [code.get("text")] + [c.get("display") for c in codings(code)]
    return any(isinstance(label, str) and _label_names_nyha(label) for label in labels)


def _context(record: PatientRecord) -> Any:
    from fhir_trial.criteria.context import Context
    from fhir_trial.record import CATEGORIES

    record.mark_obtained(*CATEGORIES)
    as_of = dt.date(2026, 11, 26)
    return Context(record, Settings(as_of=as_of), TERMINOLOGY, as_of, as_of)


_ASSESSMENT = {"coding": [{"system": LOINC, "code": "88020-3"}]}
_CLASS_III = {"coding": [{"system": SNOMED, "code": "420913000"}]}
_ODD_NYHA = [
    [{"code": _ASSESSMENT}],  # coded assessment, no value, no words: unread
    [{"code": _ASSESSMENT, "valueString": "III"}],
    [{"code": {"text": "nyha functional class"}}],
    [{"code": _mapping({"coding": [{"display": "New York Heart Association"}]}, True)}],
    [{"code": {"coding": [{"code": "x", "display": "NYHA"}], "text": "NYHA"}}],
    [{"code": {"coding": ["NYHA", {"display": "Nyha III"}]}}],
    [{"code": "NYHA class III"}],
    [{"code": {"text": "纽约心脏协会 NYHA"}, "valueCodeableConcept": {"text": "III级"}}],
    [{"code": {"text": "x"}, "valueCodeableConcept": _CLASS_III, "status": "cancelled"}],
    [{"code": {"text": "x"}, "valueCodeableConcept": _CLASS_III}, {"code": _ASSESSMENT}],
]


@pytest.mark.parametrize("observations", _ODD_NYHA)
def test_heart_failure_reads_odd_results_as_the_full_loop_does(observations: list[Any]) -> None:
    defaults = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2026-10-01"}
    test_heart_failure_reads_only_the_results_that_can_matter.hypothesis.inner_test(  # type: ignore[attr-defined]
        [{**defaults, **o} for o in observations]
    )


@SETTINGS
@given(st.lists(_nyha_observations(), max_size=6))
def test_heart_failure_reads_only_the_results_that_can_matter(observations: list[Any]) -> None:
    from fhir_trial.criteria import comorbidity

    record = PatientRecord()
    for number, observation in enumerate(observations):
        record.add({**observation, "id": f"o{number}"})
    for observation in record.observation_results():
        assert comorbidity._names_nyha(observation) == _names_nyha_rule(observation)
    ctx = _context(record)
    fast = comorbidity.heart_failure(ctx)
    original = comorbidity._nyha_candidates
    try:
        comorbidity._nyha_candidates = lambda results, coded, labels=None: list(results)  # type: ignore[assignment]
        assert comorbidity.heart_failure(ctx) == fast
    finally:
        comorbidity._nyha_candidates = original


def _candidates_rule(results: list[Any], coded: set[int]) -> list[Any]:
    """_nyha_candidates as first written: every result asked in turn."""
    from fhir_trial.criteria.comorbidity import _names_nyha

    return [o for o in results if o.get("valueCodeableConcept") or id(o) in coded or _names_nyha(o)]


_PLAIN_NAMES = [
    {"text": "Systolic blood pressure"},
    {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}], "text": "Hb"},
    {"coding": [{"system": LOINC, "code": "x", "display": "Heart rate"}]},
    {"coding": [{"code": "y", "display": "NYHA class"}], "text": "Herzinsuffizienz"},
    {"coding": [{"code": "y", "display": "Leukocytes"}], "text": "new YORK heart association"},
    {"coding": [{"code": "y", "display": "Heart class"}, {"display": "nYha"}]},
    {"coding": [{"code": "y", "display": 5}], "text": None},
    {"coding": [], "text": "纽约心脏协会 NYHA"},
    {"coding": []},
    {},
]
# Shapes the map() sift refuses (each is read by the rule instead).
_UNPLAIN_NAMES: list[Any] = [
    None,
    "NYHA class III",
    {"coding": None},
    {"coding": {"display": "NYHA"}},
    {"coding": ["NYHA"]},
    {"coding": [{"display": {"text": "NYHA"}}]},
    {"text": ["NYHA"]},
]


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_PLAIN_NAMES + _UNPLAIN_NAMES),
            st.sampled_from([None, {}, _CLASS_III, {"text": "III"}]),
            st.booleans(),
        ),
        max_size=8,
    ),
    st.booleans(),
)
def test_nyha_candidates_are_what_asking_each_result_gives(
    results: list[tuple[Any, Any, bool]], coded_first: bool
) -> None:
    from fhir_trial.criteria import comorbidity

    observations = []
    for code, value, has_code in results:
        observation: dict[str, Any] = {"resourceType": "Observation", "status": "final"}
        if has_code:
            observation["code"] = code
        if value is not None:
            observation["valueCodeableConcept"] = value
        observations.append(observation)
    coded = {id(observations[0])} if coded_first and observations else set()
    rule = _candidates_rule(observations, coded)
    assert comorbidity._nyha_candidates(observations, coded) == rule
    # Given the results' labels (as the record gathers them): the same.
    labels = _labels_rule(observations)
    assert comorbidity._nyha_candidates(observations, coded, labels) == rule


def _labels_rule(results: list[Any]) -> set[Any] | None:
    """The labels of all results gathered one result at a time (as _valued_unless_named
    does): each code.text and coding display as written; None for a shape it refuses."""
    labels: set[Any] = set()
    try:
        for result in results:
            if type(result) is not dict or type(code := result.get("code")) is not dict:
                return None
            labels.add(code.get("text"))
            for coding in code.get("coding", ()):
                if type(coding) is not dict:
                    return None
                labels.add(coding.get("display"))
    except TypeError:
        return None
    return labels


# Mostly plain names: one odd shape among a record's results makes it read them one by one.
_NAMES = st.sampled_from(_PLAIN_NAMES * 6 + _UNPLAIN_NAMES + [_mapping({"text": "Weight"}, True)])


@st.composite
def _labelled_resources(draw: Any) -> Any:
    rtype = draw(st.sampled_from(["Observation", "Observation", "Condition"]))
    resource: dict[str, Any] = {"resourceType": rtype, "id": draw(st.sampled_from("abcd"))}
    if draw(st.integers(0, 9)):  # a result without a code: rarely
        resource["code"] = draw(_NAMES)
    if draw(st.booleans()):
        parts = draw(
            st.lists(st.one_of(st.builds(lambda c: {"code": c}, _NAMES), _NAMES), max_size=3)
        )
        resource["component"] = parts
    return _mapping(resource, draw(st.integers(0, 15)) == 0)


@SETTINGS
@given(st.lists(_labelled_resources(), max_size=6), st.integers(0, 6))
def test_the_record_gathers_the_labels_of_its_results(resources: list[Any], split: int) -> None:
    # Added one by one, then the rest at once; repeated ids are left out (so are their labels).
    record = PatientRecord()
    for resource in resources[:split]:
        record.add(resource)
    record.add_all(resources[split:])
    assert record.observation_labels() == _labels_rule(record.observation_results())
    # The heart-failure net given the record's labels reads what asking each result gives.
    from fhir_trial.criteria import comorbidity

    results = record.observation_results()
    labels = record.observation_labels()
    assert comorbidity._nyha_candidates(results, set(), labels) == _candidates_rule(results, set())


def test_nyha_candidates_sift_plain_results_by_their_distinct_names() -> None:
    from fhir_trial.criteria import comorbidity

    # The usual chart: plain results, none named NYHA, one with a coded value.
    plain = [{"code": dict(code)} for code in _PLAIN_NAMES[:3] for _ in range(3)]
    plain.append({"code": {"text": "x"}, "valueCodeableConcept": _CLASS_III})
    assert comorbidity._valued_unless_named(plain) == [plain[-1]]
    for code in _PLAIN_NAMES[3:6]:  # a name in the text or a display, any case
        assert comorbidity._valued_unless_named([*plain, {"code": code}]) is None
    for code in _UNPLAIN_NAMES:
        assert comorbidity._valued_unless_named([*plain, {"code": code}]) is None
    assert comorbidity._valued_unless_named([*plain, _mapping({"code": {}}, True)]) is None
    if running_compiled():
        # Compiled code reads a dict subclass's items as a dict (mypyc's own dict operations),
        # whatever its methods say; no JSON parser makes one. The source build's reading:
        return
    # A dict subclass may answer get() otherwise than the dict it holds: the rule reads it.
    odd = [
        {"code": _Loud({"text": "Weight"})},
        _Loud({"code": {}}),
        {"code": {"coding": [_Loud({"display": "Weight"})]}},
    ]
    for result in odd:
        assert comorbidity._valued_unless_named([*plain, result]) is None
        assert comorbidity._nyha_candidates([result], set()) == [result]


class _Loud(dict):  # type: ignore[type-arg]
    """A dict whose get() says NYHA and holds a coded value whatever it stores."""

    def get(self, key: Any, default: Any = None) -> Any:
        loud = {"text": "NYHA", "display": "NYHA", "valueCodeableConcept": _CLASS_III}
        return loud.get(key, default)


# ----------------------------------------------------------------------------- per-evaluation memo
def test_context_remembers_once_per_evaluation() -> None:
    from fhir_trial.criteria import therapy

    medications._DRUG_OF_KEY.clear()
    ndc = {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "50242-051-21"}]}
    record = _patient_with([*ODD_CONCEPTS[:3], ndc], "p1")
    ctx = _context(record)
    hist = therapy.history(ctx)
    assert therapy.history(ctx) is hist  # every medication criterion reads the same history
    assert hist == medications.build_history(record, ctx.as_of, ctx.settings.default_supply_days)
    assert therapy.known_drugs(ctx) == tuple(
        TERMINOLOGY.get(vs_id) for vs_id in medications.KNOWN_DRUG_VALUESETS
    )
    assert therapy.unidentified(ctx) == hist.unidentified(therapy.known_drugs(ctx))
    assert therapy.unidentified(ctx)  # the bare NDC code
    # A new evaluation (a new Context) of the same record sees what the record holds now.
    record.add(_request("p1-new", PRED, ORAL))
    assert therapy.history(_context(record)).retrieved == hist.retrieved + 1


def test_prior_therapy_roles_are_remembered_per_drug_and_terminology() -> None:
    from fhir_trial.criteria import therapy
    from fhir_trial.terminology import Terminology

    medications._DRUG_OF_KEY.clear()
    concepts = [*ODD_CONCEPTS, {"coding": [{"system": RXNORM, "code": "5521"}]}]
    for prefix in ("p1", "p2"):  # the second patient reads the first one's answers
        ctx = _context(_patient_with(concepts, prefix))
        valuesets = therapy.prior_therapy_valuesets(ctx)
        exposures = therapy.history(ctx).exposures
        rows = [therapy.roles_of(e, ctx) for e in exposures]
        assert rows == [therapy._roles(e, valuesets) for e in exposures]
        assert len(set(rows)) > 3  # steroids, partners, local, unplaced routes, hydroxychloroquine
    # Another terminology, where prednisone is no oral corticosteroid: its own answers.
    ocs = TERMINOLOGY.get("oral-corticosteroids")
    changed = _valueset(ocs.id, {(RXNORM, "1")}, {})
    other = Terminology([changed, *(TERMINOLOGY.get(i) for i in TERMINOLOGY.ids() if i != ocs.id)])
    ctx = dataclasses.replace(_context(_patient_with([PRED], "p3")), terminology=other)
    (drug, *_) = therapy.history(ctx).exposures
    assert therapy.roles_of(drug, ctx) == therapy._roles(drug, therapy.prior_therapy_valuesets(ctx))
    assert not therapy.roles_of(drug, ctx)[0]


def test_names_from_other_records_do_not_travel_to_another_patient() -> None:
    medications._DRUG_OF_KEY.clear()
    local = "http://hospital.example.cn/drug"
    bare = {"coding": [{"system": local, "code": "X1"}]}
    named = {"coding": [{"system": local, "code": "X1", "display": "泼尼松片"}]}
    ocs = TERMINOLOGY.get("oral-corticosteroids")
    first = PatientRecord()
    first.add(_request("a", bare, ORAL))
    first.add(_request("b", named, ORAL))
    drugs = medications.drug_records(first)
    # The bare record takes the name of the other record with its code: prednisone by name.
    assert drugs[id(first.resources("MedicationRequest")[0])].matches(ocs)
    second = PatientRecord()
    second.add(_request("c", bare, ORAL))  # written like the first patient's bare record
    (alone,) = medications.drug_records(second).values()
    assert not alone.names and not alone.matches(ocs)


def test_only_y_and_capital_y_match_y_ignoring_case() -> None:
    """What _may_name_nyha rests on, over every code point (Python's re folds a few
    non-ASCII letters onto ASCII ones: the Kelvin sign K onto k, the long s onto s)."""
    import re

    from fhir_trial.criteria.comorbidity import _NYHA_WORDS

    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert sorted(set(re.findall("y", everything, re.IGNORECASE))) == ["Y", "y"]
    assert all("y" in phrase for phrase in _NYHA_WORDS.pattern.split("|"))
    assert re.findall("k", "\u212a", re.IGNORECASE)  # the kind of folding that would matter


@pytest.mark.parametrize(
    "label",
    [
        "NYHA",
        "nYhA class",
        "New York Heart Association",
        "NEW YORK HEART ASSOCIATION",
        "new york heart aſſociation",
        "NEW \u0130ORK",
        "纽约心脏协会 NYHA",
        "Hemoglobin",
        "",
    ],
)
def test_may_name_nyha_never_hides_a_label_that_names_nyha(label: str) -> None:
    from fhir_trial.criteria.comorbidity import _label_names_nyha, _may_name_nyha

    assert _may_name_nyha(label) or not _label_names_nyha(label)


@SETTINGS
@given(
    st.text(
        alphabet=st.sampled_from("nNyYhHaA \u212a\u017fewWorRkKtTsScCi\u0130\u0131-"),
        max_size=30,
    )
)
def test_may_name_nyha_on_arbitrary_text(label: str) -> None:
    test_may_name_nyha_never_hides_a_label_that_names_nyha(label)


# ----------------------------------------------------------------------------- Conditions
_GM = "http://fhir.de/StructureDefinition/icd-10-gm-diagnosesicherheit"
_EXTENSIONS = st.one_of(
    st.none(),
    st.just([]),
    st.just("A"),
    st.lists(
        st.one_of(
            st.builds(dict, url=st.just(_GM), valueCode=st.sampled_from(["A", "v", "Z", "", 5])),
            st.builds(
                dict,
                url=st.just(_GM),
                valueCoding=st.builds(dict, code=st.sampled_from(["G", "z"])),
            ),
            st.builds(dict, url=st.just("http://example.org/other"), valueCode=st.just("A")),
            st.just("damaged"),
        ),
        max_size=2,
    ),
)


@st.composite
def _conditions(draw: Any) -> dict[str, Any]:
    def coding() -> Any:
        item: Any = {"system": ICD10, "code": draw(st.sampled_from(["M32.1", "", 5, None]))}
        if draw(st.booleans()):
            item["extension"] = draw(_EXTENSIONS)
        return draw(st.sampled_from([item, _mapping(item, True), "M32.1", None]))

    condition: dict[str, Any] = {"resourceType": "Condition"}
    if draw(st.booleans()):
        condition["extension"] = draw(_EXTENSIONS)
    code: Any = {"coding": [coding() for _ in range(draw(st.integers(0, 2)))]}
    condition["code"] = draw(st.sampled_from([code, _mapping(code, True), {"text": "SLE"}, "x"]))
    status: Any = {"coding": [coding() for _ in range(draw(st.integers(0, 2)))]}
    condition["clinicalStatus"] = draw(st.sampled_from([status, _mapping(status, True), None]))
    return condition


@SETTINGS
@given(_conditions())
def test_condition_readers_agree_with_their_rules(condition: dict[str, Any]) -> None:
    from fhir_trial.criteria import context

    assert context.gm_certainty(condition) == context._gm_certainty_of(
        condition, condition.get("code")
    )
    status = condition.get("clinicalStatus")
    assert context._code_of(status) == context._first_coded(status)


@pytest.mark.parametrize(
    "condition",
    [
        {"code": {"coding": [{"code": "M32.1", "extension": [{"url": _GM, "valueCode": "a"}]}]}},
        {"extension": [{"url": _GM, "valueCode": "v"}], "code": {"coding": [{"code": "M32.1"}]}},
        {"code": {"coding": ["x", {"extension": [{"url": _GM, "valueCode": "Z"}]}]}},
        {"code": {"coding": [{"code": "M32.1"}], "extension": [{"url": _GM, "valueCode": "A"}]}},
        {"code": {"coding": [{"code": "M32.1"}, {"code": "M32.8"}]}},
        {"code": {"text": "SLE"}},
    ],
)
def test_gm_certainty_reads_odd_conditions_as_the_rule(condition: dict[str, Any]) -> None:
    from fhir_trial.criteria import context

    assert context.gm_certainty(condition) == context._gm_certainty_of(
        condition, condition.get("code")
    )
    status = {"coding": [{"code": ""}, {"code": "active"}]}
    assert context._code_of(status) == context._first_coded(status) == "active"


# ----------------------------------------------------------------------------- in-place rewrites
def _frozen_mappings(value: Any) -> Any:
    """The same JSON with every object a read-only Mapping that is not a dict."""
    from types import MappingProxyType

    if isinstance(value, dict):
        return MappingProxyType({k: _frozen_mappings(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_frozen_mappings(v) for v in value]
    return value


_MAPPING_SAMPLES: list[dict[str, Any]] = [
    {
        "resourceType": "Condition",
        "code": {
            "coding": [
                {
                    "system": ICD10,
                    "code": "C50.9",
                    "display": "Malignant neoplasm of breast",
                    "extension": [{"url": _GM, "valueCode": "v"}],
                }
            ],
            "text": "Mammakarzinom",
        },
        "interpretation": [{"coding": [{"code": "HH"}], "text": "critical"}],
    },
    {
        "resourceType": "Condition",
        "extension": [{"url": _GM, "valueCode": "z"}],
        "code": {"text": "Lymphoma, history of"},
        "interpretation": {"coding": [{"code": "LL"}]},
    },
]


@pytest.mark.parametrize("resource", _MAPPING_SAMPLES)
def test_mappings_that_are_not_dicts_read_like_dicts(resource: dict[str, Any]) -> None:
    """type() is dict is tried before the Mapping ABC in the hot readers: a Mapping that is not
    a dict must still be read."""
    from fhir_trial.criteria.context import first_code, gm_certainty
    from fhir_trial.criteria.labels import MALIGNANCY_WORDS, naming_label
    from fhir_trial.observations import interpretations

    frozen = _frozen_mappings(resource)
    assert gm_certainty(frozen) == gm_certainty(resource) is not None
    assert first_code(frozen["code"]) == first_code(resource["code"]) != "?"
    assert naming_label(frozen["code"], MALIGNANCY_WORDS) == naming_label(
        resource["code"], MALIGNANCY_WORDS
    )
    assert naming_label(resource["code"], MALIGNANCY_WORDS) is not None
    assert len(interpretations(frozen)) == len(interpretations(resource)) == 1


def test_latest_earlier_lab_result_is_the_one_starting_last() -> None:
    """The key of exc/inc lab reasons' "latest earlier result" (_SPAN_START) is the span's start:
    a result dated only "2025" (any day of it) is not later than one of 2025-06-15."""
    from fhir_trial.criteria import labs

    record = PatientRecord()
    record.add({"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1990"})
    for number, when in enumerate(["2025", "2025-06-15"]):
        record.add(
            {
                "resourceType": "Observation",
                "id": f"hb{number}",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "718-7"}]},
                "effectiveDateTime": when,
                "valueQuantity": {"value": 12 + number, "unit": "g/dL"},
            }
        )
    reason = labs.hemoglobin(_context(record)).reason
    assert "the latest earlier result, 13 g/dL (130 g/L) on 2025-06-15" in reason


def test_report_entries_carry_their_spec() -> None:
    from fhir_trial.criteria.catalog import CRITERIA
    from fhir_trial.evaluate import evaluate

    report = evaluate(_patient_with([PRED], "p1"), Settings(as_of=dt.date(2026, 11, 26)))
    assert [(r.id, r.kind, r.ref, r.part_of) for r in report.criteria] == [
        (s.id, s.kind, s.ref, s.part_of) for s in CRITERIA
    ]


def _pickled_the_default_way(report: Any) -> Any:
    """The report pickled as a dataclass without __reduce_ex__ is (a state dict per object)."""
    import copyreg

    def state(obj: Any) -> Any:
        return (copyreg.__newobj__, (type(obj),), dict(vars(obj)))

    import io

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {  # type: ignore[attr-defined]
        **copyreg.dispatch_table,
        type(report): state,
    }
    pickler.dump(report)
    return pickle.loads(buffer.getvalue())


def test_reports_survive_pickling_as_they_were() -> None:
    """Reports cross from the population workers to the caller pickled (__reduce_ex__)."""
    import json

    from fhir_trial.answers import apply_answers
    from fhir_trial.evaluate import evaluate
    from fhir_trial.report import Answer

    reports = [evaluate(case.record(), case.settings_object()) for case in all_cases()[:60]]
    unknown = next(
        r for r in reports if any(c.status == "unknown" and c.part_of is None for c in r.criteria)
    )
    criterion = next(c.id for c in unknown.criteria if c.status == "unknown" and not c.part_of)
    answered = apply_answers(
        unknown, [Answer(criterion, "met", "seen in the chart", "Practitioner/1", "2026-11-26")]
    )
    assert answered.answers
    for report in [*reports, answered]:
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            back = pickle.loads(pickle.dumps(report, protocol=protocol))
            assert type(back) is EligibilityReport
            assert back == report == _pickled_the_default_way(report)
            assert list(vars(back).items()) == list(vars(report).items())  # in field order
            assert [vars(c) for c in back.criteria] == [vars(c) for c in report.criteria]
            assert json.dumps(back.to_json()) == json.dumps(report.to_json())
            assert repr(back) == repr(report)
    # What a worker writes: (order, report, what-if variants).
    packed = (("Patient/x", 3), reports[0], tuple(reports[1:4]))
    assert pickle.loads(pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)) == packed

    other = _AnnotatedReport(
        **{f.name: getattr(reports[0], f.name) for f in dataclasses.fields(reports[0])}
    )
    back = pickle.loads(pickle.dumps(other))
    assert type(back) is _AnnotatedReport and back == other


class _AnnotatedReport(EligibilityReport):
    """A subclass: pickled the default way."""


@pytest.mark.parametrize("failed", [False, True])
def test_a_category_not_obtained_leaves_its_criteria_unknown(failed: bool) -> None:
    """category_unavailable reads the record's states written out: a category never asked for
    is as unavailable as one that failed (absence rule 1), never an empty one."""
    from fhir_trial.criteria import labs
    from fhir_trial.criteria.context import Context
    from fhir_trial.record import CATEGORIES

    record = PatientRecord()
    record.add({"resourceType": "Patient", "id": "p"})
    record.mark_obtained(*(c for c in CATEGORIES if c != "Observation"))
    if failed:
        record.mark_failed("Observation", "timeout")
    as_of = dt.date(2026, 11, 26)
    ctx = Context(record, Settings(as_of=as_of), TERMINOLOGY, as_of, as_of)
    finding = labs.neutrophils(ctx)
    assert finding.status == "unknown"
    assert ("(timeout)" if failed else "(it was not requested)") in finding.reason
    assert finding.missing == ("Observation resources",)


def _verdict_rule(results: tuple[Any, ...]) -> str:
    """verdict_of as first written: the voting results, then the rules one after the other."""
    voting = [r for r in results if r.part_of is None]
    if any(r.kind == "inclusion" and r.status == "not-met" for r in voting) or any(
        r.kind == "exclusion" and r.status == "met" for r in voting
    ):
        return "ineligible"
    fine_inclusion = {"met", "not-applicable"}
    fine_exclusion = {"not-met", "not-applicable"}
    if all(
        r.status in (fine_inclusion if r.kind == "inclusion" else fine_exclusion) for r in voting
    ):
        return "eligible"
    return "potentially-eligible"


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["inclusion", "exclusion", "other"]),
            st.sampled_from(["met", "not-met", "unknown", "needs-review", "not-applicable"]),
            st.sampled_from([None, "inc-autoantibody"]),
        ),
        max_size=8,
    )
)
def test_verdict_is_what_the_rules_give_one_after_the_other(rows: list[Any]) -> None:
    from fhir_trial.evaluate import verdict_of
    from fhir_trial.report import CriterionResult

    results = tuple(
        CriterionResult(f"c{n}", kind, "ref", status, "why", part_of=part_of)
        for n, (kind, status, part_of) in enumerate(rows)
    )
    assert verdict_of(results) == _verdict_rule(results)


def _synthetic_and_synthea_records() -> list[tuple[str, Any, Settings]]:
    """Charts shaped like real ones: the benchmark's synthetic patients (years of orders and
    labs) and the Synthea bundles of ../shared, each at three screening dates."""
    import importlib.util
    import json
    from pathlib import Path

    from fhir_trial.sources.bundle import record_from_bundle

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("synthetic", root / "benchmarks" / "synthetic.py")
    assert spec is not None and spec.loader is not None
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    bundles = [
        (f"synthetic-{seed}", synthetic.synthetic_bundle(seed, 150 + 40 * seed))
        for seed in range(8)
    ]
    synthea = root.parent / "shared" / "fixtures" / "synthea" / "bundles"
    for path in sorted(synthea.glob("*.json"))[:4]:
        bundles.append((path.name, json.loads(path.read_text(encoding="utf-8"))))
    return [
        (name, lambda b=bundle: record_from_bundle(b), Settings(as_of=dt.date.fromisoformat(day)))
        for name, bundle in bundles
        for day in ("2026-11-26", "2023-02-15", "2019-06-01")
    ]


def test_real_shaped_reports_are_the_same_without_the_fast_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from fhir_trial.evaluate import evaluate

    charts = _synthetic_and_synthea_records()
    assert len(charts) > 24

    def reports() -> list[str]:
        return [
            json.dumps(evaluate(build(), screening).to_json(), ensure_ascii=False)
            for _, build, screening in charts
        ]

    medications._DRUG_OF_KEY.clear()
    fast = reports()
    again = reports()  # drugs remembered from the first round
    with monkeypatch.context() as patch:
        use_general_rules(patch)
        general = reports()
    for (name, _, screening), one, two, other in zip(charts, fast, again, general, strict=True):
        assert one == two == other, (name, screening.as_of)


# ----------------------------------------------------------------------------- units
_UNIT_SPELLINGS = st.one_of(
    st.sampled_from(
        ["10*9/L", "K/uL", "x10E3/uL", "G/L", "g/L", "g/dL", "mg/dL", "mmol/L", "umol/l", "%", " "]
    ),
    st.text(alphabet="10*^E/uLgdmlμµxK{}cels% ", max_size=10),
)


@SETTINGS
@given(st.lists(st.tuples(_UNIT_SPELLINGS, st.sampled_from([None, 16.11, 1.0])), max_size=6))
def test_unit_factors_are_remembered_per_spelling_and_molar_mass(
    units: list[tuple[str, float | None]],
) -> None:
    from fhir_trial import units as u

    for unit, grams_per_mmol in units:
        assert u._cell_count_factor(unit) == u._cell_count_factor.__wrapped__(unit)
        assert u._mass_factor(unit, grams_per_mmol) == u._mass_factor.__wrapped__(
            unit, grams_per_mmol
        )
    # mmol/L is a mass only with a molar mass: the answer without one is not reused with one.
    assert u._mass_factor("mmol/L", None) is None
    assert u._mass_factor("mmol/L", 16.11) == pytest.approx(16.11)


# ----------------------------------------------------------------------------- findings
@dataclasses.dataclass(frozen=True)
class _GeneratedFinding:
    """Finding with the __init__ the dataclass decorator writes."""

    status: str
    reason: str
    evidence: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("met", "why"), {}),
        (("unknown", "why", ("Observation/1",)), {}),
        (("unknown", "why"), {"missing": ("a lab",)}),
        ((), {"status": "not-met", "reason": "r", "evidence": ("x",), "missing": ("y",)}),
    ],
)
def test_finding_is_what_the_generated_init_builds(args: tuple[Any, ...], kwargs: Any) -> None:
    from fhir_trial.report import Finding

    fast = Finding(*args, **kwargs)
    slow = _GeneratedFinding(*args, **kwargs)
    assert vars(fast) == vars(slow)
    assert list(vars(fast)) == [f.name for f in dataclasses.fields(Finding)]
    assert repr(fast) == repr(slow).replace("_GeneratedFinding", "Finding")
    assert fast == Finding(*args, **kwargs) and hash(fast) == hash(Finding(*args, **kwargs))
    assert dataclasses.replace(fast, reason="other").reason == "other"
    assert pickle.loads(pickle.dumps(fast)) == fast == copy.deepcopy(fast)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.status = "met"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Finding("met")  # type: ignore[call-arg]


# ----------------------------------------------------------------------------- label safety nets
_CONDITION_LABELS = st.one_of(
    st.sampled_from(
        [
            "Systemic lupus erythematosus",
            "Lupus anticoagulant",
            "SLE with lupus anticoagulant",
            "Drug-induced lupus",
            "Psoriasis",
            "Family history of psoriasis",
            "Malignant neoplasm of breast",
            "Breast cancer",
            "Carcinoma in situ",
            "Plaque psoriasis",
            "Lupus nephritis",
            "HIV infection",
            "AIDS",
            "Hypertension",
            "系统性红斑狼疮",
        ]
    ),
    st.none(),
    st.integers(),
    st.floats(),
)


@st.composite
def _labelled_concepts(draw: Any) -> Any:
    codings_ = [
        draw(
            st.sampled_from(
                [
                    {"system": SNOMED, "code": "1", "display": draw(_CONDITION_LABELS)},
                    {"system": SNOMED, "code": "2"},
                    _mapping({"code": "3", "display": draw(_CONDITION_LABELS)}, True),
                    "Psoriasis",
                ]
            )
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    concept: Any = {"coding": codings_}
    if draw(st.booleans()):
        concept["text"] = draw(_CONDITION_LABELS)
    return draw(st.sampled_from([concept, _mapping(concept, True), "Psoriasis", None]))


def _naming_label_rule(concept: Any, words: str, qualifiers: str) -> str | None:
    """naming_label as first written: every label asked in turn."""
    from collections.abc import Mapping

    from fhir_trial.criteria.labels import label_suggests
    from fhir_trial.terminology import codings

    labels = [c.get("display") for c in codings(concept)]
    if isinstance(concept, Mapping):
        labels.append(concept.get("text"))
    for label in labels:
        if isinstance(label, str) and label_suggests(label, words, qualifiers):
            return label
    return None


_TWO_NAMES = [
    {"coding": [{"system": SNOMED, "code": "1", "display": "Breast cancer"}], "text": "Carcinoma"},
    {"coding": [{"code": "1", "display": "Plaque psoriasis"}, {"display": "Psoriasis"}]},
    {"coding": [{"code": "1", "display": "Lupus nephritis"}], "text": "SLE"},
]


@pytest.mark.parametrize("concept", _TWO_NAMES)
def test_condition_label_table_keeps_the_order_of_labels(concept: Any) -> None:
    test_condition_label_table_reads_as_each_label_asked_in_turn.hypothesis.inner_test(  # type: ignore[attr-defined]
        [concept, {"coding": [{"display": "Hypertension"}], "text": "Hypertension"}]
    )


@SETTINGS
@given(st.lists(_labelled_concepts(), max_size=5))
def test_condition_label_table_reads_as_each_label_asked_in_turn(concepts: list[Any]) -> None:
    from fhir_trial.criteria import comorbidity, labels

    record = PatientRecord()
    for number, concept in enumerate(concepts):
        record.add({"resourceType": "Condition", "id": f"c{number}", "code": concept})
    ctx = _context(record)
    nets = [
        (labels.MALIGNANCY_WORDS, labels.NOT_A_DIAGNOSIS),
        (labels.SKIN_DISEASE_WORDS, labels.NOT_A_DIAGNOSIS),
        (labels.IMMUNODEFICIENCY_WORDS, labels.NOT_A_DIAGNOSIS),
        (labels.LUPUS_WORDS, labels.NOT_SLE),
    ]
    conditions = record.resources("Condition")
    for words, qualifiers in nets:
        for condition in conditions:
            expected = _naming_label_rule(condition.get("code"), words, qualifiers)
            assert labels.naming_label(condition.get("code"), words, qualifiers) == expected
        rule = [
            (c, label)
            for c in conditions
            if (label := _naming_label_rule(c.get("code"), words, qualifiers)) is not None
        ]
        assert labels.uncoded_suggestions(ctx, words, (), qualifiers) == rule
    lupus = {id(c) for c in conditions if _naming_label_rule(c.get("code"), *nets[3]) is not None}
    assert comorbidity._active_conditions(ctx, exclude_lupus=True) == [
        c for c in comorbidity._active_conditions(ctx, exclude_lupus=False) if id(c) not in lupus
    ]


# ----------------------------------------------------------------------------- inc-prior-therapy
def _bounded(rid: str, concept: Any, start: str, end: str) -> dict[str, Any]:
    period = {"start": start, "end": end}
    return {
        **_request(rid, concept),
        "status": "completed",
        "dosageInstruction": [{"timing": {"repeat": {"boundsPeriod": period}}, "route": ORAL}],
    }


MYCOPHENOLATE = {"coding": [{"system": RXNORM, "code": "68149", "display": "mycophenolate"}]}


@pytest.mark.parametrize("partial", ["steroid", "partner", "neither"])
def test_prior_therapy_weighs_partial_dates_of_either_drug(partial: str) -> None:
    from fhir_trial.criteria import therapy

    # One drug from 1 May, the other from some day in May: certainly 180 days together (from
    # 31 May), possibly 210 (from 1 May); 182 are needed. Neither partial: 180 days.
    record = PatientRecord()
    record.add({"resourceType": "Patient", "id": "p"})
    steroid_start = {"steroid": "2026-05", "partner": "2026-05-01", "neither": "2026-05-31"}[
        partial
    ]
    partner_start = {"steroid": "2026-05-01", "partner": "2026-05", "neither": "2026-05-31"}[
        partial
    ]
    record.add(_bounded("s", PRED, steroid_start, "2026-11-26"))
    record.add(_bounded("m", MYCOPHENOLATE, partner_start, "2026-11-26"))
    ctx = _context(record)
    finding = therapy.prior_therapy(ctx)
    if partial == "neither":
        assert finding.status == "not-met", finding.reason
    else:
        assert finding.status == "needs-review", finding.reason
        assert "with partial dates" in finding.reason
    original = therapy._all_exact
    try:
        therapy._all_exact = lambda *groups: False  # type: ignore[assignment]
        assert therapy.prior_therapy(_context(record)) == finding
    finally:
        therapy._all_exact = original
