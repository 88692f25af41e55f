"""Requests damaged at random in their structure: never a 5xx, never an unexpected error.

Each case takes a valid request (the first demo patient, as a hook prefetch, a Bundle, NDJSON or
a $apply Parameters), damages it with a seeded random walk (drops keys and list items, puts
values of the wrong type where data belongs) and sends it. Whatever the damage, the answer must be
a 2xx or a 4xx with its error body, and nothing may reach the app's "failed unexpectedly" handler
(which answers 503 and logs an ERROR). A hook answer of 200 must still match the response schema.
The same damage applied to every demo patient must be read by the criteria themselves: none may
fall back to the evaluator's last line of defence (a whole criterion set to needs-review because
one element had the wrong type). The seeds are fixed so a failure can be replayed; the damage menu holds what real exports get
wrong: numbers for strings, objects for lists, impossible dates, empty values.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import assert_valid, base_settings
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fhir_trial.app import create_app
from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.cds_hooks.discovery import SERVICE_ID
from fhir_trial.demo import demo_bundle_paths
from fhir_trial.errors import FhirTrialError
from fhir_trial.evaluate import evaluate
from fhir_trial.searches import SEARCHES
from fhir_trial.sources.bundle import record_from_bundle

CASES_PER_ROUTE = 60
DAMAGE_RATES = (0.005, 0.03)
WRONG_VALUES: list[Any] = [
    None,
    "",
    "x",
    0,
    -1,
    2.5,
    1e308,
    True,
    [],
    {},
    [None],
    {"a": 1},
    "2024-13-45",
    "2024",
    "2024-02-30T25:00:00Z",
    "Patient/someone-else",
    "#missing",
    "9" * 300,
    [{"system": 5, "code": None}],
    {"coding": "55464009"},
    {"value": "abc", "unit": 5},
    {"start": "2030-01-01", "end": "1990-01-01"},
    10**30,
]


def damage(value: Any, rng: random.Random, rate: float) -> Any:
    """A copy of ``value`` with random structural damage at about ``rate`` per node."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < rate / 2:
                continue
            out[key] = (
                copy.deepcopy(rng.choice(WRONG_VALUES))
                if roll < rate * 1.5
                else damage(item, rng, rate)
            )
        return out
    if isinstance(value, list):
        items = [damage(item, rng, rate) for item in value if rng.random() > rate / 2]
        if rng.random() < rate:
            items.append(copy.deepcopy(rng.choice(WRONG_VALUES)))
        return items
    if rng.random() < rate:
        return copy.deepcopy(rng.choice(WRONG_VALUES))
    return value


@functools.cache  # read once: damage() copies what it changes, so sharing is safe
def _demo_resources() -> list[dict[str, Any]]:
    paths = demo_bundle_paths()
    if not paths:
        pytest.fail("fhir_trial/demo/*.json is empty")
    bundle = json.loads(paths[0].read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def _hook_body(resources: list[dict[str, Any]]) -> dict[str, Any]:
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    prefetch: dict[str, Any] = {}
    for spec in SEARCHES:
        if spec.resource_type == "Patient":
            prefetch[spec.key] = patient
            continue
        matches = [r for r in resources if r["resourceType"] == spec.resource_type]
        prefetch[spec.key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in matches],
        }
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient["id"]},
        "prefetch": prefetch,
    }


def _collection(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


Sender = Callable[[FlaskClient, random.Random, float], TestResponse]
HOOK = f"/cds-services/{SERVICE_ID}"
SCREEN = f"/fhir/ResearchStudy/{STUDY_RESOURCE_ID}/$screen-population"
APPLY = f"/fhir/PlanDefinition/{STUDY_RESOURCE_ID}-eligibility/$apply"


def send_hook(client: FlaskClient, rng: random.Random, rate: float) -> TestResponse:
    body = damage(_hook_body(_demo_resources()), rng, rate)
    body["hookInstance"] = str(uuid.uuid4())  # replays are refused before the body is read
    response = client.post(HOOK, json=body)
    if response.status_code == 200:
        assert_valid("response", response.get_json())
    return response


def send_feedback(client: FlaskClient, rng: random.Random, rate: float) -> TestResponse:
    feedback = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": rng.choice(["accepted", "overridden"]),
                "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
                "overrideReason": {"reason": {"code": "x", "system": "y"}, "userComment": "c"},
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
            }
        ]
    }
    return client.post(f"{HOOK}/feedback", json=damage(feedback, rng, rate))


def send_bundle(client: FlaskClient, rng: random.Random, rate: float) -> TestResponse:
    body = damage(_collection(_demo_resources()), rng, rate)
    return client.post(SCREEN, json=body, content_type="application/fhir+json")


def send_ndjson(client: FlaskClient, rng: random.Random, rate: float) -> TestResponse:
    lines = "\n".join(json.dumps(damage(r, rng, rate)) for r in _demo_resources())
    return client.post(SCREEN, data=lines, content_type="application/fhir+ndjson")


def send_apply(client: FlaskClient, rng: random.Random, rate: float) -> TestResponse:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "data", "resource": _collection(_demo_resources())}],
    }
    return client.post(APPLY, json=damage(body, rng, rate), content_type="application/fhir+json")


@pytest.mark.parametrize(
    "send",
    [send_hook, send_feedback, send_bundle, send_ndjson, send_apply],
    ids=["hook", "feedback", "population-bundle", "population-ndjson", "apply"],
)
def test_damaged_requests_get_an_answer_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, send: Sender
) -> None:
    # Development mode: no JWT, so the damaged body reaches the screening itself.
    client = create_app(base_settings(tmp_path, cds_development_mode=True)).test_client()
    statuses: dict[int, int] = {}
    for rate in DAMAGE_RATES:
        for seed in range(CASES_PER_ROUTE // len(DAMAGE_RATES)):
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                response = send(client, random.Random(seed), rate)
            where = f"seed {seed}, rate {rate}"
            assert response.status_code < 500, f"{where}: {response.get_data(as_text=True)[:300]}"
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], where
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    # The damage must leave some requests whole enough to be screened, or nothing was tested.
    assert statuses.get(200, 0) >= CASES_PER_ROUTE // 4, statuses


def test_damaged_records_are_read_by_each_criterion_not_its_fallback(tmp_path: Path) -> None:
    settings = base_settings(tmp_path)
    paths = demo_bundle_paths()
    assert paths
    screened = 0
    for path in paths:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for rate in DAMAGE_RATES:
            for seed in range(20):
                damaged = damage(bundle, random.Random(seed), rate)
                try:
                    record = record_from_bundle(damaged)
                except FhirTrialError:
                    continue  # refused as a whole (no Patient left, say): a clear error
                report = evaluate(record, settings)
                screened += 1
                fallen = [r.id for r in report.criteria if "could not read (" in r.reason]
                assert not fallen, f"{path.name}, seed {seed}, rate {rate}: {fallen}"
    assert screened >= len(paths) * 20
