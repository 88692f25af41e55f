"""The fast paths of record building and date reading give what the general rules give.

Record building and evaluation run for every resource of every patient, so a few hot helpers
are written out flat or remember their answers (fhir_trial.sources._common.patient_refs,
fhir_trial.fhirdates.parse_span, fhir_trial.terminology.record_code_keys, is_known_type). Each is
checked here against the plain rule it stands for, on ordinary and odd inputs (contained,
``urn:uuid``, absolute, versioned and display-only references; dates with times, spaces, partial
precision; malformed values), with hypothesis for the inputs nobody thought of.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import zip_longest
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_trial.fhirdates import _read_span, parse_span
from fhir_trial.sources import _common
from fhir_trial.sources._common import (
    is_known_type,
    normalise_reference,
    patient_refs,
    references,
)
from fhir_trial.terminology import ICD10, lookup_keys, record_code_keys

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


def reference_rule(resource: dict[str, Any]) -> list[str]:
    """patient_refs as first written: every top-level reference, normalised, patient-like kept."""
    if resource.get("resourceType") == "Patient":
        return []
    found = (normalise_reference(ref) for ref in references(resource))
    return [ref for ref in found if ref.startswith(("Patient/", "urn:"))]


ODD_REFERENCES = [
    "Patient/p1",
    "Patient/p1/_history/3",
    "https://fhir.example.org/r4/Patient/p1",
    "https://fhir.example.org/r4/Patient/p1/_history/2",
    "http://example.org/fhir/Patient/p1/",
    "urn:uuid:0b0f6f3c-6a2c-4f57-9d35-6a1d1e4d2d11",
    "urn:oid:1.2.3",
    "#contained-patient",
    "Patient?identifier=http://example.org/mrn|123",
    "Group/g1",
    "Practitioner/pr1",
    "Patient/",
    "Patient/p1\n",
    "patient/p1",
    "",
    "Patient/" + "x" * 65,
]


@pytest.mark.parametrize("ref", ODD_REFERENCES)
@pytest.mark.parametrize(
    "shape",
    ["single", "repeated", "mixed list", "display only", "dict subclass", "not text"],
)
def test_patient_refs_agree_with_the_reference_rule(ref: str, shape: str) -> None:
    value: Any
    if shape == "single":
        value = {"reference": ref, "display": "Ann"}
    elif shape == "repeated":
        value = [{"reference": ref}, {"reference": "Patient/other"}]
    elif shape == "mixed list":
        value = ["text", 3, None, {"display": "no reference"}, {"reference": ref}]
    elif shape == "display only":
        value = {"display": ref}
    elif shape == "dict subclass":
        value = OrderedDict(reference=ref)
    else:
        value = {"reference": [ref]}
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": value,
        "performer": [{"reference": "Practitioner/x"}],
        "contained": [{"resourceType": "Patient", "id": "contained-patient"}],
        "valueString": ref,
    }
    assert patient_refs(resource) == reference_rule(resource)
    assert patient_refs(resource) == reference_rule(resource)  # from the cache this time
    assert patient_refs({**resource, "resourceType": "Patient"}) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["reference", "display", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
reference_texts = st.sampled_from(ODD_REFERENCES) | st.text(
    alphabet="Patient/_histoy:urn0123-.#?", max_size=30
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["subject", "patient", "performer", "code", "focus", "note"]),
        json_values
        | st.builds(lambda r: {"reference": r}, reference_texts)
        | st.lists(st.builds(lambda r: {"reference": r}, reference_texts), max_size=3),
        max_size=5,
    )
)
def test_patient_refs_agree_on_arbitrary_resources(elements: dict[str, Any]) -> None:
    resource = {"resourceType": "Condition", **elements}
    assert patient_refs(resource) == reference_rule(resource)


def test_patient_refs_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "_MAX_CACHED_REFS", 4)
    _common._PATIENT_REF_OF.clear()
    for number in range(10):
        resource = {"resourceType": "Condition", "subject": {"reference": f"Patient/p{number}"}}
        assert patient_refs(resource) == [f"Patient/p{number}"]
        assert len(_common._PATIENT_REF_OF) <= 4


@pytest.mark.parametrize(
    "value",
    [
        "Observation",
        "Patient",
        "observation",
        "NotAType",
        "Observation ",
        "",
        None,
        3,
        ["Observation"],
        {"x": 1},
    ],
)
def test_is_known_type_remembers_what_the_rule_says(value: Any) -> None:
    assert is_known_type(value) == _common._is_known_type(value)
    assert is_known_type(value) == _common._is_known_type(value)


def test_known_type_names_read_from_the_folder_are_those_of_the_package() -> None:
    names = _common._known_type_names()
    assert len(names) > 140 and {"observation", "patient", "medicationrequest"} <= names
    assert names == _common._imported_type_names()


def test_known_type_names_without_importing_the_models() -> None:
    """The NDJSON reader asks for them before splitting (file names): the models and pydantic
    (about 80 ms) are not imported for it."""
    import subprocess
    import sys

    code = (
        "import sys; from fhir_trial.sources import _common; "
        "assert _common.is_known_type('Observation'); "
        "print('pydantic' in sys.modules, 'fhir.resources.R4B' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]


DATES = [
    "2024",
    "2024-02",
    "2024-02-29",
    "2023-02-29",
    "2024-03-05T10:00:00Z",
    "2024-03-05T23:59:59+14:00",
    "2024-03-05 10:00",
    "2024-03-05X10:00",
    " 2024-03-05T10:00",
    "2024-03-0 T10:00",
    "2024-03   T10:00",
    "2024      T10:00",
    "2024-03-05T",
    "2024-03-05     ",
    "2024-03-05\u3000T",
    "\u20002024-03-05T10:00",
    "2024-13-05T10:00",
    "abcd-ef-ghT10:00",
    "",
    "20",
]


@pytest.mark.parametrize("value", DATES)
def test_parse_span_agrees_with_the_full_rule(value: str) -> None:
    assert parse_span(value) == _read_span(value)
    assert parse_span(value) == _read_span(value)  # from the cache this time


@SETTINGS
@given(
    st.text(alphabet="0123456789-T :Z+. \t\u3000", max_size=25)
    | st.dates().map(lambda d: d.isoformat() + "T10:00:00Z")
    | st.text(max_size=14)
)
def test_parse_span_agrees_on_arbitrary_text(value: str) -> None:
    assert parse_span(value) == _read_span(value)


@pytest.mark.parametrize("value", [None, 2024, 2024.5, ["2024"], {"start": "2024"}])
def test_parse_span_refuses_what_is_not_text(value: Any) -> None:
    assert parse_span(value) is None


@pytest.mark.parametrize(
    ("system", "code"),
    [
        ("http://snomed.info/sct", "55464009"),
        ("urn:oid:2.16.840.1.113883.6.96", " 55464009 "),
        (ICD10, "M32.14"),
        ("http://fhir.de/CodeSystem/bfarm/icd-10-gm", "M32.1†"),
        ("http://www.whocc.no/atc", "j01ca04"),
        (None, "123"),
        ("http://snomed.info/sct", 55464009),
        ("http://snomed.info/sct", ""),
        ("http://snomed.info/sct", {"x": 1}),
        ({"not": "a system"}, "123"),
    ],
)
def test_record_code_keys_are_lookup_keys(system: Any, code: Any) -> None:
    assert record_code_keys(system, code) == tuple(lookup_keys(system, code))
    assert record_code_keys(system, code) == tuple(lookup_keys(system, code))


# ----------------------------------------------------------------------------- medications
def _order(rid: str, concept: Any = None, route: Any = None, **more: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-01-01",
        **more,
    }
    if concept is not None:
        resource["medicationCodeableConcept"] = concept
    if route is not None:
        resource["dosageInstruction"] = [{"route": route, "text": rid}]
    return resource


PRED = {
    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "8640"}],
    "text": "prednisone",
}
PRED_NAMED = {
    "coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "8640", "display": "x"}
    ]
}
ORAL = {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}], "text": "Oral"}
TOPICAL = {"coding": [{"system": "http://snomed.info/sct", "code": "6064005"}], "text": "Topical"}


def _odd_medication_records() -> list[dict[str, Any]]:
    import datetime as dt

    return [
        {"resourceType": "Patient", "id": "p1"},
        _order("a", PRED, ORAL),
        _order("b", PRED, ORAL),  # the same drug the same way: shared
        _order("c", PRED, TOPICAL),  # same drug, another route
        _order("d", PRED),  # no route
        _order("e", PRED_NAMED, ORAL),
        _order("f", {**PRED, "text": "Prednison 5 mg Tabletten"}, ORAL),
        _order("g", {"coding": [{"system": PRED["coding"][0]["system"], "code": 8640}]}),
        _order("h", {"coding": [{"system": PRED["coding"][0]["system"], "code": 8640.0}]}),
        _order("i", {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.88", "code": "8640"}]}),
        _order("j", {"text": dt.date(2026, 1, 1)}),  # not plain JSON: the general rule
        _order("k", {"text": "2026-01-01"}),
        _order("k1", {"coding": [{**PRED["coding"][0], "display": None}]}, ORAL),
        _order("k2", {"coding": [{**PRED["coding"][0], "display": float("nan")}]}, ORAL),
        _order("l", None, None, medicationReference={"reference": "Medication/m1"}),
        _order("m", PRED, None, medicationReference={"reference": "Medication/m1"}),
        _order(
            "n",
            None,
            None,
            medicationReference={"reference": "#c1"},
            contained=[{"resourceType": "Medication", "id": "c1", "code": PRED}],
        ),
        _order("o", None, None, medicationReference={"display": "prednisone 5 mg"}),
        _order("p", None, None, medicationReference=None),
        _order("q", {}, ORAL),
        _order("r", PRED, "oral"),  # a damaged route
        {**_order("s", PRED, None), "dosage": {"route": ORAL}},
        {
            "resourceType": "MedicationStatement",
            "id": "a",
            "status": "active",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": PRED,
            "dosage": [{"route": ORAL}],
        },
        {"resourceType": "Medication", "id": "m1", "code": PRED},
    ]


def test_drug_records_shared_between_records_are_what_each_record_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fhir_trial import medications
    from fhir_trial.record import PatientRecord

    record = PatientRecord()
    record.add_all(_odd_medication_records())
    shared = medications.drug_records(record)
    a, b = (shared[id(r)] for r in record.resources("MedicationRequest")[:2])
    assert a.codings is b.codings  # read once for both
    assert a.reference != b.reference
    # Every record read by the general rule alone gives the same drug records.
    monkeypatch.setattr(medications, "_same_drug_key", lambda resource, routes: None)
    alone = medications.drug_records(record)
    assert list(shared) == list(alone)
    for rid, drug in shared.items():
        assert drug == alone[rid], drug.reference
        assert type(drug) is type(alone[rid])


# ----------------------------------------------------------------------------- Bundles
def _bundle_with_odd_references(patient_url: str) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}
    subjects: list[Any] = [
        {"reference": "Patient/p1"},
        {"reference": "Patient/p1/_history/2"},
        {"reference": "https://ehr.example.org/fhir/Patient/p1"},
        {"reference": patient_url},
        {"reference": "Patient/p2"},  # another patient, not in the Bundle
        {"reference": "#p1"},  # contained
        {"display": "Ann Example"},  # display only
        {"reference": ["Patient/p1"]},  # damaged
        "Patient/p1",  # damaged
        None,
    ]
    entries = [{"fullUrl": patient_url, "resource": patient}]
    for number, subject in enumerate(subjects):
        for extra in (
            {},
            {"performer": [{"reference": "Patient/p2"}]},
            {"focus": [{"reference": "Patient/p1"}]},
        ):
            condition: dict[str, Any] = {
                "resourceType": "Condition",
                "id": f"c{number}-{len(extra)}-{len(entries)}",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55464009"}]},
                **extra,
            }
            if subject is not None:
                condition["subject"] = subject
            entries.append({"resource": condition})
            entries.append({"resource": {**condition, "id": condition["id"] + "-p"}})
            entries[-1]["resource"]["patient"] = entries[-1]["resource"].pop("subject", None)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


@pytest.mark.parametrize(
    "patient_url",
    ["urn:uuid:7d1c4f0e-3b0b-4a53-9d89-4ef0d4a1a6c2", "https://ehr.example.org/fhir/Patient/p1"],
)
def test_one_patient_bundle_shortcut_keeps_what_the_full_rule_keeps(
    patient_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhir_trial.sources import bundle

    data = _bundle_with_odd_references(patient_url)
    fast = bundle.record_from_bundle(data)
    monkeypatch.setattr(bundle, "_names_the_patient", lambda resource, keys: False)
    general = bundle.record_from_bundle(data)
    kept = [c["id"] for c in fast.resources("Condition")]
    assert kept == [c["id"] for c in general.resources("Condition")]
    assert 0 < len(kept) < len(data["entry"]) - 1  # the odd shapes go both ways


# ----------------------------------------------------------------------------- worker start
def test_population_workers_do_not_import_the_http_client() -> None:
    """Each population worker imports the NDJSON screening code; the FHIR client and its HTTP
    stack (about 75 ms a worker) come only when used, and stay reachable from the package."""
    import subprocess
    import sys

    code = (
        "import sys; import fhir_trial.sources.ndjson_screen; "
        "print('requests' in sys.modules); "
        "from fhir_trial.sources import FhirClient, PatientNotFoundError; "
        "print(FhirClient.__name__, PatientNotFoundError.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    assert out[:2] == ["False", "FhirClient PatientNotFoundError"]


# ------------------------------------------------------------------ the split's one-patient test
def _named_once_by_two_scans(line: bytes) -> bytes | None:
    """The general rule: the first reference's id, when "Patient" occurs exactly once."""
    from fhir_trial.sources.ndjson_buckets import PATIENT_REF

    match = PATIENT_REF.search(line)
    return match.group(1) if match is not None and line.count(b"Patient") == 1 else None


