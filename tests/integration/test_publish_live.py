"""Publish the study to a live FHIR server, read it back, publish again: nothing new is created.

Runs only when FHIR_TRIAL_TEST_SERVER names a FHIR R4 base URL (e.g. a HAPI FHIR test server);
FHIR_TRIAL_TEST_TOKEN, if set, is sent as the bearer token. Select with ``pytest -m integration``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.cli import main
from fhir_trial.fhir_api.store import load_resources
from fhir_trial.fhir_http import FhirHttp
from fhir_trial.publish import conditional_url

SERVER = os.environ.get("FHIR_TRIAL_TEST_SERVER", "")
TOKEN = os.environ.get("FHIR_TRIAL_TEST_TOKEN") or None
RESOURCES = Path(__file__).resolve().parent.parent.parent / "resources"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SERVER, reason="set FHIR_TRIAL_TEST_SERVER to a FHIR base URL"),
]


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    found = load_resources(RESOURCES) if RESOURCES.is_dir() else []
    if not found:
        pytest.fail("resources/ is empty: run `fhir-trial build-resources`")
    return found


@pytest.fixture(scope="module")
def http() -> Iterator[FhirHttp]:
    with FhirHttp(SERVER, token=TOKEN) as client:
        yield client


def publish(capsys: pytest.CaptureFixture[str]) -> list[str]:
    args = ["publish", "--fhir-server", SERVER, "--resources-dir", str(RESOURCES)]
    if TOKEN:
        args += ["--token", TOKEN]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    words = {"created", "updated", "unchanged"}
    firsts = [line.split(maxsplit=1)[0] for line in captured.out.splitlines() if line.strip()]
    return [word for word in firsts if word in words]


def find(http: FhirHttp, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The server's copies of a published resource, by the same key publish uses."""
    search = conditional_url(resource)
    if "?" not in search:
        return [http.get_json(search)]
    bundle = http.get_json(search)
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


def test_publish_read_back_and_republish(
    http: FhirHttp, resources: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    first = publish(capsys)
    assert len(first) == len(resources)

    server_ids: dict[str, str] = {}
    for resource in resources:
        copies = find(http, resource)
        key = f"{resource['resourceType']}/{resource['id']}"
        assert len(copies) == 1, f"{key}: {len(copies)} copies on the server"
        found = copies[0]
        assert found["resourceType"] == resource["resourceType"]
        for element in ("url", "version", "status", "name", "title"):
            assert found.get(element) == resource.get(element), f"{key}.{element}"
        server_ids[key] = found["id"]

    second = publish(capsys)
    assert "created" not in second
    assert len(second) == len(resources)
    for resource in resources:
        key = f"{resource['resourceType']}/{resource['id']}"
        copies = find(http, resource)
        assert [c["id"] for c in copies] == [server_ids[key]], key
