"""Observation searches: values inside components, and code lists that outgrow a URL.

- The REST client and the CDS prefetch templates search results by ``combo-code`` (the code or a
  component's code), so a value sent as a component of a panel (LVEF in an echo panel, hemoglobin
  in a blood count, a pregnancy status in a questionnaire panel) is found: the REST path and the
  Bundle path give the same statuses for such a record.
- A server that refuses ``combo-code`` (400) makes the Observation category unknown, never
  not-met; a server that ignores it answers every Observation, which is still complete.
- A code list too long for one URL is split over several searches, each under
  ``Settings.max_search_query_chars``; their results are merged without duplicates, and one
  failing part makes the category unknown.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from clinical_cases import CASES_DIR, PATIENT_ID, case_bundle, load_case
from fake_fhir_server import FakeFhirServer
from test_fhir_client import Server, client_for, outcome, searchset

from fhir_trial.cds_hooks.discovery import prefetch_templates
from fhir_trial.cds_hooks.prefetch import apply_prefetch
from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.record import NYHA_FINDINGS, OBSERVATION_COMPONENTS, PatientRecord
from fhir_trial.searches import (
    MAX_PATIENT_ID_CHARS,
    PlannedSearch,
    chunk_tokens,
    plan_searches,
    valueset_ids,
)
from fhir_trial.sources.bundle import record_from_bundle
from fhir_trial.sources.fhir_client import FhirClient
from fhir_trial.terminology import Terminology, ValueSet, load_terminology

LOINC = "http://loinc.org"
CASES = Path(__file__).parent / "cases"
AS_OF = dt.date(2026, 11, 26)
LONG_ID = "p" * MAX_PATIENT_ID_CHARS
OBSERVATION_CRITERIA = (
    "inc-lvef",
    "inc-hemoglobin",
    "inc-neutrophils",
    "inc-sledai",
    "inc-anti-dsdna",
    "exc-pregnancy-lactation",
    "exc-heart-failure",
)


def big_terminology(big: int, valueset_id: str = "hemoglobin") -> Terminology:
    """Every ValueSet the searches use; ``valueset_id`` holds ``big`` codes, the others one."""
    return Terminology(
        ValueSet(
            id=vid,
            url=f"urn:test:{vid}",
            title=vid,
            codes=frozenset((LOINC, f"{vid}-{n}") for n in range(big if vid == valueset_id else 1)),
            displays={},
        )
        for vid in valueset_ids()
    )


def _query_length(search: PlannedSearch) -> int:
    """Characters after ``?`` of the URL the REST client sends for a patient with a 64-char id."""
    url = search.relative_url(LONG_ID)
    return len(url.split("?", 1)[1]) + len("&_count=200")


# ------------------------------------------------------------------------------ planning
def test_5000_codes_become_several_searches_under_the_cap() -> None:
    terminology = big_terminology(5000)
    cap = Settings().max_search_query_chars
    plan = plan_searches(terminology, cap)
    results = [s for s in plan if s.spec.key == "observation"]
    assert len(results) > 5
    assert all(_query_length(s) <= cap for s in results)
    keys = [s.key for s in results]
    assert keys[0] == "observation" and keys[1] == "observation2" and len(set(keys)) == len(keys)
    asked = {t for s in results for t in (s.filter_value or "").split(",")}
    assert {f"{LOINC}|hemoglobin-{n}" for n in range(5000)} <= asked
    # Never a search of every Observation.
    assert all(s.filter_value for s in plan if s.category == "Observation")
    assert all("combo-code=" in s.relative_url("p1") for s in results)


def test_a_smaller_cap_from_settings_makes_more_searches() -> None:
    terminology = big_terminology(500)
    wide = [s for s in plan_searches(terminology, 4000) if s.spec.key == "observation"]
    narrow = [s for s in plan_searches(terminology, 1000) if s.spec.key == "observation"]
    assert len(narrow) > len(wide)
    assert all(_query_length(s) <= 1000 for s in narrow)
    assert (
        Settings.from_env({"FHIR_TRIAL_MAX_SEARCH_QUERY_CHARS": "1000"}).max_search_query_chars
        == 1000
    )


def test_a_code_longer_than_the_budget_still_gets_its_own_search() -> None:
    chunks = chunk_tokens(["a" * 50, "b", "c" * 10], 20)
    assert chunks == [["a" * 50], ["b", "c" * 10]]


def test_shipped_plan_searches_components_and_nyha_components() -> None:
    terminology = load_terminology(Settings().resources_dir)
    templates = prefetch_templates(plan_searches(terminology))
    assert "combo-code=" in templates["observation"]
    assert "combo-code=" in templates["observationScores"]
    assert "component-value-concept=" in templates["observationNyhaParts"]
    assert f"{LOINC}|10230-1" in templates["observation"]


# ------------------------------------------------------------------------------ REST, split lists
def _split_server(terminology: Terminology) -> tuple[Server, list[str]]:
    """A scripted server answering each code search with the Observations coded in it."""
    server = Server()
    observations = {
        f"hemoglobin-{n}": {
            "resourceType": "Observation",
            "id": f"hb{n}",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": f"hemoglobin-{n}"}]},
        }
        for n in (0, 2500, 4999)
    }
    # One Observation coded twice, found by two of the split searches: kept once.
    observations["hemoglobin-4998"] = {
        **observations["hemoglobin-4999"],
        "code": {
            "coding": [
                {"system": LOINC, "code": "hemoglobin-0"},
                {"system": LOINC, "code": "hemoglobin-4998"},
            ]
        },
        "id": "both",
    }
    original = server.get

    def get(path: str, query: dict[str, list[str]]) -> Any:
        if path.endswith("/Observation") and "combo-code" in query:
            tokens = query["combo-code"][0].split(",")
            found = [
                o
                for code, o in observations.items()
                if f"{LOINC}|{code}" in tokens
                or any(f"{LOINC}|{c['code']}" in tokens for c in o["code"]["coding"])
            ]
            unique = {o["id"]: o for o in found}
            return 200, searchset(list(unique.values())), {}
        return original(path, query)

    server.get = get  # type: ignore[method-assign]
    return server, ["hb0", "hb2500", "hb4999", "both"]


@pytest.mark.parametrize("batch", [True, False])
def test_split_searches_are_merged_complete_and_without_duplicates(batch: bool) -> None:
    terminology = big_terminology(5000)
    server, expected = _split_server(terminology)
    server.batch = batch
    client, session = client_for(server, terminology=terminology)
    record = client.fetch_patient_record("p1")
    assert record.usable("Observation")
    ids = [o["id"] for o in record.resources("Observation")]
    assert sorted(ids) == sorted(expected)
    cap = Settings().max_search_query_chars
    split = [s for s in client.searches("p1") if "combo-code" in dict(s.params)]
    assert len(split) > 5
    assert all(len(s.relative_url().split("?", 1)[1]) <= cap for s in split)
    if batch:
        # The CapabilityStatement, then every part in the one batch.
        assert [c[0] for c in session.calls] == ["GET", "POST"]
    else:
        sent = [query for _, _, query in session.calls if "combo-code" in query]
        assert len(sent) == len(split)
        assert all(len(urlencode(query, doseq=True)) <= cap for query in sent)


@pytest.mark.parametrize("batch", [True, False])
def test_one_failing_part_makes_the_category_unknown(batch: bool) -> None:
    terminology = big_terminology(5000)
    server, _ = _split_server(terminology)
    server.batch = batch
    original = server.get

    def get(path: str, query: dict[str, list[str]]) -> Any:
        # The part holding hemoglobin-2500 fails.
        if path.endswith("/Observation") and f"{LOINC}|hemoglobin-2500" in query.get(
            "combo-code", [""]
        )[0].split(","):
            return 500, outcome("boom"), {}
        return original(path, query)

    server.get = get  # type: ignore[method-assign]
    client, _ = client_for(server, Settings(max_retries=0), terminology=terminology)
    record = client.fetch_patient_record("p1")
    assert record.state("Observation") == "failed"
    # What was read still counts as evidence, but the category is not complete.
    assert "hb0" in [o["id"] for o in record.resources("Observation")]
    report = evaluate(record, Settings(as_of=AS_OF))
    assert report.criterion("inc-hemoglobin").status == "unknown"


# ------------------------------------------------------------------------------ REST = Bundle
COMPONENT_CASES = (
    "inc-lvef/component-35-percent-in-echo-panel-is-not-met.yaml",
    "inc-hemoglobin/cbc-panel-component-5-5-g-per-decilitre-is-not-met.yaml",
    "inc-neutrophils/cbc-components-absolute-0-6-with-percent-is-not-met.yaml",
    "inc-sledai/total-as-component-of-assessment-meets.yaml",
    "inc-anti-dsdna/component-flagged-high-meets.yaml",
    "exc-pregnancy-lactation/pregnancy-status-component-pregnant-is-met.yaml",
    "exc-heart-failure/nyha-class-iv-as-component-is-met.yaml",
)


def _component_resources() -> list[dict[str, Any]]:
    """The resources of the component cases, renumbered so they can share one record."""
    resources: list[dict[str, Any]] = []
    for n, name in enumerate(COMPONENT_CASES):
        for resource in load_case(CASES / name).resources:
            if resource["resourceType"] == "Patient":
                if n == 0:
                    resources.append(copy.deepcopy(resource))
                continue
            item = copy.deepcopy(resource)
            item["id"] = f"{item['id']}-{n}"
            resources.append(item)
    return resources


@pytest.fixture()
def component_server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer() as server:
        for resource in _component_resources():
            server.add(resource)
        yield server


def _statuses(record: PatientRecord) -> dict[str, str]:
    report = evaluate(record, Settings(as_of=AS_OF))
    return {cid: report.criterion(cid).status for cid in OBSERVATION_CRITERIA}


def test_rest_and_bundle_agree_on_values_inside_components(
    component_server: FakeFhirServer,
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in _component_resources()],
    }
    from_bundle = _statuses(record_from_bundle(bundle))
    with FhirClient(component_server.base_url) as client:
        record = client.fetch_patient_record(PATIENT_ID)
    assert record.usable("Observation")
    from_rest = _statuses(record)
    assert from_rest == from_bundle
    # The values are really read from the components (not unknown for want of a result).
    assert from_rest["inc-lvef"] == "not-met"
    assert from_rest["inc-hemoglobin"] == "not-met"
    assert from_rest["exc-heart-failure"] == "met"
    (batch,) = [r for r in component_server.requests if r.method == "POST"]
    urls = [e["request"]["url"] for e in batch.body["entry"]]
    observation = [u for u in urls if u.startswith("Observation")]
    # Asked by code or component code (and NYHA by value), never for every Observation.
    assert sum("combo-code=" in u for u in observation) >= 2  # split as the code lists grow
    assert all("=" in u.split("&", 2)[-1] and "&" in u for u in observation)


def test_server_refusing_combo_code_falls_back_to_code_and_says_what_it_missed(
    component_server: FakeFhirServer,
) -> None:
    component_server.unsupported = {"combo-code"}
    component_server.advertise_unsupported = True  # found out from the 400, not the metadata
    with FhirClient(component_server.base_url, settings=Settings(max_retries=0)) as client:
        record = client.fetch_patient_record(PATIENT_ID)
    # The Observations are read by code: an Epic- or Cerner-like server loses nothing else.
    assert record.usable("Observation")
    assert record.state(OBSERVATION_COMPONENTS) == "failed"
    assert any("cannot search inside panels (combo-code)" in w for w in record.warnings)
    (_, batch) = [r for r in component_server.requests if r.method == "POST"]
    retried = [e["request"]["url"] for e in batch.body["entry"]]
    assert retried and all("code=" in u and "combo-code" not in u for u in retried)
    assert all("patient=Patient/" in u for u in retried)
    statuses = _statuses(record)
    # Values sent only as panel components were not seen: never not-met for want of them.
    assert statuses["inc-lvef"] == "unknown"
    assert statuses["inc-hemoglobin"] == "unknown"
    assert "not-met" not in statuses.values()
    report = evaluate(record, Settings(as_of=dt.date(2026, 11, 26)))
    assert report.to_json()["complete"] is False
    assert OBSERVATION_COMPONENTS in report.to_json()["notObtained"]


def test_capability_statement_without_combo_code_searches_by_code_at_once(
    component_server: FakeFhirServer,
) -> None:
    component_server.unsupported = {"combo-code"}  # and not advertised
    with FhirClient(component_server.base_url, settings=Settings(max_retries=0)) as client:
        record = client.fetch_patient_record(PATIENT_ID)
    assert record.usable("Observation")
    assert record.state(OBSERVATION_COMPONENTS) == "failed"
    assert not any("combo-code" in r.query for r in component_server.requests)
    batch = [r for r in component_server.requests if r.method == "POST"]
    assert batch and not any("combo-code" in str(r.body) for r in batch)


def test_server_refusing_only_the_optional_nyha_component_search_still_completes(
    component_server: FakeFhirServer,
) -> None:
    component_server.unsupported = {"component-value-concept"}
    with FhirClient(component_server.base_url, settings=Settings(max_retries=0)) as client:
        record = client.fetch_patient_record(PATIENT_ID)
    assert record.usable("Observation")
    assert any("component-value-concept" in w for w in record.warnings)
    # Like value-concept, the NYHA component search is an extra whose failure only warns: the
    # NYHA panel (no result code) is then not read, and the warning says which search failed.
    assert _statuses(record)["inc-lvef"] == "not-met"


# ------------------------------------------------------------------------------ CDS prefetch
def test_prefetch_with_a_split_key_missing_or_null_is_not_complete() -> None:
    terminology = big_terminology(5000)
    plan = plan_searches(terminology)
    keys = [s.key for s in plan if s.category == "Observation"]
    assert "observation2" in keys
    prefetch: dict[str, Any] = {key: searchset([]) for key in {s.key for s in plan}}
    prefetch["patient"] = {"resourceType": "Patient", "id": "p1"}
    prefetch["observation2"] = None
    record = PatientRecord()
    apply_prefetch(record, prefetch, "p1", plan)
    assert record.state("Observation") == "failed"
    assert "observation2" in record.failed["Observation"]
    complete = dict(prefetch, observation2=searchset([]))
    record = PatientRecord()
    apply_prefetch(record, complete, "p1", plan)
    assert record.usable("Observation")


def test_server_ignoring_combo_code_sends_everything_and_reads_the_same(
    component_server: FakeFhirServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lenient server that does not know combo-code ignores it and answers every Observation
    # of the patient: more data, read the same way.
    import fake_fhir_server

    fields = dict(fake_fhir_server._COMPONENT_TOKEN_FIELDS)
    del fields["combo-code"]
    monkeypatch.setattr(fake_fhir_server, "_COMPONENT_TOKEN_FIELDS", fields)
    component_server.add(
        {
            "resourceType": "Observation",
            "id": "bp",
            "status": "final",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        }
    )
    with FhirClient(component_server.base_url) as client:
        record = client.fetch_patient_record(PATIENT_ID)
    assert record.usable("Observation")
    assert "bp" in [o["id"] for o in record.resources("Observation")]
    assert _statuses(record)["inc-lvef"] == "not-met"


# ------------------------------------------------------------------------------ NYHA assessments
NYHA_CASES = [
    "exc-heart-failure/nyha-class-as-text-after-class-ii-needs-review",
    "exc-heart-failure/nyha-observation-with-loinc-answer-class-iv-met",
    "exc-heart-failure/loinc-assessment-without-words-valued-as-text-needs-review",
    "exc-heart-failure/loinc-class-ii-answer-after-snomed-class-iii-not-met",
    "exc-heart-failure/nyha-loinc-answer-in-panel-component-met",
    "exc-heart-failure/class-iii-answer-of-another-scale-is-not-nyha",
]


@pytest.mark.parametrize("name", NYHA_CASES)
def test_rest_and_bundle_agree_on_nyha_assessments(name: str) -> None:
    """NYHA assessments coded 88020-3, valued with LOINC answers, or named only in words are
    searched (combo-code, value-concept, code:text), so REST reads what a Bundle holds."""
    case = load_case(CASES_DIR / f"{name}.yaml")
    settings = case.settings_object()
    with FakeFhirServer() as server:
        for resource in case.resources:
            server.add(copy.deepcopy(resource))
        with FhirClient(server.base_url, settings=settings) as client:
            record = client.fetch_patient_record(PATIENT_ID)
    from_rest = evaluate(record, settings).criterion("exc-heart-failure")
    from_bundle = evaluate(record_from_bundle(case_bundle(case)), settings).criterion(
        "exc-heart-failure"
    )
    assert from_rest.status == case.expect["exc-heart-failure"]
    assert (from_rest.status, from_rest.reason) == (from_bundle.status, from_bundle.reason)


def test_server_without_code_text_search_warns_and_reads_the_rest() -> None:
    """A server that refuses ``code:text`` (400) costs a warning, not the NYHA part: an
    assessment named only in words is then not found (rare), coded ones still are."""
    case = load_case(
        CASES_DIR / "exc-heart-failure/nyha-observation-with-loinc-answer-class-iv-met.yaml"
    )
    settings = case.settings_object()
    with FakeFhirServer() as server:
        server.unsupported = {"code:text"}
        for resource in case.resources:
            server.add(copy.deepcopy(resource))
        with FhirClient(server.base_url, settings=replace(settings, max_retries=0)) as client:
            record = client.fetch_patient_record(PATIENT_ID)
    assert record.state(NYHA_FINDINGS) != "failed"
    assert any("code:text" in w for w in record.warnings)
    assert evaluate(record, settings).criterion("exc-heart-failure").status == "met"