def _named_once_by_one_scan(line: bytes) -> bytes | None:
    """The one-scan rule, line by line (one findall over the line)."""
    from fhir_trial.sources.ndjson_buckets import PATIENT_WORD

    found = PATIENT_WORD.findall(line)
    return found[0] if len(found) == 1 and found[0] and b"Patient" not in found[0] else None


def _named_once_by_stretches(block: list[bytes]) -> list[bytes | None]:
    """What split_range does: the rule decided once per stretch of a block, one id per line."""
    from fhir_trial.sources.ndjson_buckets import stretches

    out: list[bytes | None] = []
    for start, stop, pid in stretches(block):
        assert start == len(out) and stop > start  # stretches cover the block, in order
        out += [pid or None] * (stop - start)
    assert len(out) == len(block)
    return out


_LINE_PIECES = st.sampled_from(
    [
        b"Patient",
        b"Patient/",
        b"Patient\\/",
        b"/",
        b"\\",
        b'"',
        b"a",
        b"Z9",
        b"-",
        b".",
        b"Patient/Patient",
        b'{"subject":{"reference":"',
        b'"}}',
        b"patient",
        b"Pat",
        b"ient",
        b" ",
        "患者".encode(),
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_LINE_PIECES, max_size=12).map(b"".join))
def test_split_one_scan_names_the_same_patient_as_two(line: bytes) -> None:
    assert _named_once_by_one_scan(line) == _named_once_by_two_scans(line)
    assert _named_once_by_stretches([line]) == [_named_once_by_one_scan(line)]


