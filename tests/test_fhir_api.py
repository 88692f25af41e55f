"""The read-only /fhir endpoint: CapabilityStatement, read, search, OperationOutcome errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fake_fhir_server import serve_wsgi
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fhir_trial.canonical import BASE
from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError
from fhir_trial.fhir_api.blueprint import create_fhir_blueprint
from fhir_trial.fhir_api.store import load_resources
from fhir_trial.fhir_http import FhirHttp

ROOT = Path(__file__).resolve().parent.parent
PROJECT_RESOURCES = ROOT / "resources"

SAMPLE: list[dict[str, Any]] = [
    {
        "resourceType": "ValueSet",
        "id": "vs-a",
        "url": f"{BASE}/ValueSet/vs-a",
        "version": "1.0.0",
        "status": "active",
        "meta": {"versionId": "3"},
    },
    {
        "resourceType": "ValueSet",
        "id": "vs-b",
        "url": f"{BASE}/ValueSet/vs-b",
        "version": "2.0.0",
        "status": "active",
        "identifier": [{"value": "no-system"}],
    },
    {
        "resourceType": "ResearchStudy",
        "id": "study",
        "status": "active",
        "identifier": [
            {"system": "https://clinicaltrials.gov", "value": "NCT06010472"},
            {"value": "CHEC2023-174"},
        ],
    },
]


def write_resources(folder: Path, resources: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for resource in resources:
        path = folder / f"{resource['resourceType']}-{resource['id']}.json"
        path.write_text(json.dumps(resource), encoding="utf-8")
    return folder


def make_app(resources_dir: Path | str) -> Flask:
    app = Flask("test")
    app.register_blueprint(
        create_fhir_blueprint(Settings(resources_dir=str(resources_dir))), url_prefix="/fhir"
    )
    return app


@pytest.fixture()
def client(tmp_path: Path) -> FlaskClient:
    return make_app(write_resources(tmp_path / "resources", SAMPLE)).test_client()


@pytest.fixture()
def project_dir(tmp_path: Path) -> Path:
    """A snapshot of the project's real resources/ (built by `fhir-trial build-resources`)."""
    if not any(PROJECT_RESOURCES.glob("*.json")):
        pytest.fail("resources/ is empty: run `fhir-trial build-resources`")
    return Path(shutil.copytree(PROJECT_RESOURCES, tmp_path / "project-resources"))


@pytest.fixture()
def project_resources(project_dir: Path) -> list[dict[str, Any]]:
    return load_resources(project_dir)


@pytest.fixture()
def project_client(project_dir: Path, tmp_db: str) -> FlaskClient:
    from fhir_trial.app import create_app

    settings = Settings(resources_dir=str(project_dir), database_path=tmp_db)
    return create_app(settings).test_client()


