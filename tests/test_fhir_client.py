"""FhirClient: batch and concurrent searches, paging, limits, failures, against fakes and a server."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from fake_fhir_server import FakeFhirServer
from test_population import evaluation_settings

from fhir_trial.config import Settings
from fhir_trial.errors import AuthenticationError, InputError
from fhir_trial.evaluate import evaluate
from fhir_trial.fhir_http import FhirHttp
from fhir_trial.record import CATEGORIES
from fhir_trial.searches import valueset_ids
from fhir_trial.sources.fhir_client import FhirClient, PatientNotFoundError
from fhir_trial.terminology import LOINC, Terminology, ValueSet

BASE = "https://fhir.test/r4"
Answer = tuple[int, Any, dict[str, str]]
Handler = Callable[[str, str, dict[str, list[str]], Any], Answer]


def terminology(codes_per_valueset: int = 1) -> Terminology:
    """Every Observation ValueSet the client needs, with made-up LOINC-like codes."""
    return Terminology(
        ValueSet(
            id=vid,
            url=f"urn:test:{vid}",
            title=vid,
            codes=frozenset((LOINC, f"{vid}-{n}") for n in range(codes_per_valueset)),
            displays={},
        )
        for vid in valueset_ids()
    )


class FakeSession(requests.Session):
    """A transport that answers from a handler instead of the network."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        method, url = str(method), str(url)
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        for key, value in (kwargs.get("params") or {}).items():
            query.setdefault(key, []).append(str(value))
        body = json.loads(kwargs["data"]) if kwargs.get("data") else None
        self.calls.append((method, url, query))
        status, payload, headers = self.handler(method, parts.path, query, body)
        response = requests.Response()
        response.status_code = status
        response.reason = "test"
        response.url = url
        response._content = json.dumps(payload).encode() if payload is not None else b""
        response._content_consumed = True  # type: ignore[attr-defined]
        response.raw = io.BytesIO(response._content)
        response.headers["Content-Type"] = "application/fhir+json"
        response.headers.update(headers)
        return response


def searchset(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": r, "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}"} for r in resources
        ],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "diagnostics": text}],
    }