# Lines that find the same thing come in stretches (a patient's lines), with odd ones between.
_BLOCK_LINES = st.one_of(
    st.lists(_LINE_PIECES, max_size=8).map(b"".join),
    st.sampled_from(
        [
            b'{"subject":{"reference":"Patient/a"}}',
            b'{"subject":{"reference":"Patient/a"},"v":1}',
            b'{"subject":{"reference":"Patient/b"}}',
            b'{"subject":{"reference":"Patient\\/a"}}',
            b'{"subject":{"reference":"Patient/a"},"performer":[{"reference":"Patient/a"}]}',
            b'{"resourceType":"Patient","id":"a"}',
            b'{"subject":{"reference":"Patient/aPatient"}}',
            b"",
            b"  ",
        ]
    ),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(_BLOCK_LINES, min_size=1, max_size=3), max_size=8))
def test_split_stretches_name_each_line_as_the_one_scan_rule(
    chunks: list[list[bytes]],
) -> None:
    # Each drawn line repeated a few times: the stretches of real exports.
    block = [line for chunk in chunks for line in chunk for _ in range(1 + len(line) % 3)]
    assert _named_once_by_stretches(block) == [_named_once_by_one_scan(line) for line in block]


@pytest.mark.parametrize(
    "line",
    [
        b'{"subject":{"reference":"Patient/a-1"}}',
        b'{"subject":{"reference":"Patient\\/a-1"}}',
        b'{"resourceType":"Patient","id":"a"}',
        b'{"subject":{"reference":"Patient/Patient"}}',  # "Patient" twice: not the fast path
        b'{"subject":{"reference":"Patient/a"},"asserter":{"reference":"Patient/b"}}',
        b'{"subject":{"reference":"Group/g"}}',
        b'{"subject":{"reference":"Patient/' + b"x" * 70 + b'"}}',  # id longer than 64
    ],
)
def test_split_one_scan_on_known_shapes(line: bytes) -> None:
    assert _named_once_by_one_scan(line) == _named_once_by_two_scans(line)