def fhir_json(response: TestResponse, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body = response.get_json(force=True)
    assert isinstance(body, dict)
    return body


def outcome(response: TestResponse, status: int) -> str:
    body = fhir_json(response, status)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return str(body["issue"][0]["diagnostics"])


def ids(bundle: dict[str, Any]) -> list[str]:
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == len(bundle.get("entry", []))
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


# --- the real resources through the real app factory ---------------------------------------------
def test_capability_statement_claims_exactly_what_is_served(
    project_client: FlaskClient, project_resources: list[dict[str, Any]]
) -> None:
    cap = fhir_json(project_client.get("/fhir/metadata"))
    assert cap["resourceType"] == "CapabilityStatement"
    assert (cap["fhirVersion"], cap["kind"], cap["format"]) == ("4.0.1", "instance", ["json"])
    (rest,) = cap["rest"]
    assert rest["mode"] == "server"
    served = {r["resourceType"] for r in project_resources}
    assert {r["type"] for r in rest["resource"]} == served
    for entry in rest["resource"]:
        assert [i["code"] for i in entry["interaction"]] == ["read", "search-type"]
        assert "_search" in entry["interaction"][1]["documentation"]
        names = {p["name"] for p in entry["searchParam"]}
        with_url = all("url" in r for r in project_resources if r["resourceType"] == entry["type"])
        assert names == ({"_id", "identifier", "url"} if with_url else {"_id", "identifier"})
    assert set(rest) == {"mode", "documentation", "resource", "searchParam"}  # no security, ...
    assert {p["name"] for p in rest["searchParam"]} == {
        "_count",
        "_offset",
        "_summary",
        "_elements",
        "_sort",
    }
    operations = {r["type"]: r.get("operation", []) for r in rest["resource"]}
    (expand,) = operations["ValueSet"]
    assert expand["name"] == "expand"
    assert expand["definition"] == "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
    # every operation claimed is answered (not 404/405) and every result parameter is accepted
    assert project_client.get("/fhir/ValueSet/$expand").status_code == 400  # needs a url
    for param in rest["searchParam"]:
        value = {"_summary": "true", "_elements": "url", "_sort": "_id"}.get(param["name"], "1")
        response = project_client.get("/fhir/ValueSet", query_string={param["name"]: value})
        assert response.status_code == 200, param


def test_every_resource_is_readable_and_found_by_its_url_and_identifiers(
    project_client: FlaskClient, project_resources: list[dict[str, Any]]
) -> None:
    for resource in project_resources:
        rtype, rid = resource["resourceType"], resource["id"]
        assert fhir_json(project_client.get(f"/fhir/{rtype}/{rid}")) == resource
        assert ids(fhir_json(project_client.get(f"/fhir/{rtype}", query_string={"_id": rid}))) == [
            rid
        ]
        if "url" in resource:
            found = fhir_json(
                project_client.get(f"/fhir/{rtype}", query_string={"url": resource["url"]})
            )
            assert ids(found) == [rid]
        for ident in resource.get("identifier", []):
            token = f"{ident.get('system', '')}|{ident['value']}"
            found = fhir_json(
                project_client.get(f"/fhir/{rtype}", query_string={"identifier": token})
            )
            assert rid in ids(found)


# --- search semantics on a known sample ----------------------------------------------------------
def test_search_by_url_and_version(client: FlaskClient) -> None:
    url = f"{BASE}/ValueSet/vs-a"
    bundle = fhir_json(client.get("/fhir/ValueSet", query_string={"url": url}))
    assert ids(bundle) == ["vs-a"]
    assert bundle["entry"][0]["fullUrl"] == "http://localhost/fhir/ValueSet/vs-a"
    assert bundle["entry"][0]["search"] == {"mode": "match"}
    (link,) = bundle["link"]
    assert link["relation"] == "self"
    assert link["url"].startswith("http://localhost/fhir/ValueSet?url=")
    assert ids(fhir_json(client.get("/fhir/ValueSet", query_string={"url": f"{url}|1.0.0"}))) == [
        "vs-a"
    ]
    assert ids(fhir_json(client.get("/fhir/ValueSet", query_string={"url": f"{url}|9"}))) == []
    assert ids(fhir_json(client.get("/fhir/ValueSet", query_string={"url": BASE}))) == []


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("https://clinicaltrials.gov|NCT06010472", ["study"]),
        ("NCT06010472", ["study"]),
        ("https://clinicaltrials.gov|", ["study"]),
        ("|CHEC2023-174", ["study"]),
        ("|NCT06010472", []),
        ("urn:other|NCT06010472", []),
        ("CHEC2023-174", ["study"]),
    ],
)
def test_search_by_identifier(client: FlaskClient, token: str, expected: list[str]) -> None:
    found = fhir_json(client.get("/fhir/ResearchStudy", query_string={"identifier": token}))
    assert ids(found) == expected


def test_or_and_and(client: FlaskClient) -> None:
    both = fhir_json(client.get("/fhir/ValueSet?_id=vs-a,vs-b"))
    assert ids(both) == ["vs-a", "vs-b"]
    neither = fhir_json(client.get("/fhir/ValueSet?_id=vs-a&_id=vs-b"))
    assert ids(neither) == []
    one = fhir_json(client.get("/fhir/ValueSet?_id=vs-a,vs-b&identifier=no-system"))
    assert ids(one) == ["vs-b"]


def test_search_without_parameters_lists_the_type(client: FlaskClient) -> None:
    bundle = fhir_json(client.get("/fhir/ValueSet"))
    assert ids(bundle) == ["vs-a", "vs-b"]
    assert bundle["link"][0]["url"] == "http://localhost/fhir/ValueSet"


def test_read_sets_etag(client: FlaskClient) -> None:
    response = client.get("/fhir/ValueSet/vs-a")
    assert fhir_json(response)["id"] == "vs-a"
    assert response.headers["ETag"] == 'W/"3"'


@pytest.mark.parametrize("fmt", ["json", "application/fhir+json", "application/json"])
def test_format_json_is_tolerated(client: FlaskClient, fmt: str) -> None:
    assert ids(fhir_json(client.get("/fhir/ValueSet", query_string={"_format": fmt}))) == [
        "vs-a",
        "vs-b",
    ]
    assert (
        fhir_json(client.get("/fhir/metadata", query_string={"_format": fmt}))["kind"] == "instance"
    )
    assert (
        fhir_json(client.get("/fhir/ValueSet/vs-a", query_string={"_format": fmt}))["id"] == "vs-a"
    )


def test_public_base_url_is_used_in_links(tmp_path: Path) -> None:
    folder = write_resources(tmp_path / "r", SAMPLE)
    app = Flask("test")
    settings = Settings(resources_dir=str(folder), public_base_url="https://trial.example.org")
    app.register_blueprint(create_fhir_blueprint(settings), url_prefix="/fhir")
    bundle = fhir_json(app.test_client().get("/fhir/ValueSet?_id=vs-a"))
    assert bundle["entry"][0]["fullUrl"] == "https://trial.example.org/fhir/ValueSet/vs-a"


