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
    response = client.get("/fhir/ValueSet?_id=vs-a&name=5", headers={"Prefer": "handling=lenient"})
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
        head = session.head(f"{live_base}/ValueSet?_id=vs-a", timeout=5)
        assert head.status_code == 200 and head.content == b""
        posted = session.post(f"{live_base}/ValueSet/_search", data={"_id": "vs-b"}, timeout=5)
        assert [e["resource"]["id"] for e in posted.json()["entry"]] == ["vs-b"]
        xml = session.get(f"{live_base}/metadata", headers={"Accept": "application/fhir+xml"})
        assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"
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


# --- what FHIR clients send: paging, subsets, POST _search, HEAD, Accept --------------------------
SUBSETTED_TAG = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"


def _links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def test_count_pages_with_links_that_walk_the_whole_set(project_client: FlaskClient) -> None:
    everything = ids(fhir_json(project_client.get("/fhir/ValueSet")))
    assert len(everything) > 20
    url: str | None = "/fhir/ValueSet?_count=7"
    seen: list[str] = []
    while url:
        bundle = fhir_json(project_client.get(url))
        assert bundle["total"] == len(everything)
        page = [e["resource"]["id"] for e in bundle.get("entry", [])]
        assert 0 < len(page) <= 7
        seen += page
        links = _links(bundle)
        assert links["first"] == "http://localhost/fhir/ValueSet?_count=7"
        assert "_offset=" in links["last"]
        if seen[:7] != page:
            assert "previous" in links
        url = links.get("next")
    assert seen == everything
    last = fhir_json(project_client.get(_links(bundle)["last"]))
    assert [e["resource"]["id"] for e in last["entry"]] == page


def test_count_zero_and_summary_count_give_the_total_only(client: FlaskClient) -> None:
    for query in ("_count=0", "_summary=count"):
        bundle = fhir_json(client.get(f"/fhir/ValueSet?{query}"))
        assert bundle["total"] == 2 and "entry" not in bundle
        assert [link["relation"] for link in bundle["link"]] == ["self"]


def _tagged(resource: dict[str, Any]) -> bool:
    tags = resource.get("meta", {}).get("tag", [])
    return {"system": SUBSETTED_TAG, "code": "SUBSETTED", "display": "subsetted"} in tags


def test_summary_modes(project_client: FlaskClient) -> None:
    url = "/fhir/ValueSet?_id=sle"
    whole = fhir_json(project_client.get(url))["entry"][0]["resource"]
    assert "expansion" in whole and not _tagged(whole)
    summary = fhir_json(project_client.get(f"{url}&_summary=true"))["entry"][0]["resource"]
    assert _tagged(summary)
    assert {"url", "version", "status", "name"} <= set(summary)
    assert not {"expansion", "compose", "text"} & set(summary)
    text = fhir_json(project_client.get(f"{url}&_summary=text"))["entry"][0]["resource"]
    assert set(text) == {"resourceType", "id", "meta", "status"} and _tagged(text)  # no text here
    data = fhir_json(project_client.get(f"{url}&_summary=data"))["entry"][0]["resource"]
    assert "expansion" in data and _tagged(data)
    full = fhir_json(project_client.get(f"{url}&_summary=false"))["entry"][0]["resource"]
    assert full == whole
    # reads take _summary too; the stored resource is never changed
    read = fhir_json(project_client.get("/fhir/ValueSet/sle?_summary=true"))
    assert read == summary
    assert not _tagged(fhir_json(project_client.get("/fhir/ValueSet/sle")))


def test_elements_keeps_the_mandatory_ones(project_client: FlaskClient) -> None:
    bundle = fhir_json(project_client.get("/fhir/Library?_elements=url,version,Library.name"))
    # one Library per CQL library (the main one, the clinical areas, Common, FHIRHelpers)
    assert len(bundle["entry"]) == len(list((ROOT / "cql").glob("*.cql")))
    for entry in bundle["entry"]:
        resource = entry["resource"]
        # Library.status and Library.type are mandatory (1..1): kept though not asked for
        assert set(resource) == {
            "resourceType",
            "id",
            "meta",
            "url",
            "version",
            "name",
            "status",
            "type",
        }
        assert _tagged(resource)
    assert "_elements=url%2Cversion%2CLibrary.name" in _links(bundle)["self"]


def test_libraries_are_found_by_the_canonicals_they_depend_on(project_client: FlaskClient) -> None:
    """Each depends-on url|version of the main Library (and the PlanDefinition's) resolves here."""
    main = fhir_json(project_client.get("/fhir/Library/NCT06010472Eligibility"))
    plan = fhir_json(project_client.get("/fhir/PlanDefinition/nct06010472-eligibility"))
    canonicals = [a["resource"] for a in main["relatedArtifact"]] + plan["library"]
    assert len(canonicals) == 12
    for canonical_ref in canonicals:
        found = fhir_json(project_client.get("/fhir/Library", query_string={"url": canonical_ref}))
        (entry,) = found["entry"]
        url, version = canonical_ref.split("|")
        assert (entry["resource"]["url"], entry["resource"]["version"]) == (url, version)