class Server:
    """A scripted server: ``pages`` maps a path (or ``path?key=value``) to a handler result."""

    def __init__(self, *, batch: bool = True) -> None:
        self.batch = batch
        self.patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
        self.data: dict[str, list[dict[str, Any]]] = {}
        self.special: dict[str, Answer] = {}

    def get(self, path: str, query: dict[str, list[str]]) -> Answer:
        rtype = path.rsplit("/r4/", 1)[-1]
        for key, answer in self.special.items():
            name, _, cond = key.partition("?")
            if name == rtype and (
                not cond or cond.split("=")[1] in query.get(cond.split("=")[0], [])
            ):
                return answer
        if rtype == "metadata":
            return 200, {"resourceType": "CapabilityStatement", "status": "active"}, {}
        if rtype == "Patient/p1":
            return 200, self.patient, {}
        if "/" in rtype:
            return 404, outcome("not found"), {}
        return 200, searchset(self.data.get(rtype, [])), {}

    def __call__(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        if method == "POST":
            if not self.batch:
                return 405, outcome("batch not supported"), {}
            entries = []
            for item in body["entry"]:
                url = item["request"]["url"]
                sub = urlsplit(url)
                status, resource, _ = self.get(f"/r4/{sub.path}", parse_qs(sub.query))
                entries.append({"response": {"status": f"{status} X"}, "resource": resource})
            return 200, {"resourceType": "Bundle", "type": "batch-response", "entry": entries}, {}
        return self.get(path, query)


def client_for(
    server: Server, settings: Settings | None = None, **kwargs: Any
) -> tuple[FhirClient, FakeSession]:
    session = FakeSession(server)
    http = FhirHttp(
        BASE,
        settings=settings or Settings(),
        session=session,
        sleep=kwargs.pop("sleep", lambda s: None),
    )
    return FhirClient(http, terminology=kwargs.pop("terminology", terminology())), session


def condition(cid: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"}}


# ------------------------------------------------------------------------------ planning
def test_searches_cover_every_category_with_portable_forms() -> None:
    client, _ = client_for(Server())
    plan = client.searches("p1")
    assert plan[0].resource_type == "Patient/p1"
    assert {s.category for s in plan} == set(CATEGORIES)
    urls = [s.relative_url() for s in plan]
    assert "ResearchSubject?individual=Patient/p1&_count=200" in urls
    obs = " ".join(u for u in urls if u.startswith("Observation?") and "code=" in u)
    assert f"{LOINC}|hemoglobin-0" in obs and f"{LOINC}|sledai-2k-total-0" in obs
    assert any(
        "value-concept=" in u and "nyha-class-iii-iv-0" in u and "nyha-class-i-ii-0" in u
        for u in urls
    )
    assert any("combo-code=" in u and "nyha-assessment-0" in u for u in urls)
    # Only the NYHA searches (which fill their own part) are optional; result searches never are.
    optional = [s.relative_url() for s in plan if s.optional]
    assert optional and all("nyha" in u for u in optional)
    assert not any(
        s.optional for s in plan if "code=" in s.relative_url() and "nyha" not in s.relative_url()
    )
    assert not any(":in=" in u or "_include" in u for u in urls)


def test_long_code_list_is_split_never_dropped() -> None:
    client, _ = client_for(Server(), terminology=terminology(codes_per_valueset=40))
    observation = [s for s in client.searches("p1") if s.category == "Observation"]
    assert len(observation) > 4
    assert all(len(dict(s.params)) == 3 for s in observation)  # patient, _count and a filter


def test_bad_patient_id_is_refused() -> None:
    client, session = client_for(Server())
    with pytest.raises(InputError, match="FHIR id"):
        client.fetch_patient_record("../../etc/passwd")
    assert session.calls == []


# ------------------------------------------------------------------------------ batch / concurrent
def test_batch_fetch_builds_a_complete_record() -> None:
    server = Server()
    server.data["Condition"] = [condition("c1"), condition("c2")]
    client, session = client_for(server)
    record = client.fetch_patient_record("Patient/p1")
    # The CapabilityStatement, then everything in one batch.
    assert [c[0] for c in session.calls] == ["GET", "POST"]
    assert session.calls[0][1].endswith("/metadata")
    assert record.patient_reference == "Patient/p1"
    assert record.count("Condition") == 2
    assert all(record.usable(c) for c in CATEGORIES)
    assert client.batch_supported is True


def test_refused_batch_falls_back_to_concurrent_searches_and_is_remembered() -> None:
    server = Server(batch=False)
    server.data["Condition"] = [condition("c1")]
    client, session = client_for(server, Settings(search_concurrency=3))
    record = client.fetch_patient_record("p1")
    assert record.count("Condition") == 1
    assert client.batch_supported is False
    posts = sum(1 for call in session.calls if call[0] == "POST")
    client.fetch_patient_record("p1")
    assert sum(1 for call in session.calls if call[0] == "POST") == posts == 1


@pytest.mark.parametrize("batch", [True, False])
def test_failing_category_is_unknown_not_not_met(batch: bool, tmp_path: Path) -> None:
    server = Server(batch=batch)
    server.special["Condition"] = (404, outcome("Condition is not supported"), {})
    client, _ = client_for(server)
    record = client.fetch_patient_record("p1")
    assert record.state("Condition") == "failed"
    assert "HTTP 404" in record.failed["Condition"]
    assert "p1" not in record.failed["Condition"]
    assert record.usable("Observation")
    report = evaluate(record, evaluation_settings(tmp_path))
    assert report.criterion("inc-sle-diagnosis").status != "not-met"
    assert any("Condition could not be obtained" in w for w in report.warnings)


@pytest.mark.parametrize("batch", [True, False])
def test_auth_failure_stops_everything(batch: bool) -> None:
    server = Server(batch=batch)
    server.special["Condition"] = (403, outcome("forbidden"), {})
    client, _ = client_for(server)
    with pytest.raises(AuthenticationError):
        client.fetch_patient_record("p1")


def test_auth_failure_on_the_batch_itself() -> None:
    def handler(method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        return 401, outcome("no token"), {}

    session = FakeSession(handler)
    client = FhirClient(FhirHttp(BASE, session=session), terminology=terminology())
    with pytest.raises(AuthenticationError):
        client.fetch_patient_record("p1")
    assert len(session.calls) == 1  # no fallback hammering a server that refused us


@pytest.mark.parametrize("batch", [True, False])
def test_patient_not_found(batch: bool) -> None:
    client, _ = client_for(Server(batch=batch))
    with pytest.raises(PatientNotFoundError, match="Patient/nobody was not found"):
        client.fetch_patient_record("nobody")


def test_429_with_retry_after_is_waited_for() -> None:
    server = Server(batch=False)
    waits: list[float] = []
    answers = iter([(429, outcome("slow down"), {"Retry-After": "2"})])

    def handler(method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        if path.endswith("/Consent"):
            try:
                return next(answers)
            except StopIteration:
                pass
        return server(method, path, query, body)

    session = FakeSession(handler)
    http = FhirHttp(BASE, session=session, sleep=waits.append)
    client = FhirClient(http, terminology=terminology())
    client.batch_supported = False
    record = client.fetch_patient_record("p1")
    assert waits == [2.0]
    assert record.usable("Consent")


def test_batch_entry_throttled_is_retried_alone() -> None:
    server = Server()
    server.special["AllergyIntolerance"] = (429, outcome("busy"), {})
    client, session = client_for(server)
    record = client.fetch_patient_record("p1")
    retried = [c for c in session.calls if c[0] == "GET" and c[1].endswith("/AllergyIntolerance")]
    assert retried  # the entry was asked again on its own
    assert record.state("AllergyIntolerance") == "failed"  # still 429 after the retries


# ------------------------------------------------------------------------------ paging
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ("oops", "'entry' is not a list"),
        ([{"resource": 7}, {}], "2 entries are not a FHIR resource"),
    ],
    ids=["entry-not-a-list", "entries-without-resources"],
)
def test_search_bundle_that_cannot_be_read_makes_its_category_unknown(
    batch: bool, entries: Any, says: str, tmp_path: Path
) -> None:
    # Passing over broken entries would make "no Condition" look like a finding.
    server = Server(batch=batch)
    server.special["Condition"] = (
        200,
        {"resourceType": "Bundle", "type": "searchset", "entry": entries},
        {},
    )
    client, _ = client_for(server)
    record = client.fetch_patient_record("p1")
    assert record.state("Condition") == "failed"
    assert f"a search Bundle that cannot be read ({says})" in record.failed["Condition"]
    assert record.usable("Observation")
    report = evaluate(record, evaluation_settings(tmp_path))
    assert report.criterion("inc-sle-diagnosis").status == "unknown"


def paged(pages: dict[str, dict[str, Any]], first: dict[str, Any]) -> Handler:
    """Condition search answers ``first``; a GET of an exact URL in ``pages`` answers that page."""
    server = Server(batch=False)
    server.special["Condition"] = (200, first, {})

    def handler(method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        for url, page in pages.items():
            sub = urlsplit(url)
            if path == sub.path and query == parse_qs(sub.query):
                return 200, page, {}
        return server(method, path, query, body)

    return handler


def run_paged(handler: Handler, settings: Settings | None = None) -> tuple[Any, FakeSession]:
    session = FakeSession(handler)
    client = FhirClient(
        FhirHttp(BASE, settings=settings or Settings(), session=session), terminology=terminology()
    )
    client.batch_supported = False
    return client.fetch_patient_record("p1"), session


def test_hapi_getpages_paging_follows_links_exactly() -> None:
    page2 = f"{BASE}?_getpages=abc-123&_getpagesoffset=2&_count=2&_bundletype=searchset"
    page3 = f"{BASE}?_getpages=abc-123&_getpagesoffset=4&_count=2&_bundletype=searchset"
    handler = paged(
        {
            page2: searchset([condition("c3"), condition("c4")], page3),
            page3: searchset([condition("c5")]),
        },
        searchset([condition("c1"), condition("c2")], page2),
    )
    record, session = run_paged(handler)
    assert sorted(c["id"] for c in record.resources("Condition")) == ["c1", "c2", "c3", "c4", "c5"]
    assert page2 in [c[1] for c in session.calls] and page3 in [c[1] for c in session.calls]
    assert record.warnings == []


def test_offset_paging() -> None:
    page2 = f"{BASE}/Condition?patient=p1&_count=1&_offset=1"
    handler = paged({page2: searchset([condition("c2")])}, searchset([condition("c1")], page2))
    record, _ = run_paged(handler)
    assert record.count("Condition") == 2


def test_next_link_loop_is_detected() -> None:
    page2 = f"{BASE}/Condition?patient=p1&_offset=1"
    handler = paged(
        {page2: searchset([condition("c2")], page2)}, searchset([condition("c1")], page2)
    )
    record, session = run_paged(handler)
    assert record.count("Condition") == 2
    assert sum(1 for c in session.calls if c[1] == page2) == 1
    assert any("repeats a page" in w for w in record.warnings)
    # A looping server may hide pages: absence in it must not count (absence rule 1).
    assert not record.usable("Condition")


def test_page_cap_keeps_what_was_read_but_marks_the_category_incomplete() -> None:
    pages = {
        f"{BASE}/Condition?patient=p1&_offset={n}": searchset(
            [condition(f"c{n}")], f"{BASE}/Condition?patient=p1&_offset={n + 1}"
        )
        for n in range(1, 10)
    }
    first = searchset([condition("c0")], f"{BASE}/Condition?patient=p1&_offset=1")
    record, _ = run_paged(paged(pages, first), Settings(max_pages=3))
    assert record.count("Condition") == 3
    assert not record.usable("Condition")
    assert record.failed["Condition"].startswith("incomplete: truncated after 3 pages")
    assert any("truncated after 3 pages" in w for w in record.warnings)


def test_next_link_to_another_origin_is_not_followed() -> None:
    first = searchset([condition("c1")], "https://evil.test/r4/Condition?_offset=1")
    record, session = run_paged(paged({}, first))
    assert not any("evil.test" in c[1] for c in session.calls)
    assert any("another server" in w for w in record.warnings)


def test_referenced_medication_is_read() -> None:
    server = Server()
    server.data["MedicationRequest"] = [
        {
            "resourceType": "MedicationRequest",
            "id": "r1",
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": "Medication/m1"},
        }
    ]
    server.special["Medication/m1"] = (
        200,
        {"resourceType": "Medication", "id": "m1", "code": {"text": "drug"}},
        {},
    )
    client, _ = client_for(server)
    record = client.fetch_patient_record("p1")
    request = record.resources("MedicationRequest")[0]
    assert record.medication_concept(request) == {"text": "drug"}


# ------------------------------------------------------------------------------ real HTTP server
@pytest.fixture()
def fhir_server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer() as server:
        yield server


def load_patient(server: FakeFhirServer, conditions: int) -> None:
    server.add({"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-01"})
    server.add({"resourceType": "Patient", "id": "p2"})
    for n in range(conditions):
        server.add(condition(f"c{n}"))
    server.add({"resourceType": "Condition", "id": "other", "subject": {"reference": "Patient/p2"}})
    server.add(
        {
            "resourceType": "Observation",
            "id": "hb",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": "hemoglobin-0"}]},
        }
    )
    server.add(
        {
            "resourceType": "Observation",
            "id": "unrelated",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": "0000-0"}]},
        }
    )


@pytest.mark.parametrize("batch", [True, False])
def test_against_fake_fhir_server(fhir_server: FakeFhirServer, batch: bool) -> None:
    load_patient(fhir_server, conditions=230)  # more than one page of 200
    fhir_server.batch = batch  # without batch: 405, and not in the CapabilityStatement
    client = FhirClient(fhir_server.base_url, terminology=terminology())
    record = client.fetch_patient_record("p1")
    client.close()
    assert record.count("Condition") == 230
    assert "hb" in [o["id"] for o in record.resources("Observation")]
    # The code-filtered search reached the server (the lenient fake ignores value-concept, so the
    # NYHA search brings the unrelated Observation too: harmless extra data).
    code_searches = [
        r.query[name][0]
        for r in fhir_server.requests
        for name in ("code", "combo-code")
        if name in r.query
    ]
    code_searches += [
        e["request"]["url"]
        for r in fhir_server.requests
        if isinstance(r.body, dict)
        for e in r.body.get("entry", [])
        if "code=" in e["request"]["url"]
    ]
    assert any("hemoglobin-0" in c for c in code_searches)
    assert any("sledai-2k-total-0" in c for c in code_searches)
    assert all(record.usable(c) for c in CATEGORIES)
    assert client.batch_supported is batch
    assert any(r.query.get("_offset") for r in fhir_server.requests)  # paging happened


def test_fake_fhir_server_with_token(tmp_path: Path) -> None:
    with FakeFhirServer(token="s3cret") as server:
        load_patient(server, conditions=1)
        with pytest.raises(AuthenticationError):
            FhirClient(server.base_url, terminology=terminology()).fetch_patient_record("p1")
        record = FhirClient(
            server.base_url, token="s3cret", terminology=terminology()
        ).fetch_patient_record("p1")
    assert record.count("Condition") == 1
