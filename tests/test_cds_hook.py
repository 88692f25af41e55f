"""The patient-view hook: spec examples adapted, real-world deviations, prefetch states, cards, errors."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    SERVICE_PATH,
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
from flask.testing import FlaskClient

from fhir_trial.canonical import REGISTRY_URL
from fhir_trial.cds_hooks.discovery import PREFETCH_KEYS
from fhir_trial.cds_hooks.validation import first_error
from fhir_trial.config import Settings
from fhir_trial.record import CATEGORIES
from fhir_trial.searches import SEARCHES, plan_searches
from fhir_trial.terminology import load_terminology

SPEC = "fixtures/cds-hooks/hl7-cds-hooks/spec-examples-v2.0.1"
OTHER = "fixtures/cds-hooks/other-clients"


@pytest.fixture()
def settings_kw(tmp_path: Path, shared_dir: Path) -> dict[str, Any]:
    path = write_issuers(tmp_path / "issuers.json", [sandbox_issuer(shared_dir)])
    return {"cds_trusted_issuers_file": path}


@pytest.fixture()
def client(tmp_path: Path, settings_kw: dict[str, Any]) -> FlaskClient:
    return make_app(base_settings(tmp_path, **settings_kw)).test_client()


def post(client: FlaskClient, shared_dir: Path, body: Any, **kw: Any) -> Any:
    response = client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)), **kw)
    if response.status_code == 200:
        assert_valid("response", response.get_json())
    else:
        assert response.status_code != 500
    return response


def _load(shared_dir: Path, name: str) -> Any:
    return json.loads((shared_dir / name).read_text())


# ------------------------------------------------------------------------------------- discovery
def test_discovery_lists_the_service_with_generated_prefetch(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    document = response.get_json()
    assert_valid("discovery", document)
    (service,) = document["services"]
    assert service["id"] == "nct06010472-eligibility"
    assert service["hook"] == "patient-view"
    assert "NCT06010472" in service["title"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    planned = {s.key for s in plan_searches(load_terminology(Settings().resources_dir))}
    assert set(PREFETCH_KEYS) <= set(prefetch) == planned
    assert {spec.category for spec in SEARCHES} == set(CATEGORIES)
    for template in prefetch.values():
        assert "{{context.patientId}}" in template
    # Type-qualified: some servers (Medplum) match no bare id on a reference parameter.
    assert prefetch["condition"] == "Condition?patient=Patient/{{context.patientId}}"
    assert "minimi" in service["usageRequirements"] or "only" in service["usageRequirements"]


def test_observation_templates_ask_only_for_what_the_criteria_read(client: FlaskClient) -> None:
    prefetch = client.get("/cds-services").get_json()["services"][0]["prefetch"]
    terminology = load_terminology(Settings().resources_dir)
    observation = [t for t in prefetch.values() if t.startswith("Observation")]
    planned = [s for s in plan_searches(terminology) if s.spec.category == "Observation"]
    assert len(observation) == len(planned) >= 4  # long code lists are split over several keys
    assert all(
        t.startswith("Observation?patient=Patient/{{context.patientId}}&") for t in observation
    )
    assert not any(t == "Observation?patient=Patient/{{context.patientId}}" for t in observation)

    def tokens(template: str, param: str) -> set[str]:
        query = dict(part.split("=", 1) for part in template.split("?", 1)[1].split("&"))
        return set(query[param].split(",")) if param in query else set()

    # combo-code: the Observation's code or a component's code (values inside panels).
    codes = set().union(*(tokens(t, "combo-code") for t in observation))
    for valueset_id in ("hemoglobin", "neutrophils-absolute", "anti-dsdna", "sledai-2k-total"):
        assert {f"{s}|{c}" for s, c in terminology[valueset_id]} <= codes
    nyha = tokens(prefetch["observationNyha"], "value-concept")
    assert nyha == tokens(prefetch["observationNyhaParts"], "component-value-concept")
    for valueset_id in ("nyha-class-iii-iv", "nyha-class-i-ii"):
        assert {f"{s}|{c}" for s, c in terminology[valueset_id]} <= nyha
    # Vital signs and unrelated labs are not asked for: nothing outside the criteria's ValueSets.
    wanted = {
        f"{s}|{c}" for spec in SEARCHES for vid in spec.valuesets for s, c in terminology[vid]
    }
    assert codes | nyha <= wanted


def test_our_schemas_accept_the_spec_examples(shared_dir: Path) -> None:
    assert_valid("discovery", _load(shared_dir, f"{SPEC}/discovery-example_L130.json"))
    assert_valid("request", _load(shared_dir, f"{SPEC}/example_L198.json"))
    assert_valid("response", _load(shared_dir, f"{SPEC}/example_L735.json"))
    # The autolaunchable example omits the REQUIRED indicator: our schema notices.
    assert first_error("response", _load(shared_dir, f"{SPEC}/example_L793.json")) is not None
    assert_valid("response", _load(shared_dir, f"{SPEC}/http-response_L553.json"))
    for name in (
        "example-suggestion-accepted_L862.json",
        "example-overridden-guidance-with-overridereason_L926.json",
        "example-overridden-guidance-without-overridereason_L894.json",
    ):
        assert_valid("feedback", _load(shared_dir, f"{SPEC}/{name}"))


def test_presented_but_bad_jwt_on_discovery_is_401(client: FlaskClient) -> None:
    assert client.get("/cds-services", headers={"Authorization": "Bearer x.y.z"}).status_code == 401


# ------------------------------------------------------------------------------------- spec examples
def test_spec_example_request_with_its_own_fhir_server_is_refused(
    client: FlaskClient, shared_dir: Path
) -> None:
    body = _load(
        shared_dir, f"{SPEC}/example_L198.json"
    )  # fhirServer not on the sandbox's allowlist
    response = post(client, shared_dir, body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "fhir-server-not-allowed"


def test_spec_example_request_without_server_and_only_a_patient_is_decided_by_age(
    client: FlaskClient, shared_dir: Path
) -> None:
    body = _load(shared_dir, f"{SPEC}/example_L198.json")
    del body["fhirServer"], body["fhirAuthorization"]
    response = post(client, shared_dir, body)
    # The Patient alone decides (a male patient: the stub evaluator's ineligible), so no card
    # by default, not a 412 for want of the rest.
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_patient_and_every_other_key_null_answers_what_the_patient_decides(
    tmp_path: Path, settings_kw: dict[str, Any], shared_dir: Path
) -> None:
    from fhir_trial.evaluate import evaluate

    client = make_app(base_settings(tmp_path, **settings_kw), evaluator=evaluate).test_client()
    prefetch: dict[str, Any] = {key: None for key in full_prefetch()}
    prefetch["patient"] = {**patient(), "birthDate": "2009-06-15"}  # 17 on 2026-11-26
    response = post(client, shared_dir, hook_request(prefetch))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}  # ineligible (under 18): no card by default
    prefetch["patient"] = patient()  # an adult: nothing else known, so nothing concluded
    response = post(client, shared_dir, hook_request(prefetch))
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert "could not be completed" in card["summary"]
    assert "none of the patient's clinical data could be obtained" in card["detail"]


def test_spec_example_request_adapted_to_this_service(
    client: FlaskClient, shared_dir: Path
) -> None:
    body = _load(shared_dir, f"{SPEC}/example_L198.json")
    del body["fhirServer"], body["fhirAuthorization"]
    patient_id = body["context"]["patientId"]
    body["prefetch"] = full_prefetch(patient_id)
    response = post(client, shared_dir, body)
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    action = card["suggestions"][0]["actions"][0]
    assert action["resource"]["individual"] == {"reference": f"Patient/{patient_id}"}


def test_patient_id_given_as_a_reference_and_odd_hook_instance(
    client: FlaskClient, shared_dir: Path
) -> None:
    request = _load(shared_dir, f"{OTHER}/clinical-reasoning/ASLPCrdServiceRequest.json")
    body = hook_request(full_prefetch("123"), hookInstance=request["hookInstance"])
    body["context"] = {"patientId": request["context"]["patientId"]}  # "Patient/123"
    assert body["context"]["patientId"] == "Patient/123"
    response = post(client, shared_dir, body)
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert (
        card["suggestions"][0]["actions"][0]["resource"]["individual"]["reference"] == "Patient/123"
    )


@pytest.mark.parametrize(
    "name",
    [
        "clinical-reasoning/ASLPCrdServiceRequest.json",
        "davinci-crd-test-kit/order_sign_hook_request.json",
        "davinci-crd-test-kit/appointment_book_hook_request.json",
        "hapi-fhir/CdsServiceRequestJson.json",
    ],
)
def test_other_clients_requests_for_other_hooks_get_a_clear_400(
    client: FlaskClient, shared_dir: Path, name: str
) -> None:
    body = _load(shared_dir, f"{OTHER}/{name}")
    response = post(client, shared_dir, body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] in {"wrong-hook", "invalid-request", "fhir-server-not-allowed"}
    assert error["message"]


# ------------------------------------------------------------------------------------- cards
def test_card_lists_inclusions_met_apart_from_exclusions_ruled_out() -> None:
    """An exclusion that does not apply is never listed under a "met" heading (met = applies)."""
    from fhir_trial.cds_hooks.cards import eligibility_card
    from fhir_trial.report import CriterionResult, EligibilityReport

    def result(cid: str, kind: str, status: str) -> CriterionResult:
        return CriterionResult(
            id=cid,
            kind=kind,
            ref="x",
            status=status,
            reason=f"reason {cid}",  # type: ignore[arg-type]
        )

    report = EligibilityReport(
        study="NCT06010472",
        patient="Patient/p",
        as_of="2026-11-26",
        verdict="potentially-eligible",
        criteria=(
            result("inc-age", "inclusion", "met"),
            result("inc-sledai", "inclusion", "unknown"),
            result("exc-immunodeficiency", "exclusion", "not-met"),
            result("exc-malignancy", "exclusion", "not-met"),
        ),
    )
    card = eligibility_card(report, "p", None, None)
    detail = card["detail"]
    assert "1 of 2 inclusions met, 2 of 2 exclusions ruled out" in detail
    # Only the open item is listed; what is settled is counted (the worksheet lists it).
    assert "reason inc-sledai" in detail
    assert "reason inc-age" not in detail and "reason exc-malignancy" not in detail
    assert "the full screening report" in detail  # no worksheet link on this card
    assert "1 inclusion met, 2 exclusions ruled out, 1 to check" in card["summary"]
    assert len(card["summary"]) < 140


def test_card_detail_is_short_enough_to_read_at_chart_open() -> None:
    """Twenty open items: five are listed, the rest counted; the worksheet has them all."""
    from fhir_trial.cds_hooks.cards import eligibility_card
    from fhir_trial.criteria.catalog import CRITERIA
    from fhir_trial.report import CriterionResult, EligibilityReport

    specs = [c for c in CRITERIA if c.part_of is None][:20]
    report = EligibilityReport(
        study="NCT06010472",
        patient="Patient/p",
        as_of="2026-11-26",
        verdict="potentially-eligible",
        criteria=tuple(
            CriterionResult(
                id=c.id,
                kind=c.kind,
                ref="x",
                status="unknown",
                reason=f"reason {c.id}",
                evidence=tuple(f"Observation/o{i}" for i in range(9)),
            )
            for c in specs
        ),
        warnings=tuple(f"warning {i}" for i in range(7)),
    )
    card = eligibility_card(report, "p", "https://worksheet.example/x", None)
    detail = card["detail"]
    items = [line for line in detail.splitlines() if line.startswith("- **")]
    assert len(items) == 5 and "- and 15 more" in detail
    assert "- and 5 more" in detail  # warnings beyond the first two
    assert all("and 6 more)" in line for line in items)  # evidence: three shown
    assert "20 unknown (data missing)" in detail
    assert "screening worksheet (link below)" in detail
    assert len(detail.splitlines()) <= 20


def test_card_for_a_potentially_eligible_patient(client: FlaskClient, shared_dir: Path) -> None:
    response = post(client, shared_dir, hook_request(full_prefetch()))
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert len(card["uuid"]) == 36
    assert "NCT06010472" in card["summary"] and len(card["summary"]) < 140
    assert card["indicator"] == "info"
    detail = card["detail"]
    assert "2 of 3 inclusions met" not in detail or "**Criteria:**" in detail
    assert "**Criteria:**" in detail and "1 to review" in detail
    assert "**Open items**" in detail
    assert "screening worksheet (link below)" in detail
    assert card["source"]["url"] == REGISTRY_URL
    assert card["source"]["label"] and card["source"]["topic"]["code"] == "NCT06010472"
    # No SMART registration for this EHR: the read-only page is the (absolute) fallback.
    absolute, page = card["links"]
    assert absolute == {"label": absolute["label"], "url": REGISTRY_URL, "type": "absolute"}
    assert page["type"] == "absolute" and page["url"].startswith("http://localhost/cds-services/")
    assert "appContext" not in page
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    resource = suggestion["actions"][0]["resource"]
    assert resource["resourceType"] == "ResearchSubject" and resource["status"] == "candidate"
    assert resource["study"]["identifier"]["value"] == "NCT06010472"
    assert all(reason["display"] for reason in card["overrideReasons"])


def test_unknown_criteria_show_what_would_decide_them(
    client: FlaskClient, shared_dir: Path
) -> None:
    prefetch = full_prefetch()
    prefetch["condition"] = searchset()
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    assert "1 unknown (data missing)" in card["detail"]
    assert "would decide it: a Condition coded as SLE" in card["detail"]


def test_no_card_for_an_ineligible_patient_by_default(
    client: FlaskClient, shared_dir: Path
) -> None:
    response = post(client, shared_dir, hook_request(full_prefetch(gender="male")))
    assert response.get_json() == {"cards": []}


def test_ineligible_card_when_configured(
    tmp_path: Path, settings_kw: dict[str, Any], shared_dir: Path
) -> None:
    client = make_app(
        base_settings(tmp_path, cds_cards_for_ineligible=True, **settings_kw)
    ).test_client()
    (card,) = post(client, shared_dir, hook_request(full_prefetch(gender="male"))).get_json()[
        "cards"
    ]
    assert card["summary"].startswith("Not eligible") and "suggestions" not in card
    assert card["summary"].endswith(": 1 criterion rules the patient out")  # not "1 criteria"


def test_every_card_has_a_fresh_uuid(client: FlaskClient, shared_dir: Path) -> None:
    uuids = {
        post(client, shared_dir, hook_request(full_prefetch())).get_json()["cards"][0]["uuid"]
        for _ in range(3)
    }
    assert len(uuids) == 3


# ------------------------------------------------------------------------------------- prefetch states
def test_prefetch_null_makes_the_category_unknown_not_absent(
    client: FlaskClient, shared_dir: Path
) -> None:
    prefetch = full_prefetch()
    prefetch["condition"] = None
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    assert "Condition could not be obtained" in card["detail"]
    assert "(null)" in card["detail"]
    assert "1 unknown (data missing)" in card["detail"]


def test_prefetch_operation_outcome_is_a_failure_with_its_reason(
    client: FlaskClient, shared_dir: Path
) -> None:
    prefetch = full_prefetch()
    prefetch["observation"] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "timeout", "diagnostics": "upstream lab system down"}
        ],
    }
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    assert "Observation could not be obtained" in card["detail"]
    assert "upstream lab system down" in card["detail"]


@pytest.mark.parametrize(
    ("bundle", "says"),
    [
        ({"resourceType": "Bundle", "type": "searchset", "entry": 2.5}, "'entry' is not a list"),
        ({"resourceType": "Bundle", "type": "searchset", "link": True}, "'link' is not a list"),
        (
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": "x"}, 7]},
            "2 entries are not a FHIR resource",
        ),
    ],
)
def test_prefetch_bundle_that_cannot_be_read_makes_its_category_unknown(
    client: FlaskClient, shared_dir: Path, bundle: dict[str, Any], says: str
) -> None:
    # Reading around a broken entry would make absence look meaningful (an exclusion unseen).
    prefetch = full_prefetch()
    prefetch["condition"] = bundle
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    assert "Condition could not be obtained" in card["detail"]
    assert f"prefetch key 'condition' held a Bundle that cannot be read: {says}" in card["detail"]


def test_prefetch_operation_outcome_with_damaged_issues_still_fails_its_category(
    client: FlaskClient, shared_dir: Path
) -> None:
    prefetch = full_prefetch()
    prefetch["observation"] = {"resourceType": "OperationOutcome", "issue": 5}
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    assert "Observation could not be obtained" in card["detail"]
    assert "no reason given" in card["detail"]


def test_partial_prefetch_without_fhir_server_evaluates_what_is_there(
    client: FlaskClient, shared_dir: Path
) -> None:
    prefetch = {"patient": patient(), "condition": searchset(sle_condition())}
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    # Categories missing for the same reason are named together, in one line of the card.
    problems = [line for line in card["detail"].splitlines() if "could not be obtained" in line]
    assert len(problems) == 1, problems
    assert "Observation" in problems[0] and "AllergyIntolerance" in problems[0]
    assert problems[0].endswith("not in the prefetch, and no fhirServer was given")


def test_prefetch_absent_and_no_fhir_server_is_412(client: FlaskClient, shared_dir: Path) -> None:
    response = post(client, shared_dir, hook_request(None))
    assert response.status_code == 412
    assert response.get_json()["error"] == "data-unavailable"


def test_prefetch_with_null_patient_is_412(client: FlaskClient, shared_dir: Path) -> None:
    prefetch = full_prefetch()
    prefetch["patient"] = None
    assert post(client, shared_dir, hook_request(prefetch)).status_code == 412


def test_resources_of_another_patient_are_ignored(client: FlaskClient, shared_dir: Path) -> None:
    prefetch = full_prefetch()
    prefetch["condition"] = searchset(sle_condition("c9", patient_id="someone-else"))
    (card,) = post(client, shared_dir, hook_request(prefetch)).get_json()["cards"]
    assert "Condition/c9" not in card["detail"]
    assert "belong to another patient" in card["detail"]


def test_prefetched_patient_must_be_the_patient_in_context(
    client: FlaskClient, shared_dir: Path
) -> None:
    prefetch = full_prefetch()
    prefetch["patient"] = patient("someone-else")
    assert post(client, shared_dir, hook_request(prefetch)).status_code == 412


def test_prefetch_templates_match_discovery(client: FlaskClient) -> None:
    prefetch = client.get("/cds-services").get_json()["services"][0]["prefetch"]
    assert set(full_prefetch()) == set(prefetch)


# ------------------------------------------------------------------------------------- malformed
@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b: b.pop("hookInstance"), "invalid-request"),
        (lambda b: b.pop("context"), "invalid-request"),
        (lambda b: b["context"].pop("patientId"), "invalid-request"),
        (lambda b: b["context"].update(patientId="../../etc"), "bad-patient-id"),
        (lambda b: b["context"].update(patientId=""), "invalid-request"),
        (lambda b: b.update(hook="order-sign"), "wrong-hook"),
        (
            lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer"}),
            "invalid-request",
        ),
        (lambda b: b.update(fhirServer="ftp://x"), "invalid-request"),
        (lambda b: b.update(prefetch={"patient": "Patient/1"}), "invalid-request"),
        (lambda b: b.update(prefetch=[]), "invalid-request"),
    ],
    ids=[
        "no hookInstance",
        "no context",
        "no patientId",
        "bad patientId",
        "empty patientId",
        "other hook",
        "fhirAuthorization without fhirServer",
        "ftp server",
        "prefetch string",
        "prefetch array",
    ],
)
def test_malformed_requests_get_400_with_a_message(
    client: FlaskClient, shared_dir: Path, mutate: Any, code: str
) -> None:
    body = hook_request(full_prefetch())
    mutate(body)
    response = post(client, shared_dir, body)
    assert response.status_code == 400
    assert response.get_json()["error"] == code
    assert response.get_json()["message"]


def test_not_json_bodies(client: FlaskClient, shared_dir: Path) -> None:
    headers = bearer(sandbox_token(shared_dir))
    r1 = client.post(SERVICE_PATH, data="{oops", headers=headers, content_type="application/json")
    r2 = client.post(
        SERVICE_PATH,
        data="hello",
        headers=bearer(sandbox_token(shared_dir)),
        content_type="text/plain",
    )
    r3 = client.post(
        SERVICE_PATH,
        data="[1]",
        headers=bearer(sandbox_token(shared_dir)),
        content_type="application/json",
    )
    assert [r.status_code for r in (r1, r2, r3)] == [400, 400, 400]
    assert r3.get_json()["error"] == "not-an-object"


def test_request_size_limit(tmp_path: Path, settings_kw: dict[str, Any], shared_dir: Path) -> None:
    client = make_app(base_settings(tmp_path, max_request_bytes=2000, **settings_kw)).test_client()
    body = hook_request(full_prefetch())
    body["extension"] = {"padding": "x" * 5000}
    response = post(client, shared_dir, body)
    assert response.status_code == 413
    assert response.get_json()["error"] == "too-large"


def test_unknown_service_is_404(client: FlaskClient, shared_dir: Path) -> None:
    response = client.post("/cds-services/nope", json=hook_request(full_prefetch()))
    assert response.status_code == 404
    assert response.get_json()["error"] == "unknown-service"


def test_auth_is_checked_before_the_body_is_read(client: FlaskClient) -> None:
    assert (
        client.post(SERVICE_PATH, data="{oops", content_type="application/json").status_code == 401
    )


# ------------------------------------------------------------------------------------- robustness
def test_an_evaluator_crash_is_never_a_500(
    tmp_path: Path, settings_kw: dict[str, Any], shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(record: Any, settings: Any) -> Any:
        raise RuntimeError("bug")

    client = make_app(base_settings(tmp_path, **settings_kw), evaluator=boom).test_client()
    with caplog.at_level(logging.ERROR):
        response = post(client, shared_dir, hook_request(full_prefetch()))
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert "could not be completed" in card["summary"]
    assert "RuntimeError" in caplog.text


def test_cors_preflight_on_every_cds_route(client: FlaskClient) -> None:
    for path in ("/cds-services", SERVICE_PATH, f"{SERVICE_PATH}/feedback"):
        response = client.options(
            path,
            headers={
                "Origin": "https://ehr.example.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_with_an_origin_allowlist(tmp_path: Path, settings_kw: dict[str, Any]) -> None:
    settings = base_settings(tmp_path, cds_cors_origins=("https://ehr.example.org",), **settings_kw)
    client = make_app(settings).test_client()
    ok = client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    other = client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Access-Control-Allow-Origin" not in other.headers


def test_with_the_real_evaluator_through_create_app(
    tmp_path: Path, settings_kw: dict[str, Any], shared_dir: Path
) -> None:
    from fhir_trial.app import create_app

    client = create_app(base_settings(tmp_path, **settings_kw)).test_client()
    assert client.get("/healthz").status_code == 200
    prefetch = copy.deepcopy(full_prefetch())
    response = post(client, shared_dir, hook_request(prefetch))
    assert response.status_code == 200
    for card in response.get_json()["cards"]:
        assert "NCT06010472" in card["summary"]
    male = post(client, shared_dir, hook_request(full_prefetch(gender="male")))
    assert male.status_code == 200