def test_summary_text_and_data_on_a_resource_with_narrative(tmp_path: Path) -> None:
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
    study = {**SAMPLE[2], "text": narrative, "title": "T", "description": "long"}
    app_client = make_app(write_resources(tmp_path / "r", [study])).test_client()
    text = fhir_json(app_client.get("/fhir/ResearchStudy/study?_summary=text"))
    assert set(text) == {"resourceType", "id", "meta", "text", "status"} and _tagged(text)
    data = fhir_json(app_client.get("/fhir/ResearchStudy/study?_summary=data"))
    assert "text" not in data and data["description"] == "long" and _tagged(data)
    summary = fhir_json(app_client.get("/fhir/ResearchStudy/study?_summary=true"))
    assert summary["title"] == "T" and "description" not in summary and "text" not in summary


def test_sort(client: FlaskClient) -> None:
    assert ids(fhir_json(client.get("/fhir/ValueSet?_sort=-_id"))) == ["vs-b", "vs-a"]
    assert ids(fhir_json(client.get("/fhir/ValueSet?_sort=version"))) == ["vs-a", "vs-b"]


def test_post_search_gives_the_same_results_as_get(project_client: FlaskClient) -> None:
    query = {"_count": "3", "_offset": "3", "_summary": "true", "_sort": "-url"}
    got = fhir_json(project_client.get("/fhir/ValueSet", query_string=query))
    posted = fhir_json(project_client.post("/fhir/ValueSet/_search", data=query))
    assert posted == got
    # parameters split between the URL and the body are both used
    split = project_client.post("/fhir/ValueSet/_search?_count=3", data={"_id": "sle,lvef"})
    assert ids(fhir_json(split)) == ["lvef", "sle"]
    bad = project_client.post("/fhir/ValueSet/_search", json={"_id": "sle"})
    outcome(bad, 415)
    outcome(project_client.post("/fhir/ValueSet/_search", data={"name": "x"}), 400)
    outcome(project_client.get("/fhir/ValueSet/_search"), 405)
    outcome(project_client.post("/fhir/Patient/_search", data={"_id": "1"}), 404)


def test_head_answers_headers_without_a_body(client: FlaskClient) -> None:
    for path in ("/fhir/ValueSet/vs-a", "/fhir/ValueSet?_id=vs-a", "/fhir/metadata"):
        response = client.head(path)
        assert response.status_code == 200, path
        assert response.mimetype == "application/fhir+json"
        assert response.get_data() == b""
        assert int(response.headers["Content-Length"]) == len(client.get(path).get_data())
    assert client.head("/fhir/ValueSet/vs-a").headers["ETag"] == 'W/"3"'
    assert client.head("/fhir/ValueSet/nope").status_code == 404


@pytest.mark.parametrize(
    "accept",
    ["application/fhir+xml", "application/xml", "application/fhir+xml;q=1.0, text/turtle"],
)
def test_accept_without_json_is_406(client: FlaskClient, accept: str) -> None:
    for path in ("/fhir/ValueSet/vs-a", "/fhir/ValueSet", "/fhir/metadata"):
        assert "JSON" in outcome(client.get(path, headers={"Accept": accept}), 406)


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+json",
        "application/json",
        "application/fhir+xml;q=0.9, application/fhir+json",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ],
)
def test_accept_with_json_is_served(client: FlaskClient, accept: str) -> None:
    assert fhir_json(client.get("/fhir/ValueSet/vs-a", headers={"Accept": accept}))["id"] == "vs-a"


# --- ValueSet/$expand ------------------------------------------------------------------------------
def _codes(expansion: dict[str, Any]) -> list[str]:
    return [c["code"] for c in expansion.get("expansion", {}).get("contains", [])]


def test_expand_by_id_and_by_url(project_client: FlaskClient) -> None:
    shipped = fhir_json(project_client.get("/fhir/ValueSet/sle"))
    by_id = fhir_json(project_client.get("/fhir/ValueSet/sle/$expand"))
    assert by_id["resourceType"] == "ValueSet" and by_id["url"] == shipped["url"]
    assert _codes(by_id) == [c["code"] for c in shipped["expansion"]["contains"]]
    assert by_id["expansion"]["total"] == len(shipped["expansion"]["contains"])
    url = shipped["url"]
    by_url = fhir_json(project_client.get("/fhir/ValueSet/$expand", query_string={"url": url}))
    assert by_url == by_id
    versioned = {"url": url, "valueSetVersion": shipped["version"]}
    assert fhir_json(project_client.get("/fhir/ValueSet/$expand", query_string=versioned)) == by_id
    assert (
        fhir_json(project_client.get(f"/fhir/ValueSet/$expand?url={url}|{shipped['version']}"))
        == by_id
    )