# --- errors --------------------------------------------------------------------------------------
def test_unknown_type_is_404(client: FlaskClient) -> None:
    assert "Patient" in outcome(client.get("/fhir/Patient"), 404)
    assert "Patient" in outcome(client.get("/fhir/Patient/1"), 404)
    outcome(client.get("/fhir/valueset"), 404)


def test_unknown_id_is_404(client: FlaskClient) -> None:
    assert "ValueSet/nope" in outcome(client.get("/fhir/ValueSet/nope"), 404)
    outcome(client.get("/fhir/ValueSet/bad$id"), 404)


@pytest.mark.parametrize(
    "query",
    [
        "name=x",
        "_count=ten",
        "_count=-1",
        "_offset=x",
        "url:below=https://fhir-trial.org",
        "identifier:of-type=x",
        "_summary=everything",
        "_sort=publisher",
        "_sort=url,-_id",
        "_summary=true&_elements=url",
        "_count=1&_count=2",
    ],
)
def test_unsupported_search_parameter_is_400(client: FlaskClient, query: str) -> None:
    message = outcome(client.get(f"/fhir/ValueSet?{query}"), 400)
    assert query.split("&")[-1].split("=")[0] in message


def test_url_is_not_a_parameter_of_types_without_url(client: FlaskClient) -> None:
    outcome(client.get("/fhir/ResearchStudy?url=x"), 400)


def test_lenient_handling_ignores_unknown_parameters(client: FlaskClient) -> None:
    response = client.get(
        "/fhir/ValueSet?_id=vs-a&name=5", headers={"Prefer": "handling=lenient"}
    )
    bundle = fhir_json(response)
    assert ids(bundle) == ["vs-a"]
    assert "name" not in bundle["link"][0]["url"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_writes_are_refused(client: FlaskClient, method: str) -> None:
    for path in ("/fhir/ValueSet", "/fhir/ValueSet/vs-a", "/fhir/metadata"):
        response = client.open(path, method=method, json={"resourceType": "ValueSet"})
        outcome(response, 405)
        assert "GET" in response.headers["Allow"]


def test_xml_format_is_406(client: FlaskClient) -> None:
    outcome(client.get("/fhir/ValueSet?_format=xml"), 406)
    outcome(client.get("/fhir/metadata?_format=application/fhir%2Bxml"), 406)


@pytest.mark.parametrize(
    "path", ["/fhir/", "/fhir", "/fhir/ValueSet/vs-a/_history/1", "/fhir/a/b/c"]
)
def test_other_paths_are_404_operation_outcomes(client: FlaskClient, path: str) -> None:
    outcome(client.get(path, follow_redirects=True), 404)


def test_missing_resources_folder_serves_nothing(tmp_path: Path) -> None:
    app_client = make_app(tmp_path / "absent").test_client()
    cap = fhir_json(app_client.get("/fhir/metadata"))
    assert cap["rest"][0]["resource"] == []
    outcome(app_client.get("/fhir/ValueSet/vs-a"), 404)


def test_corrupt_resources_folder_stops_start_up(tmp_path: Path) -> None:
    folder = write_resources(tmp_path / "r", SAMPLE)
    (folder / "Broken.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"Broken\.json"):
        make_app(folder)


# --- over real HTTP ------------------------------------------------------------------------------
@pytest.fixture()
def live_base(tmp_path: Path) -> Iterator[str]:
    with serve_wsgi(make_app(write_resources(tmp_path / "r", SAMPLE))) as root:
        yield f"{root}/fhir"


def test_over_real_http(live_base: str) -> None:
    with requests.Session() as session:
        response = session.get(f"{live_base}/metadata", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        assert response.json()["fhirVersion"] == "4.0.1"
        missing = session.get(f"{live_base}/ValueSet/nope", timeout=5)
        assert missing.status_code == 404
        assert missing.json()["resourceType"] == "OperationOutcome"
    with FhirHttp(live_base) as http:
        found = http.get_json("ValueSet", {"url": f"{BASE}/ValueSet/vs-b"})
        assert found["total"] == 1
        assert found["link"][0]["url"].startswith(live_base)
        assert http.same_origin(found["entry"][0]["fullUrl"])


def test_unknown_paths_and_unexpected_errors_answer_operation_outcomes(tmp_db: str) -> None:
    from fhir_trial.app import create_app

    app = create_app(Settings(database_path=tmp_db))

    @app.get("/boom-for-test")
    def boom() -> str:
        raise RuntimeError("patient Jane Doe")  # text that must not reach the answer

    client = app.test_client()
    missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert missing.get_json()["resourceType"] == "OperationOutcome"
    failed = client.get("/boom-for-test")
    assert failed.status_code == 503
    body = failed.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert "Jane" not in failed.get_data(as_text=True)
