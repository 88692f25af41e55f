"""The hand-written hook request checks agree with request.schema.json, case by case."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from fhir_trial.cds_hooks.validation import first_error, request_problem

Body = dict[str, Any]


def _base() -> Body:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": "1288992"},
    }


def _with_server(**auth: Any) -> Body:
    body = _base()
    body["fhirServer"] = "https://ehr.example.org/fhir"
    body["fhirAuthorization"] = {"access_token": "abc", "token_type": "Bearer", **auth}
    return body


def _set(path: str, value: Any) -> Callable[[Body], None]:
    def change(body: Body) -> None:
        *parents, last = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        target[last] = value

    return change


def _drop(path: str) -> Callable[[Body], None]:
    def change(body: Body) -> None:
        *parents, last = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        del target[last]

    return change


VALID: dict[str, Callable[[Body], None]] = {
    "minimal": lambda b: None,
    "prefetch with resources and null": _set(
        "prefetch",
        {"patient": {"resourceType": "Patient", "id": "1"}, "observation": None, "x": None},
    ),
    "empty prefetch": _set("prefetch", {}),
    "extension object": _set("extension", {"com.example.flag": True}),
    "unknown top-level member": _set("somethingElse", [1, 2]),
    "other hook without patientId": lambda b: b.update(hook="order-sign", context={}),
    "hookInstance of 256": _set("hookInstance", "h" * 256),
    "hookInstance of 256 non-ASCII": _set("hookInstance", "é" * 256),
    "patientId of 512": _set("context.patientId", "p" * 512),
    "patientId as a reference": _set("context.patientId", "Patient/123"),
    "no userId": _drop("context.userId"),
    "encounterId": _set("context.encounterId", "Encounter/1"),
    "plain http fhirServer": _set("fhirServer", "http://localhost:8080/fhir"),
    "upper-case scheme": _set("fhirServer", "HTTPS://EHR.EXAMPLE.ORG/fhir"),
}

VALID_WITH_SERVER: dict[str, dict[str, Any]] = {
    "full authorization": {
        "expires_in": 300,
        "scope": "user/Patient.read",
        "subject": "cds-service",
        "patient": "123",
    },
    "lower-case bearer": {"token_type": "bearer"},
    "expires_in 0": {"expires_in": 0},
    "fractional expires_in": {"expires_in": 3.5},
}

INVALID: dict[str, Callable[[Body], None]] = {
    "no hook": _drop("hook"),
    "no hookInstance": _drop("hookInstance"),
    "no context": _drop("context"),
    "empty hook": _set("hook", ""),
    "numeric hook": _set("hook", 5),
    "empty hookInstance": _set("hookInstance", ""),
    "hookInstance of 257": _set("hookInstance", "h" * 257),
    "numeric hookInstance": _set("hookInstance", 12),
    "context a list": _set("context", []),
    "no patientId": _drop("context.patientId"),
    "empty patientId": _set("context.patientId", ""),
    "patientId of 513": _set("context.patientId", "p" * 513),
    "numeric patientId": _set("context.patientId", 123),
    "numeric userId": _set("context.userId", 5),
    "null encounterId": _set("context.encounterId", None),
    "ftp fhirServer": _set("fhirServer", "ftp://ehr.example.org/fhir"),
    "fhirServer with a space": _set("fhirServer", "https://ehr.example.org/my fhir"),
    "fhirServer a number": _set("fhirServer", 8080),
    "fhirServer without host": _set("fhirServer", "https://"),
    "authorization without fhirServer": _set(
        "fhirAuthorization", {"access_token": "abc", "token_type": "Bearer"}
    ),
    "prefetch a list": _set("prefetch", []),
    "prefetch value a string": _set("prefetch", {"patient": "Patient/1"}),
    "prefetch value without resourceType": _set("prefetch", {"patient": {"id": "1"}}),
    "prefetch value with empty resourceType": _set("prefetch", {"patient": {"resourceType": ""}}),
    "prefetch value with numeric resourceType": _set("prefetch", {"x": {"resourceType": 1}}),
    "prefetch value a list": _set("prefetch", {"x": [{"resourceType": "Patient"}]}),
    "extension a list": _set("extension", []),
}

INVALID_WITH_SERVER: dict[str, dict[str, Any]] = {
    "no access_token": {"access_token": None},
    "empty access_token": {"access_token": ""},
    "numeric access_token": {"access_token": 7},
    "MAC token_type": {"token_type": "MAC"},
    "no token_type": {"token_type": None},
    "negative expires_in": {"expires_in": -1},
    "boolean expires_in": {"expires_in": True},
    "string expires_in": {"expires_in": "300"},
    "numeric scope": {"scope": 1},
    "list subject": {"subject": ["a"]},
    "numeric patient": {"patient": 1},
}


def _server_body(changes: dict[str, Any]) -> Body:
    body = _with_server(**{k: v for k, v in changes.items() if v is not None})
    for name, value in changes.items():
        if value is None:
            del body["fhirAuthorization"][name]
    return body


def _cases() -> list[Any]:
    cases: list[Any] = []
    for name, change in VALID.items():
        body = copy.deepcopy(_base())
        change(body)
        cases.append(pytest.param(body, True, id=f"valid: {name}"))
    for name, changes in VALID_WITH_SERVER.items():
        cases.append(pytest.param(_server_body(changes), True, id=f"valid: {name}"))
    for name, change in INVALID.items():
        body = copy.deepcopy(_base())
        change(body)
        cases.append(pytest.param(body, False, id=f"invalid: {name}"))
    for name, changes in INVALID_WITH_SERVER.items():
        cases.append(pytest.param(_server_body(changes), False, id=f"invalid: {name}"))
    cases.append(pytest.param(_base() | {"fhirAuthorization": "x"}, False, id="invalid: auth str"))
    return cases


@pytest.mark.parametrize(("body", "valid"), _cases())
def test_hand_written_checks_agree_with_the_schema(body: Body, valid: bool) -> None:
    by_schema = first_error("request", body)
    by_hand = request_problem(body)
    assert (by_schema is None) is valid, by_schema
    assert (by_hand is None) is valid, by_hand


@pytest.mark.parametrize(
    "server",
    ["https://ehr.example.org/fhir\n", "https://ehr.example.org/\tfhir", "http://x", "https://é"],
)
def test_borderline_fhir_servers_are_judged_alike(server: str) -> None:
    body = _base() | {"fhirServer": server}
    assert (request_problem(body) is None) == (first_error("request", body) is None)