def test_expand_filter_and_paging(project_client: FlaskClient) -> None:
    shipped = fhir_json(project_client.get("/fhir/ValueSet/sle"))["expansion"]["contains"]
    wanted = [c["code"] for c in shipped if "remission" in c.get("display", "").lower()]
    assert wanted
    found = fhir_json(project_client.get("/fhir/ValueSet/sle/$expand?filter=REMISSION"))
    assert _codes(found) == wanted
    assert found["expansion"]["total"] == len(wanted)
    assert found["expansion"]["parameter"] == [{"name": "filter", "valueString": "REMISSION"}]
    code = shipped[3]["code"]
    assert code in _codes(
        fhir_json(project_client.get(f"/fhir/ValueSet/sle/$expand?filter={code}"))
    )
    page = fhir_json(project_client.get("/fhir/ValueSet/sle/$expand?offset=5&count=4"))
    assert _codes(page) == [c["code"] for c in shipped[5:9]]
    assert (page["expansion"]["offset"], page["expansion"]["total"]) == (5, len(shipped))
    total_only = fhir_json(project_client.get("/fhir/ValueSet/sle/$expand?count=0"))
    assert (
        total_only["expansion"]["total"] == len(shipped)
        and "contains" not in total_only["expansion"]
    )
    # the store is not changed by an expansion
    assert fhir_json(project_client.get("/fhir/ValueSet/sle"))["expansion"]["contains"] == shipped


def test_expand_by_post_parameters(project_client: FlaskClient) -> None:
    url = fhir_json(project_client.get("/fhir/ValueSet/sle"))["url"]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "url", "valueUri": url},
            {"name": "filter", "valueString": "lupus"},
            {"name": "count", "valueInteger": 2},
            {"name": "includeDesignations", "valueBoolean": True},
        ],
    }
    posted = fhir_json(project_client.post("/fhir/ValueSet/$expand", json=body))
    got = fhir_json(project_client.get(f"/fhir/ValueSet/$expand?url={url}&filter=lupus&count=2"))
    assert posted == got and len(_codes(posted)) == 2


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/fhir/ValueSet/$expand", 400, "needs a url"),
        ("/fhir/ValueSet/$expand?url=https://nowhere.example/ValueSet/x", 404, "no ValueSet"),
        ("/fhir/ValueSet/absent/$expand", 404, "ValueSet/absent"),
        ("/fhir/ValueSet/sle/$expand?count=-1", 400, "count"),
        ("/fhir/ValueSet/sle/$expand?offset=two", 400, "offset"),
        ("/fhir/ValueSet/sle/$expand?bogus=1", 400, "bogus"),
        ("/fhir/ValueSet/sle/$expand?url=https://other.example/ValueSet/y", 400, "canonical"),
        ("/fhir/ValueSet/sle/$expand?filter=a&filter=b", 400, "repeated"),
    ],
)
def test_expand_errors(project_client: FlaskClient, path: str, status: int, words: str) -> None:
    assert words in outcome(project_client.get(path), status)


def test_expand_refuses_bad_post_bodies_and_writes(project_client: FlaskClient) -> None:
    outcome(project_client.post("/fhir/ValueSet/$expand", json={"resourceType": "ValueSet"}), 400)
    inline = {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {}}]}
    outcome(project_client.post("/fhir/ValueSet/$expand", json=inline), 400)
    outcome(project_client.put("/fhir/ValueSet/sle/$expand", json={}), 405)
    outcome(
        project_client.get(
            "/fhir/ValueSet/sle/$expand", headers={"Accept": "application/fhir+xml"}
        ),
        406,
    )


def test_expand_is_fast_on_thousands_of_codes(tmp_path: Path) -> None:
    import time

    contains = [
        {"system": "http://snomed.info/sct", "code": str(100000 + i), "display": f"Finding {i}"}
        for i in range(20000)
    ]
    big = {
        "resourceType": "ValueSet",
        "id": "big",
        "url": f"{BASE}/ValueSet/big",
        "status": "active",
        "expansion": {"timestamp": "2026-01-01", "total": len(contains), "contains": contains},
    }
    app_client = make_app(write_resources(tmp_path / "r", [big])).test_client()
    started = time.perf_counter()
    for _ in range(20):
        found = fhir_json(app_client.get("/fhir/ValueSet/big/$expand?filter=ing 1999&count=5"))
    elapsed = (time.perf_counter() - started) / 20
    assert found["expansion"]["total"] == 11  # 1999, 19990..19999
    assert _codes(found) == ["101999", "119990", "119991", "119992", "119993"]
    assert elapsed < 0.05, f"{elapsed:.3f} s per filtered page"


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/metadata",
        "/fhir/ValueSet/sle/$expand?filter=lupus&offset=1&count=3",
        "/fhir/ValueSet?_summary=true&_count=5&_offset=5",
        "/fhir/ValueSet?_summary=text",
        "/fhir/Library?_elements=url",
        "/fhir/ResearchStudy?_summary=true",
        "/fhir/ValueSet?_count=0",
    ],
)
def test_answers_are_valid_fhir(project_client: FlaskClient, path: str, shared_dir: Path) -> None:
    from fhir_trial.validation import validate_resource

    schema = shared_dir / "schemas" / "fhir.schema.json"
    assert validate_resource(fhir_json(project_client.get(path)), schema_path=schema) == []
