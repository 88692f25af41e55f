"""Several prefetch keys per data category: merged, fetched when absent, failed together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    PATIENT_ID,
    SERVICE_PATH,
    Recorder,
    assert_valid,
    base_settings,
    bearer,
    full_prefetch,
    hook_request,
    make_app,
    patient,
    sandbox_issuer,
    sandbox_token,
    searchset,
    sle_condition,
    write_issuers,
)
from fake_fhir_server import FakeFhirServer

from fhir_trial.cds_hooks.prefetch import apply_prefetch
from fhir_trial.config import Settings
from fhir_trial.record import NYHA_FINDINGS, OBSERVATION_COMPONENTS, PatientRecord
from fhir_trial.searches import plan_searches
from fhir_trial.terminology import LOINC, Terminology, load_terminology

TOKEN = "fhir-access-token"
# The prefetch keys of Observation searches as planned (long code lists are split over several).
OBSERVATION_KEYS = [
    planned.key
    for planned in plan_searches(load_terminology(Settings().resources_dir))
    if planned.spec.category == "Observation"
]


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    return load_terminology(Settings().resources_dir)


def first_code(terminology: Terminology, valueset_id: str) -> tuple[str, str]:
    return next(iter(terminology[valueset_id]))


def observation(oid: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": "2026-11-01",
        **fields,
    }


def hemoglobin(terminology: Terminology) -> dict[str, Any]:
    system, code = first_code(terminology, "hemoglobin")
    return observation(
        "hb",
        code={"coding": [{"system": system, "code": code}]},
        valueQuantity={"value": 12.1, "unit": "g/dL", "system": "http://unitsofmeasure.org"},
    )


def nyha_iii(terminology: Terminology) -> dict[str, Any]:
    system, code = first_code(terminology, "nyha-class-iii-iv")
    return observation(
        "nyha",
        code={"text": "NYHA functional class"},
        valueCodeableConcept={"coding": [{"system": system, "code": code}]},
    )


@pytest.fixture()
def server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer(token=TOKEN) as running:
        yield running


def _post(
    tmp_path: Path, shared_dir: Path, body: dict[str, Any], recorder: Recorder, **kw: Any
) -> Any:
    issuer = sandbox_issuer(shared_dir, **kw)
    path = write_issuers(tmp_path / "issuers.json", [issuer])
    settings = base_settings(tmp_path, cds_trusted_issuers_file=path, cds_deadline_s=3.0)
    client = make_app(settings, evaluator=recorder).test_client()
    response = client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid("response", response.get_json())
    return response


def _with_server(server: FakeFhirServer, prefetch: dict[str, Any]) -> dict[str, Any]:
    body = hook_request(prefetch, fhirServer=server.base_url)
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer"}
    return body


# ------------------------------------------------------------------------------ through the hook
def test_prefetch_missing_the_nyha_key_fetches_only_that_query(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, terminology: Terminology
) -> None:
    server.add(nyha_iii(terminology))
    prefetch = full_prefetch()
    prefetch["observation"] = searchset(hemoglobin(terminology))
    del prefetch["observationNyha"]
    recorder = Recorder()
    _post(
        tmp_path,
        shared_dir,
        _with_server(server, prefetch),
        recorder,
        fhir_servers=[server.base_url],
    )
    (request,) = server.requests
    assert request.path == "Observation" and request.query["patient"] == [f"Patient/{PATIENT_ID}"]
    asked = set(request.query["value-concept"][0].split(","))
    for valueset_id in ("nyha-class-iii-iv", "nyha-class-i-ii"):
        assert {f"{s}|{c}" for s, c in terminology[valueset_id]} <= asked
    assert "code" not in request.query
    assert recorder.record is not None and recorder.record.usable("Observation")
    assert {o["id"] for o in recorder.record.resources("Observation")} == {"hb", "nyha"}
    assert recorder.status("exc-heart-failure") == "met"
    assert recorder.report is not None
    (labs,) = [r for r in recorder.report.criteria if r.id == "exc-abnormal-labs"]
    assert "retrieved for this screening" in labs.reason and "may be only" in labs.reason


def test_null_for_the_nyha_key_makes_heart_failure_unknown_and_keeps_the_rest(
    tmp_path: Path, shared_dir: Path, terminology: Terminology
) -> None:
    prefetch = full_prefetch()
    prefetch["observation"] = searchset(hemoglobin(terminology))
    prefetch["observationNyha"] = None
    recorder = Recorder()
    response = _post(tmp_path, shared_dir, hook_request(prefetch), recorder)
    assert recorder.record is not None
    # Only the NYHA part failed: every other Observation criterion is decided as usual.
    assert recorder.record.usable("Observation")
    assert recorder.record.state(NYHA_FINDINGS) == "failed"
    assert "observationNyha" in recorder.record.failed[NYHA_FINDINGS]
    assert recorder.record.usable("Condition")
    # Without a retrieved NYHA search, no heart failure Condition does not mean "not excluded".
    assert recorder.status("exc-heart-failure") == "unknown"
    assert recorder.status("inc-hemoglobin") != "unknown"
    assert recorder.report is not None and recorder.report.to_json()["complete"] is False
    for card in response.get_json()["cards"]:
        # The card names the missing NYHA search; the criterion itself is in the worksheet.
        assert "observationNyha" in card["detail"]


def test_null_for_a_combo_code_key_is_fetched_by_the_service(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, terminology: Terminology
) -> None:
    server.add(hemoglobin(terminology))
    prefetch = full_prefetch()
    prefetch["observation"] = None  # the EHR's server may not support combo-code
    recorder = Recorder()
    _post(
        tmp_path,
        shared_dir,
        _with_server(server, prefetch),
        recorder,
        fhir_servers=[server.base_url],
    )
    assert [r.path for r in server.searched()] == ["Observation"]
    assert recorder.record is not None and recorder.record.usable("Observation")
    assert "hb" in {o["id"] for o in recorder.record.resources("Observation")}


def test_null_combo_code_key_on_a_server_without_combo_code_falls_back_to_code(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, terminology: Terminology
) -> None:
    server.add(hemoglobin(terminology))
    server.unsupported = {"combo-code"}
    prefetch = full_prefetch()
    prefetch["observation"] = None
    recorder = Recorder()
    _post(
        tmp_path,
        shared_dir,
        _with_server(server, prefetch),
        recorder,
        fhir_servers=[server.base_url],
    )
    asked = server.searched()
    assert [sorted(r.query) for r in asked] == [
        ["_count", "combo-code", "patient"],
        ["_count", "code", "patient"],
    ]
    record = recorder.record
    assert record is not None and record.usable("Observation")
    assert record.state(OBSERVATION_COMPONENTS) == "failed"
    assert any("cannot search inside panels" in w for w in record.warnings)
    assert "hb" in {o["id"] for o in record.resources("Observation")}


def test_null_key_without_a_fhir_server_fails_its_category(
    tmp_path: Path, shared_dir: Path, terminology: Terminology
) -> None:
    prefetch = full_prefetch()
    prefetch["observationScores"] = None
    recorder = Recorder()
    _post(tmp_path, shared_dir, hook_request(prefetch), recorder)
    assert recorder.record is not None and recorder.record.state("Observation") == "failed"
    assert "observationScores" in recorder.record.failed["Observation"]
    assert recorder.status("inc-hemoglobin") == "unknown"


NYHA_KEYS = (
    "observationNyha",
    "observationNyhaParts",
    "observationNyhaAssessment",
    "observationNyhaWords",
)


def test_ehr_configured_before_the_nyha_keys_loses_only_the_nyha_part(
    tmp_path: Path, shared_dir: Path, terminology: Terminology
) -> None:
    # An EHR that prefetches the Observation keys it was configured with, not the NYHA ones, and
    # gives no fhirServer: every other Observation criterion is still decided.
    prefetch = full_prefetch()
    prefetch["observation"] = searchset(hemoglobin(terminology))
    for key in NYHA_KEYS:
        assert key in prefetch
        del prefetch[key]
    recorder = Recorder()
    _post(tmp_path, shared_dir, hook_request(prefetch), recorder)
    record = recorder.record
    assert record is not None and record.usable("Observation")
    assert record.state(NYHA_FINDINGS) == "failed"
    assert "did not send prefetch key 'observationNyha'" in record.failed[NYHA_FINDINGS]
    assert any("code:text" in w for w in record.warnings)
    assert recorder.status("inc-hemoglobin") != "unknown"
    assert recorder.status("exc-heart-failure") == "unknown"


def test_only_the_words_key_missing_without_a_server_is_a_warning(
    tmp_path: Path, shared_dir: Path, terminology: Terminology
) -> None:
    # The words search (code:text) is the one an EHR's server most often cannot run.
    prefetch = full_prefetch()
    prefetch["observationNyha"] = searchset(nyha_iii(terminology))
    prefetch["observationNyhaWords"] = None
    recorder = Recorder()
    _post(tmp_path, shared_dir, hook_request(prefetch), recorder)
    record = recorder.record
    assert record is not None and record.usable("Observation")
    assert record.state(NYHA_FINDINGS) != "failed"
    assert any("code:text" in w for w in record.warnings)
    assert recorder.status("exc-heart-failure") == "met"


def test_one_failed_nyha_fetch_fails_only_that_part_and_keeps_the_evidence(
    tmp_path: Path, shared_dir: Path, server: FakeFhirServer, terminology: Terminology
) -> None:
    server.fail(500, times=None, match="Observation")
    prefetch = full_prefetch()
    prefetch["observation"] = searchset(hemoglobin(terminology))
    del prefetch["observationNyha"]
    recorder = Recorder()
    response = _post(
        tmp_path,
        shared_dir,
        _with_server(server, prefetch),
        recorder,
        fhir_servers=[server.base_url],
    )
    assert recorder.record is not None and recorder.record.usable("Observation")
    assert recorder.record.state(NYHA_FINDINGS) == "failed"
    assert [o["id"] for o in recorder.record.resources("Observation")] == ["hb"]
    assert recorder.status("exc-heart-failure") == "unknown"
    (card,) = response.get_json()["cards"]
    assert f"{NYHA_FINDINGS} (the FHIR server answered HTTP 500)" in card["detail"]


# ------------------------------------------------------------------------------ apply_prefetch
def test_keys_of_one_category_are_merged_and_deduplicated(terminology: Terminology) -> None:
    plan = plan_searches(terminology)
    shared = nyha_iii(terminology)
    prefetch = full_prefetch()
    prefetch["observation"] = searchset(hemoglobin(terminology), shared)
    prefetch["observationNyha"] = searchset(dict(shared))
    record = PatientRecord()
    result = apply_prefetch(record, prefetch, PATIENT_ID, plan)
    assert not result.pending and not result.to_fetch
    assert record.usable("Observation")
    assert sorted(o["id"] for o in record.resources("Observation")) == ["hb", "nyha"]


def test_absent_keys_are_pending_with_their_own_queries(terminology: Terminology) -> None:
    plan = plan_searches(terminology)
    prefetch = {"patient": patient(), "condition": searchset(sle_condition())}
    prefetch["observationScores"] = searchset(next_url="https://ehr.test/fhir/Observation?page=2")
    record = PatientRecord()
    result = apply_prefetch(record, prefetch, PATIENT_ID, plan)
    assert set(result.pending["Observation"]) == set(OBSERVATION_KEYS)
    assert result.next_pages == {"observationScores": "https://ehr.test/fhir/Observation?page=2"}
    urls = {s.key: s.relative_url(PATIENT_ID) for s in result.to_fetch}
    assert set(urls) == set(OBSERVATION_KEYS) - {"observationScores"} | {
        s.key for s in plan if s.category not in ("Patient", "Condition", "Observation")
    }
    assert "combo-code=" in urls["observation"] and f"{LOINC}|" in urls["observation"]
    assert "value-concept=" in urls["observationNyha"]
    assert "component-value-concept=" in urls["observationNyhaParts"]
    # Until fetched, nothing with open keys counts as obtained.
    assert record.state("Observation") == "failed"
    assert record.usable("Patient") and record.usable("Condition")


def test_without_terminology_observation_is_one_unfiltered_search() -> None:
    plan = plan_searches(None)
    observation = [s for s in plan if s.category == "Observation"]
    assert [s.relative_url("p1") for s in observation] == ["Observation?patient=Patient/p1"]
    record = PatientRecord()
    apply_prefetch(record, {"observation": searchset()}, "p1", plan)
    assert record.usable("Observation")