# ------------------------------------------------------------- the worker's whole-run test
_RUN_LINES = st.sampled_from(
    [
        b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"}}',
        b'{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/a"},"x":[1]}',
        b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"},"v":2}',
        b'{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/b"}}',
        b'{"resourceType":"AllergyIntolerance","id":"ai","patient":{"reference":"Patient/a"}}',
        b'{"resourceType":"Condition","subject":{},"patient":{"reference":"Patient/a"}}',
        b'{"resourceType":"Condition","subject":null,"patient":{"reference":"Patient/b"}}',
        b'{"resourceType":"AllergyIntolerance","id":"a2","patient":"Patient/a"}',
        b'{"resourceType":"Condition","id":"c9","subject":{"reference":"Patient/b"},'
        b'"patient":{"reference":"Patient/a"}}',
        b'{"resourceType":"Condition","subject":"Patient/a"}',
        b'{"resourceType":"Condition","subject":[{"reference":"Patient/a"}]}',
        b'{"resourceType":"Patient","id":"p","subject":{"reference":"Patient/a"}}',
        b'{"resourceType":"Encounter","id":"e","subject":{"reference":"Patient/a"}}',
        b'{"resourceType":["Condition"],"subject":{"reference":"Patient/a"}}',
        b'{"resourceType":{"a":1},"subject":{"reference":"Patient/a"}}',
        b'{"resourceType":5,"subject":{"reference":"Patient/a"}}',
        b'{"id":"n","subject":{"reference":"Patient/a"}}',
        b'{"resourceType":"Condition","id":"t","subject":{"reference":"Patient/a"}',
        b'["Patient/a"]',
        b'"Patient/a"',
        b'{"resourceType":"Observation","id":"o3","subject":{"reference":"Patient/a "}}',
    ]
)


