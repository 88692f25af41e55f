"""``/openapi.json`` describes every route the app registers, and the app keeps to it.

The contract fuzzing (schemathesis) runs a short pass here; ``benchmarks/fuzz_api.py`` runs the
long one (FHIR_TRIAL_FUZZ_EXAMPLES=2000 requests per operation).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from fhir_trial.app import create_app
from fhir_trial.config import Settings
from fhir_trial.openapi import UNDOCUMENTED_ENDPOINTS

DOCUMENTED_METHODS = {"get", "post"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    folder = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(database_path=str(folder / "db.sqlite3")))


def _openapi_path(rule: str) -> str:
    """``/fhir/<rtype>/<rid>`` -> ``/fhir/{type}/{id}`` (the document's parameter names)."""
    names = {"rtype": "type", "rid": "id"}
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: "{" + names.get(m[1], m[1]) + "}", rule)


def test_every_route_is_documented_and_nothing_else(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    documented: dict[str, set[str]] = {
        path: {m for m in item if m in DOCUMENTED_METHODS}
        for path, item in document["paths"].items()
    }
    registered: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED_ENDPOINTS:
            continue
        methods = {m.lower() for m in rule.methods or ()} & DOCUMENTED_METHODS
        registered.setdefault(_openapi_path(rule.rule), set()).update(methods)
    assert set(documented) == set(registered)
    for path, methods in documented.items():
        assert methods, f"{path}: no operation"
        # Routes that take every method answer the others 405: only GET/POST are documented,
        # and whatever is documented is served.
        assert methods <= registered[path], path
    # The /fhir routes that take only GET in the document answer POST with 405, documented
    # where a POST is meaningful; the CDS routes answer exactly what is documented.
    for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
        assert documented[path] == registered[path] == {"post"}


def test_every_operation_has_schemas_and_errors(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in DOCUMENTED_METHODS:
                continue
            responses = operation["responses"]
            assert "200" in responses, (path, method)
            for status, response in responses.items():
                if status == "401" and path.startswith("/cds-services"):
                    continue  # a bare 401 with WWW-Authenticate
                if status.startswith("3"):
                    assert "Location" in response["headers"], (path, status)
                    continue  # a bare redirect
                assert response.get("content"), (path, method, status)
            if path.startswith("/fhir/") and path != "/fhir/metadata":
                assert any(s.startswith("4") for s in responses), path
            if "security" in operation and operation["security"] != [{}]:
                assert "401" in responses, path
    # Every $ref resolves.
    text = str(document)
    for name in re.findall(r"#/components/schemas/([A-Za-z_]+)", text):
        assert name in schemas, name
    assert {"cdsClientJwt", "accessToken"} <= set(document["components"]["securitySchemes"])


def test_document_is_valid_openapi(app: Flask, tmp_path: Path) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schemathesis.experimental.OPEN_API_3_1.enable()
    schema = schemathesis.from_wsgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 17
