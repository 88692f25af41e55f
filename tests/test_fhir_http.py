"""FhirHttp: headers, timeouts, retries, Retry-After, error mapping, origin checks.

Most tests inject a stub transport (no network); the last ones talk to the fake FHIR server
over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
from fake_fhir_server import FakeFhirServer
from requests.structures import CaseInsensitiveDict

from fhir_trial.config import Settings
from fhir_trial.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFhirResponseError,
    ServerResponseError,
    ServerUnreachableError,
)
from fhir_trial.fhir_http import FhirHttp, first_diagnostics, parse_retry_after

BASE = "https://fhir.test/r4"
TOKEN = "tok-3f9a-very-secret"
BUNDLE = {"resourceType": "Bundle", "type": "searchset", "total": 0}


def make_response(
    status: int,
    body: Any = None,
    *,
    content_type: str = "application/fhir+json",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """A requests.Response as the transport would return it."""
    response = requests.Response()
    response.status_code = status
    response.reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity"}.get(status, "")
    if body is None:
        response._content = b""
    elif isinstance(body, str | bytes):
        response._content = body.encode() if isinstance(body, str) else body
    else:
        response._content = json.dumps(body).encode()
    response._content_consumed = True  # type: ignore[attr-defined]
    response.headers = CaseInsensitiveDict({"Content-Type": content_type, **(headers or {})})
    return response


class StubSession:
    """Answers requests from a script; records every call."""

    def __init__(self, *answers: requests.Response | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        return None


def client(
    *answers: requests.Response | Exception, token: str | None = TOKEN, **settings: Any
) -> tuple[FhirHttp, StubSession, list[float]]:
    stub = StubSession(*answers)
    slept: list[float] = []
    http = FhirHttp(
        BASE,
        token=token,
        settings=Settings(**settings),
        session=cast(requests.Session, stub),
        sleep=slept.append,
    )
    return http, stub, slept


# --- requests as sent ----------------------------------------------------------------------------
def test_get_sends_fhir_accept_bearer_token_and_settings_timeouts() -> None:
    http, stub, _ = client(make_response(200, BUNDLE), connect_timeout_s=2.5, read_timeout_s=7.0)
    body = http.get_json("Observation", {"patient": "p1"})
    assert body == BUNDLE
    (call,) = stub.calls
    assert call["method"] == "GET"
    assert call["url"] == f"{BASE}/Observation"
    assert call["params"] == {"patient": "p1"}
    assert call["headers"]["Accept"] == "application/fhir+json"
    assert call["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert call["timeout"] == (2.5, 7.0)


def test_no_token_means_no_authorization_header() -> None:
    http, stub, _ = client(make_response(200, BUNDLE), token=None)
    http.request("GET", "/Patient")
    assert "Authorization" not in stub.calls[0]["headers"]


def test_post_sends_fhir_json_body_to_the_base() -> None:
    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    http, stub, _ = client(make_response(200, answer))
    response = http.request("POST", "", json={"resourceType": "Bundle", "type": "transaction"})
    assert response.status == 200
    assert response.resource_type == "Bundle"
    call = stub.calls[0]
    assert call["url"] == BASE
    assert call["headers"]["Content-Type"].startswith("application/fhir+json")
    assert json.loads(call["data"]) == {"resourceType": "Bundle", "type": "transaction"}


def test_empty_body_is_an_empty_resource() -> None:
    http, _, _ = client(make_response(204, None))
    assert http.request("DELETE", "Basic/x").body == {}


def test_repr_hides_the_token() -> None:
    http, _, _ = client()
    assert TOKEN not in repr(http)


# --- retries -------------------------------------------------------------------------------------
def test_5xx_is_retried_with_exponential_backoff() -> None:
    http, stub, slept = client(
        make_response(503, None), make_response(502, None), make_response(200, BUNDLE)
    )
    assert http.get_json("Observation") == BUNDLE
    assert len(stub.calls) == 3
    assert slept == [0.5, 1.0]


def test_retries_stop_after_max_retries() -> None:
    answers = [make_response(500, None) for _ in range(3)]
    http, stub, slept = client(*answers, max_retries=2)
    with pytest.raises(ServerResponseError) as caught:
        http.get_json("Observation")
    assert caught.value.status == 500
    assert caught.value.exit_code == 5
    assert len(stub.calls) == 3
    assert len(slept) == 2


def test_429_honours_retry_after_seconds() -> None:
    http, _, slept = client(
        make_response(429, None, headers={"Retry-After": "7"}), make_response(200, BUNDLE)
    )
    http.get_json("Observation")
    assert slept == [7.0]


def test_429_retry_after_http_date_is_honoured_and_capped() -> None:
    soon = email.utils.formatdate(time.time() + 12, usegmt=True)
    late = email.utils.formatdate(time.time() + 3600, usegmt=True)
    http, _, slept = client(
        make_response(429, None, headers={"Retry-After": soon}),
        make_response(429, None, headers={"Retry-After": late}),
        make_response(200, BUNDLE),
    )
    http.get_json("Observation")
    assert 9.0 <= slept[0] <= 12.0
    assert slept[1] == http.max_retry_after_s


def test_4xx_other_than_429_is_not_retried() -> None:
    http, stub, slept = client(make_response(400, None))
    with pytest.raises(ServerResponseError):
        http.get_json("Observation")
    assert len(stub.calls) == 1
    assert slept == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 0 ", 0.0), ("", None), (None, None), ("soon", None), ("-1", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_past_date_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# --- error mapping -------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusals(status: int) -> None:
    http, _, _ = client(make_response(status, None))
    with pytest.raises(AuthenticationError) as caught:
        http.get_json("Patient/p1")
    assert caught.value.status == status
    assert caught.value.exit_code == 4
    assert TOKEN not in caught.value.message


def test_error_carries_the_operation_outcome_and_its_first_diagnostics() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Unknown\n  code   system"},
            {"severity": "error", "code": "invalid", "diagnostics": "second"},
        ],
    }
    http, _, _ = client(make_response(422, outcome))
    with pytest.raises(ServerResponseError) as caught:
        http.request("POST", "", json={"resourceType": "Bundle"})
    error = caught.value
    assert error.status == 422
    assert error.outcome == outcome
    assert "Unknown code system" in error.message
    assert "second" not in error.message
    assert "\n" not in error.message


def test_error_page_that_is_not_fhir_is_still_a_server_response_error() -> None:
    http, _, _ = client(make_response(404, "<html>Not here</html>", content_type="text/html"))
    with pytest.raises(ServerResponseError) as caught:
        http.get_json("metadata")
    assert caught.value.status == 404
    assert caught.value.outcome is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html><body>Please log in</body></html>", "text/html"),
        ({"hello": "world"}, "application/json"),
        ([1, 2, 3], "application/json"),
    ],
)
def test_2xx_that_is_not_fhir_json(body: Any, content_type: str) -> None:
    http, _, _ = client(make_response(200, body, content_type=content_type))
    with pytest.raises(NotFhirResponseError) as caught:
        http.get_json("metadata")
    assert caught.value.exit_code == 5


@pytest.mark.parametrize(
    "failure",
    [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ConnectTimeout("slow"),
        requests.exceptions.ReadTimeout("slow"),
    ],
)
def test_transport_failures_are_unreachable(failure: Exception) -> None:
    http, _, _ = client(failure)
    with pytest.raises(ServerUnreachableError) as caught:
        http.get_json("metadata")
    assert caught.value.exit_code == 3
    assert "fhir.test" in caught.value.message


def test_messages_name_no_ids_no_query_and_no_token() -> None:
    http, _, _ = client(make_response(500, None), max_retries=0)
    with pytest.raises(ServerResponseError) as caught:
        http.get_json("Patient/mrn-0042", {"name": "Smith"})
    message = caught.value.message
    assert "GET Patient" in message
    assert "mrn-0042" not in message
    assert "Smith" not in message
    assert TOKEN not in message
    assert "\n" not in message


def test_first_diagnostics_falls_back_to_details_text() -> None:
    outcome = {"issue": [{"severity": "error", "code": "x", "details": {"text": "why"}}]}
    assert first_diagnostics(outcome) == "why"
    assert first_diagnostics({"issue": []}) is None


# --- URLs and origins ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "fhir.test/r4", "ftp://fhir.test/r4", "http://"])
def test_unusable_base_url(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        FhirHttp(bad)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://fhir.test/r4/Observation?page=2", True),
        ("https://FHIR.test:443/r4/Observation", True),
        ("https://fhir.test/other/place", True),
        ("http://fhir.test/r4/Observation", False),
        ("https://fhir.test:8443/r4/Observation", False),
        ("https://evil.test/r4/Observation", False),
        ("https://fhir.test.evil.test/r4", False),
    ],
)
def test_same_origin(url: str, same: bool) -> None:
    http, _, _ = client()
    assert http.same_origin(url) is same


def test_absolute_url_elsewhere_is_refused_without_contact() -> None:
    http, stub, _ = client(make_response(200, BUNDLE))
    with pytest.raises(ServerResponseError):
        http.get_json("https://evil.test/r4/Observation?page=2")
    assert stub.calls == []


def test_absolute_url_on_the_origin_is_followed() -> None:
    http, stub, _ = client(make_response(200, BUNDLE))
    http.get_json("https://fhir.test/r4/Observation?page=2")
    assert stub.calls[0]["url"] == "https://fhir.test/r4/Observation?page=2"


# --- against a real local server -----------------------------------------------------------------
@pytest.fixture()
def server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer(token=TOKEN) as running:
        running.add({"resourceType": "Patient", "id": "p1", "active": True})
        yield running


def real_client(server: FakeFhirServer, token: str | None = TOKEN, **settings: Any) -> FhirHttp:
    return FhirHttp(
        server.base_url, token=token, settings=Settings(**settings), sleep=lambda _: None
    )


def test_real_read_with_token(server: FakeFhirServer) -> None:
    with real_client(server) as http:
        response = http.request("GET", "Patient/p1")
    assert response.body["id"] == "p1"
    assert response.headers["ETag"] == 'W/"1"'
    assert server.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_real_wrong_token_is_an_authentication_error(server: FakeFhirServer) -> None:
    with real_client(server, token="wrong") as http, pytest.raises(AuthenticationError):
        http.get_json("Patient/p1")


def test_real_throttle_then_success(server: FakeFhirServer) -> None:
    server.throttle(retry_after="0")
    with real_client(server) as http:
        assert http.get_json("Patient", {"_id": "p1"})["total"] == 1
    assert len(server.requests) == 2


def test_real_read_timeout(server: FakeFhirServer) -> None:
    server.delay(2.0)
    with real_client(server, read_timeout_s=0.2) as http, pytest.raises(ServerUnreachableError):
        http.get_json("Patient/p1")


def test_real_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with FhirHttp(f"http://127.0.0.1:{port}/fhir") as http, pytest.raises(ServerUnreachableError):
        http.get_json("metadata")


# --- the fake server's search, paging and batch, as the screening client will use them ------------
def observation(oid: str, patient: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    }


def test_real_search_pages_by_next_links(server: FakeFhirServer) -> None:
    for n in range(5):
        server.add(observation(f"o{n}", "p1", "718-7"))
    server.add(observation("other-code", "p1", "26499-4"))
    server.add(observation("other-patient", "p2", "718-7"))
    seen: list[str] = []
    with real_client(server) as http:
        page = http.get_json(
            "Observation", {"patient": "p1", "code": "http://loinc.org|718-7", "_count": 2}
        )
        assert page["total"] == 5
        while True:
            seen += [e["resource"]["id"] for e in page.get("entry", [])]
            nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
            if not nxt:
                break
            assert http.same_origin(nxt[0])
            page = http.get_json(nxt[0])
    assert seen == [f"o{n}" for n in range(5)]


def test_real_next_link_off_origin_is_detected(server: FakeFhirServer) -> None:
    server.add(observation("o1", "p1", "718-7"))
    server.add(observation("o2", "p1", "718-7"))
    server.next_link_base = "http://elsewhere.test/fhir"
    with real_client(server) as http:
        page = http.get_json("Observation", {"patient": "Patient/p1", "_count": 1})
        (nxt,) = [link["url"] for link in page["link"] if link["relation"] == "next"]
        assert not http.same_origin(nxt)
        with pytest.raises(ServerResponseError):
            http.get_json(nxt)


def test_real_batch_of_searches(server: FakeFhirServer) -> None:
    server.add(observation("o1", "p1", "718-7"))
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation?patient=p1&code=718-7"}},
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": "Patient/absent"}},
        ],
    }
    with real_client(server) as http:
        answer = http.request("POST", "", json=batch).body
    assert answer["type"] == "batch-response"
    first, second, third = answer["entry"]
    assert first["resource"]["total"] == 1
    assert second["resource"]["id"] == "p1"
    assert third["response"]["status"] == "404"