def _group_both_ways(
    runs: list[list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[Any]]:
    from array import array

    from fhir_trial.sources import ndjson_buckets as nb
    from fhir_trial.sources.ndjson import classify_line
    from fhir_trial.sources.ndjson_account import InputAccount

    job = nb.BucketJob(0, (), ("Observation.000.ndjson",), ("Observation",), {(0, 0): 0}, None)
    patient = (b"0 0 1 2 a", b'{"resourceType":"Patient","id":"a"}', nb.PATIENT_LINE)
    slices: list[Any] = []
    number = 1
    for run in runs:
        numbers = array(nb.NUMBER, range(number + 1, number + 1 + len(run)))
        slices.append((0, 0, numbers, b"\n".join(run)))
        number += len(run) + 3  # runs of a patient are apart in the file
    outcomes = []
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(nb, "_take_run", lambda *args: False)
        account = InputAccount()
        lines = nb.PatientLines(patients=[patient], runs=list(slices))
        group = nb._parse_group(job, "a", lines, account, classify_line)
        assert group is not None
        outcomes.append([group.resources, group.failed_for, account.to_json()])
    return outcomes[0], outcomes[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_RUN_LINES, min_size=1, max_size=5), min_size=1, max_size=3))
def test_runs_taken_whole_give_what_the_line_by_line_test_gives(runs: list[list[bytes]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        whole, by_line = _group_both_ways(runs, monkeypatch)
    assert whole == by_line


def test_runs_taken_whole_on_known_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    good = b'{"resourceType":"Observation","id":"o%d","subject":{"reference":"Patient/a"}}'
    mixed = [good % 1, b'{"resourceType":"Condition","id":"c","subject":{"reference":"Patient/a"}}']
    runs = [mixed, [good % 2, b"{broken Patient/a"], [good % 3, good % 4]]
    whole, by_line = _group_both_ways(runs, monkeypatch)
    assert whole == by_line
    assert [order[2] for order, _ in whole[0]] == [2, 3, 7, 12, 13]  # the broken line is left out
    assert whole[2]["types"]["Observation"]["resources"] == 4


# ------------------------------------------------------------------ PatientRecord.add_all
def _record_state(record: Any) -> Any:
    """Everything add() leaves in a record, with resources named by identity (the derived
    component results by their place among them)."""
    derived = {id(c): ("component", n) for n, c in enumerate(record._components)}

    def ids(resource: Any) -> Any:
        return derived.get(id(resource), id(resource))

    ranks = [(t, record._rank(t)) for t in record._by_type]

    return (
        {t: [ids(r) for r in rs] for t, rs in record._by_type.items()},
        {k: ids(r) for k, r in record._references().items()},
        {
            t: {k: [ids(r) for r in rs] for k, rs in index.items() if rs}
            for t, index in record._by_code.items()
        },
        # Record order per type, the components among the Observations (what lookups sort by).
        {t: [derived.get(k, k) for k in sorted(rank, key=rank.__getitem__)] for t, rank in ranks},
        record.warnings,
        record.left_out,
        # Per type, the labels gathered while indexing (or that a shape was not plain).
        {
            t: "not plain" if t in record._unplain else record._labels[t]
            for t in {*record._labels, *record._unplain}
            if record._labels.get(t) or t in record._unplain
        },
    )


_CODINGS = st.sampled_from(
    [
        {"system": "http://loinc.org", "code": "718-7"},
        {"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"},
        {"system": "http://snomed.info/sct", "code": "55464009"},
        {"system": ICD10, "code": "M32.14"},
        {"system": "urn:oid:2.16.840.1.113883.6.96", "code": " 55464009 "},
        {"code": "123"},
        {"system": "http://loinc.org", "code": 7187},
        {"system": "http://loinc.org", "code": True},
        {"system": "http://loinc.org", "code": 1},
        {"system": "http://loinc.org", "code": ""},
        {"system": {"x": 1}, "code": "718-7"},
        {"system": "http://loinc.org", "code": ["718-7"]},
        OrderedDict(system="http://loinc.org", code="718-7"),
        "718-7",
        None,
    ]
)
_CONCEPTS = st.one_of(
    st.builds(lambda cs: {"coding": cs}, st.lists(_CODINGS, max_size=3)),
    st.sampled_from([None, "text", {"text": "x"}, {"coding": "718-7"}, [{"code": "1"}]]),
    st.builds(lambda cs: OrderedDict(coding=cs), st.lists(_CODINGS, max_size=2)),
)
_RECORD_RESOURCES = st.builds(
    lambda rtype, rid, element, concept, parts: {
        k: v
        for k, v in {
            "resourceType": rtype,
            "id": rid,
            element: concept,
            "component": parts,
        }.items()
        if v is not None
    },
    st.sampled_from(
        ["Observation", "Condition", "MedicationRequest", "Medication", "Encounter", 5, None]
    ),
    st.sampled_from(["a", "b", "", None, 3]),
    st.sampled_from(["code", "medicationCodeableConcept"]),
    _CONCEPTS,
    st.one_of(
        st.none(),
        st.lists(st.builds(lambda c: {"code": c, "valueInteger": 1}, _CONCEPTS), max_size=2),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_RECORD_RESOURCES, max_size=8), st.integers(0, 3))
def test_add_all_leaves_what_add_leaves(resources: list[dict[str, Any]], again: int) -> None:
    from fhir_trial.record import PatientRecord

    # The same objects given twice too (kept once when they have no id).
    given_ = resources + resources[:again]
    one_by_one, at_once = PatientRecord(), PatientRecord()
    for resource in given_:
        one_by_one.add(resource)
    at_once.add_all(given_)
    assert _record_state(at_once) == _record_state(one_by_one)


def test_a_clean_run_is_taken_whole() -> None:
    from array import array

    from fhir_trial.sources.ndjson_buckets import NUMBER, _take_run
    from fhir_trial.sources.ndjson_versions import PlacedResources

    line = b'{"resourceType":"Observation","id":"o%d","subject":{"reference":"Patient/a"}}'
    run = (0, 1, array(NUMBER, [4, 9]), line % 1 + b"\n" + line % 2)
    resources = PlacedResources()
    counts: dict[str, int] = {}
    assert _take_run(run, "Patient/a", resources, counts)
    assert [(order, r["id"]) for order, r in resources] == [((0, 1, 4), "o1"), ((0, 1, 9), "o2")]
    assert counts == {"Observation": 2}


def test_add_all_gives_the_same_reports_as_add_on_real_shaped_charts() -> None:
    # The clinical cases, the benchmark's synthetic charts and the Synthea bundles: their
    # resources (in record order) given to add() one by one and to add_all, then evaluated.

    from clinical_cases import all_cases
    from test_eval_fast_paths import _synthetic_and_synthea_records

    charts = [(case.name, case.record, case.settings_object()) for case in all_cases()]
    charts += _synthetic_and_synthea_records()
    assert len(charts) > 100
    for name, build, screening in charts:
        source = build()
        by_type = [source.resources(t) for t in source._by_type]
        grouped = [r for rs in by_type for r in rs]
        # Types interleaved (one of each in turn): add_all looks up a type's lists when it changes.
        mixed = [r for turn in zip_longest(*by_type) for r in turn if r is not None]
        for given_ in (grouped, mixed):
            _same_both_ways(name, given_, source, screening)


def _same_both_ways(name: str, given_: list[Any], source: Any, screening: Any) -> None:
    import json

    from fhir_trial.evaluate import evaluate
    from fhir_trial.record import PatientRecord

    records = []
    for at_once in (False, True):
        record = PatientRecord()
        if at_once:
            record.add_all(given_)
        else:
            for resource in given_:
                record.add(resource)
        record.obtained = set(source.obtained)
        record.failed = dict(source.failed)
        record.warnings[:0] = [w for w in source.warnings if w not in record.warnings]
        records.append(record)
    one, other = (json.dumps(evaluate(r, screening).to_json()) for r in records)
    assert one == other, name
    assert _record_state(records[0]) == _record_state(records[1]), name


@settings(max_examples=300, deadline=None)
@given(st.lists(_RECORD_RESOURCES, max_size=10), st.integers(0, 3))
def test_record_order_per_type_is_the_order_resources_were_added(
    resources: list[dict[str, Any]], again: int
) -> None:
    """What with_code sorts by (made when needed) is the order add() kept the resources in,
    each component right after its parent: what a position counted at each add gave."""
    from fhir_trial.record import PatientRecord

    record = PatientRecord()
    order: list[Any] = []  # every resource kept and component made, as they come
    for resource in resources + resources[:again]:
        kept = sum(map(len, record._by_type.values()))
        made = len(record._components)
        record.add(resource)
        if sum(map(len, record._by_type.values())) > kept:
            order.append(resource)
        order += record._components[made:]
        record._rank("Observation")  # made early too: it must follow later additions
    components = {id(c) for c in record._components}
    for rtype, kept_ in record._by_type.items():
        ids = {id(r) for r in kept_} | (components if rtype == "Observation" else set())
        expected = [id(r) for r in order if id(r) in ids]
        rank = record._rank(rtype)
        assert sorted(rank, key=rank.__getitem__) == expected


# ----------------------------------------------------------------- Feasibility.add's shortcuts
def test_feasibility_rules_out_as_the_rule_says() -> None:
    from fhir_trial.population.measures import _RULING_OUT, rules_out
    from fhir_trial.report import STATUSES

    for kind in ("inclusion", "exclusion", "exclusion-deceased", ""):
        for status in (*STATUSES, "", "Met"):
            assert ((kind, status) in _RULING_OUT) == rules_out(kind, status), (kind, status)


def test_feasibility_blanks_each_missing_item_as_the_pattern_does() -> None:
    from fhir_trial.population import measures

    items = ["score for Patient/abc-1 missing", "no Observation/x-2 in 90 days", "plain", ""]
    for raw in items * 2:  # the second time from the memo
        assert measures._shared_item(raw) == measures._REFERENCE.sub("<resource>", raw)


# What references name: the rule as first written (one dict of text keys), replayed on the same
# additions, one by one (with fullUrls) and in batches.
_REFERENCE_RESOURCES = st.builds(
    lambda rtype, rid: {
        k: v for k, v in {"resourceType": rtype, "id": rid}.items() if v is not None
    },
    st.sampled_from(["Observation", "Condition", "Medication", "A/b", "A", 5]),
    st.sampled_from(["a", "b", "b/c", "", None, 3, "3", "x"]),
)
_FULL_URLS = st.sampled_from(
    [None, "Observation/a", "urn:uuid:1", "http://s/fhir/Condition/b", "A/b/c", "Medication/x", "m"]
)


def _references_as_first_written(steps: list[tuple[bool, list[Any]]]) -> tuple[dict[str, Any], int]:
    held: dict[str, Any] = {}
    seen: set[int] = set()
    left_out = 0
    for _, items in steps:
        for resource, full_url in items:
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if not isinstance(rtype, str):
                left_out += 1
                continue
            key = f"{rtype}/{rid}" if rid else None
            if key:
                if key in held:
                    left_out += 1
                    continue
                held[key] = resource
            elif id(resource) in seen:
                left_out += 1
                continue
            else:
                seen.add(id(resource))
            if full_url and full_url != key:
                held[full_url] = resource
                held.setdefault("/".join(full_url.rstrip("/").split("/")[-2:]), resource)
    return held, left_out


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # a batch for add_all (fullUrls only one by one)
            st.lists(st.tuples(_REFERENCE_RESOURCES, _FULL_URLS), min_size=1, max_size=5),
        ),
        max_size=5,
    )
)
def test_references_name_what_the_first_rule_names(steps: list[tuple[bool, list[Any]]]) -> None:
    from fhir_trial.record import PatientRecord

    steps = [(batch, [(r, None if batch else u) for r, u in items]) for batch, items in steps]
    record = PatientRecord()
    for batch, items in steps:
        if batch:
            record.add_all([resource for resource, _ in items])
        else:
            for resource, full_url in items:
                record.add(resource, full_url)
    held, left_out = _references_as_first_written(steps)
    assert {k: id(r) for k, r in record._references().items()} == {
        k: id(r) for k, r in held.items()
    }
    assert record.left_out == left_out
    for key in [*held, "Observation/zz", "A/b/c", "urn:uuid:1", "http://s/fhir/Condition/b"]:
        expected = held.get(key)
        if expected is None and "/" in key and not key.startswith("urn:"):
            expected = held.get("/".join(key.rstrip("/").split("/")[-2:]))
        assert record.resolve(key) is expected, key


@pytest.mark.parametrize(
    "steps",
    [
        # an id not text, then the same Type/id as text, in one batch
        [
            (
                True,
                [
                    ({"resourceType": "Condition", "id": 3}, None),
                    ({"resourceType": "Condition", "id": "3"}, None),
                ],
            )
        ],
        # a type holding "/" and a type/id making the same text
        [
            (
                True,
                [
                    ({"resourceType": "A/b", "id": "c"}, None),
                    ({"resourceType": "A", "id": "b/c"}, None),
                ],
            )
        ],
        # added one by one, then again in a batch; a fullUrl naming a resource of a batch
        [
            (False, [({"resourceType": "Observation", "id": "a"}, None)]),
            (True, [({"resourceType": "Observation", "id": "a"}, None)]),
            (True, [({"resourceType": "Condition", "id": "b"}, None)]),
            (False, [({"resourceType": "Medication", "id": "m"}, "Condition/b")]),
        ],
    ],
    ids=["id-not-text-then-text", "type-with-slash", "one-by-one-then-batch"],
)
def test_references_on_known_shapes(steps: list[tuple[bool, list[Any]]]) -> None:
    test_references_name_what_the_first_rule_names.hypothesis.inner_test(steps)  # type: ignore[attr-defined]
