"""Publish the study to a live FHIR server twice: exactly one copy of each, every reference resolves.

Runs only when FHIR_TRIAL_TEST_SERVER names a FHIR R4 base URL (HAPI FHIR, Medplum: see
../shared/tools/medplum/ for one on this machine); FHIR_TRIAL_TEST_TOKEN, if set, is sent as the
bearer token. Select with ``pytest -m integration``.
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
from fhir_trial.publish import find_copies, search_key, with_business_key

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


def publish(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Run `fhir-trial publish`; local Type/id -> created | updated | unchanged."""
    args = ["publish", "--fhir-server", SERVER, "--resources-dir", str(RESOURCES)]
    if TOKEN:
        args += ["--token", TOKEN]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "read back:" in captured.out
    outcomes = {}
    for line in captured.out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("created", "updated", "unchanged", "failed"):
            outcomes[words[1].rstrip(":")] = words[0]
    return outcomes


def find(http: FhirHttp, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The server's copies of a published resource, by the same key publish uses."""
    return find_copies(http, search_key(with_business_key(resource)))


def references(value: Any) -> list[str]:
    """Every reference string in a resource."""
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for k, v in value.items() if k != "reference" for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def test_publish_twice_one_copy_each_references_resolve(
    http: FhirHttp, resources: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    first = publish(capsys)
    assert len(first) == len(resources)
    assert "failed" not in first.values()

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
        for ref in references(found):
            if ref.startswith("#") or ref.startswith(("http:", "https:")):
                continue
            target = http.get_json(ref)  # raises (404) when the reference points at nothing
            assert f"{target['resourceType']}/{target['id']}" == ref

    second = publish(capsys)
    assert set(second.values()) == {"unchanged"}, second
    assert len(second) == len(resources)
    for resource in resources:
        key = f"{resource['resourceType']}/{resource['id']}"
        copies = find(http, resource)
        assert [c["id"] for c in copies] == [server_ids[key]], key


def test_a_superseded_library_left_active_is_retired(
    http: FhirHttp, capsys: pytest.CaptureFixture[str]
) -> None:
    # What an earlier release published (one Library for the whole CQL, the same name and
    # version as the main Library now), created here as that release would have left it.
    from fhir_trial.canonical import SUPERSEDED

    (rtype, url), *_ = SUPERSEDED
    old = http.request(
        "POST",
        rtype,
        json={
            "resourceType": rtype,
            "url": url,
            "name": "NCT06010472Eligibility",
            "version": "0.1.0",
            "status": "active",
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/library-type",
                        "code": "logic-library",
                    }
                ]
            },
        },
    ).body
    publish(capsys)
    (copy,) = [c for c in find_copies(http, f"{rtype}?url={url}") if c["id"] == old["id"]]
    assert copy["status"] == "retired" and copy["name"] == "NCT06010472Eligibility"
    assert all(c["status"] == "retired" for c in find_copies(http, f"{rtype}?url={url}"))
