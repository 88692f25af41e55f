"""``fhir-trial publish``: one idempotent transaction, per-entry report, one-line failures."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_fhir_server import FakeFhirServer

from fhir_trial.canonical import BASE
from fhir_trial.cli import main
from fhir_trial.fhir_api.store import load_resources
from fhir_trial.fhir_http import FhirHttp
from fhir_trial.publish import build_transaction, conditional_url, full_url

ROOT = Path(__file__).resolve().parent.parent
PROJECT_RESOURCES = ROOT / "resources"
TOKEN = "publish-token-8c1e"

SAMPLE: list[dict[str, Any]] = [
    {
        "resourceType": "ValueSet",
        "id": "sample-vs",
        "url": f"{BASE}/ValueSet/sample-vs",
        "version": "0.1.0",
        "status": "draft",
        "meta": {"versionId": "9"},
    },
    {
        "resourceType": "Organization",
        "id": "sponsor",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"{BASE}/Organization/sponsor"}],
        "name": "Sponsor",
    },
    {
        "resourceType": "Location",
        "id": "site",
        "name": "Site",
        "managingOrganization": {"reference": "Organization/sponsor"},
    },
    {
        "resourceType": "ResearchStudy",
        "id": "study",
        "identifier": [
            {"use": "official", "system": "https://clinicaltrials.gov", "value": "NCT00000000"},
            {"system": "urn:ietf:rfc:3986", "value": f"{BASE}/ResearchStudy/study"},
        ],
        "status": "active",
        "sponsor": {"reference": "Organization/sponsor"},
        "site": [{"reference": "Location/site"}],
    },
]


@pytest.fixture()
def resources_dir(tmp_path: Path) -> Path:
    """A snapshot of the project's real resources/ (built by `fhir-trial build-resources`)."""
    if not any(PROJECT_RESOURCES.glob("*.json")):
        pytest.fail("resources/ is empty: run `fhir-trial build-resources`")
    return Path(shutil.copytree(PROJECT_RESOURCES, tmp_path / "project-resources"))


@pytest.fixture()
def sample_dir(tmp_path: Path) -> Path:
    """A small, known set of resources in a temporary folder."""
    folder = tmp_path / "resources"
    folder.mkdir()
    for resource in SAMPLE:
        name = f"{resource['resourceType']}-{resource['id']}.json"
        (folder / name).write_text(json.dumps(resource), encoding="utf-8")
    return folder


@pytest.fixture()
def server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer(token=TOKEN) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_retries_no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failure tests should not wait for retries; the token comes only from --token."""
    monkeypatch.setenv("FHIR_TRIAL_MAX_RETRIES", "0")
    monkeypatch.delenv("FHIR_TRIAL_TOKEN", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["publish", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def publish_to(
    server: FakeFhirServer, folder: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    return run(
        capsys, "--fhir-server", server.base_url, "--token", TOKEN, "--resources-dir", str(folder)
    )


def actions(out: str) -> list[str]:
    """The action word of every per-entry line of the output."""
    words = {"created", "updated", "unchanged"}
    firsts = [line.split(maxsplit=1)[0] for line in out.splitlines() if line.strip()]
    return [word for word in firsts if word in words]


# --- the real resources, twice -------------------------------------------------------------------
def test_publish_twice_creates_nothing_the_second_time(
    server: FakeFhirServer, resources_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = load_resources(resources_dir)
    code, out, err = publish_to(server, resources_dir, capsys)
    assert (code, err) == (0, "")
    assert actions(out) == ["created"] * len(local)
    assert f"{len(local)} created" in out
    stored = len(server.resources())
    assert stored == len(local)

    code, out, err = publish_to(server, resources_dir, capsys)
    assert (code, err) == (0, "")
    assert actions(out) == ["unchanged"] * len(local)
    assert "0 created" in out
    assert len(server.resources()) == stored
    # exactly one transaction POST per run, nothing else
    assert [(r.method, r.path) for r in server.requests] == [("POST", ""), ("POST", "")]


def test_every_published_resource_is_found_by_its_conditional_url(
    server: FakeFhirServer, resources_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert publish_to(server, resources_dir, capsys)[0] == 0
    with FhirHttp(server.base_url, token=TOKEN) as http:
        for resource in load_resources(resources_dir):
            search = conditional_url(resource)
            found = http.get_json(search)
            if "?" in search:  # fixed-id entries are reads
                assert found["total"] == 1, search
                found = found["entry"][0]["resource"]
            assert found["resourceType"] == resource["resourceType"]
            for key in ("url", "version", "identifier", "name", "title"):
                assert found.get(key) == resource.get(key), (search, key)


def test_references_between_published_resources_point_at_server_ids(
    server: FakeFhirServer, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert publish_to(server, sample_dir, capsys)[0] == 0
    (study,) = server.resources("ResearchStudy")
    (org,) = server.resources("Organization")
    (site,) = server.resources("Location")
    assert study["sponsor"]["reference"] == f"Organization/{org['id']}"
    assert study["site"][0]["reference"] == f"Location/{site['id']}"
    assert site["managingOrganization"]["reference"] == f"Organization/{org['id']}"
    (valueset,) = server.resources("ValueSet")
    assert valueset["meta"]["versionId"] == "1"  # the local meta was not sent


def test_a_changed_resource_is_updated_the_rest_unchanged(
    server: FakeFhirServer, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert publish_to(server, sample_dir, capsys)[0] == 0
    path = sample_dir / "ValueSet-sample-vs.json"
    changed = json.loads(path.read_text()) | {"status": "active"}
    path.write_text(json.dumps(changed))
    code, out, _ = publish_to(server, sample_dir, capsys)
    assert code == 0
    assert sorted(actions(out)) == ["unchanged", "unchanged", "unchanged", "updated"]
    assert "updated   ValueSet/sample-vs" in out
    (valueset,) = server.resources("ValueSet")
    assert (valueset["status"], valueset["meta"]["versionId"]) == ("active", "2")


def test_server_that_does_not_report_no_change_gives_updated_not_created(
    sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeFhirServer(no_change_outcome=False) as quiet:
        base = ["--fhir-server", quiet.base_url, "--resources-dir", str(sample_dir)]
        assert run(capsys, *base)[0] == 0
        code, out, _ = run(capsys, *base)
        assert code == 0
        assert actions(out) == ["updated"] * len(SAMPLE)
        assert len(quiet.resources()) == len(SAMPLE)


def test_throttled_once_then_published(
    server: FakeFhirServer,
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FHIR_TRIAL_MAX_RETRIES", "1")
    server.throttle(retry_after="0")
    code, out, err = publish_to(server, sample_dir, capsys)
    assert (code, err) == (0, "")
    assert actions(out) == ["created"] * len(SAMPLE)


# --- the transaction Bundle ----------------------------------------------------------------------
def test_conditional_urls() -> None:
    valueset, org, location, study = SAMPLE
    assert conditional_url(valueset) == (
        "ValueSet?url=https%3A%2F%2Ffhir-trial.org%2Ffhir%2FValueSet%2Fsample-vs&version=0.1.0"
    )
    assert conditional_url(org) == (
        "Organization?identifier=urn%3Aietf%3Arfc%3A3986%7C"
        "https%3A%2F%2Ffhir-trial.org%2Ffhir%2FOrganization%2Fsponsor"
    )
    # the project's own canonical identifier wins over the official NCT number
    assert "rfc%3A3986" in conditional_url(study)
    assert conditional_url(location) == "Location/site"


def test_official_identifier_when_there_is_no_canonical_one() -> None:
    study = {
        "resourceType": "ResearchStudy",
        "id": "s",
        "identifier": [
            {"system": "urn:x", "value": "1"},
            {"use": "official", "system": "https://clinicaltrials.gov", "value": "NCT1"},
        ],
    }
    assert (
        conditional_url(study) == "ResearchStudy?identifier=https%3A%2F%2Fclinicaltrials.gov%7CNCT1"
    )


def test_build_transaction() -> None:
    bundle = build_transaction(SAMPLE)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "transaction")
    entries = bundle["entry"]
    assert [e["request"]["method"] for e in entries] == ["PUT"] * len(SAMPLE)
    assert len({e["fullUrl"] for e in entries}) == len(SAMPLE)
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in entries)
    assert build_transaction(SAMPLE) == bundle  # deterministic
    valueset, org, location, study = (e["resource"] for e in entries)
    assert "id" not in valueset and "meta" not in valueset and "id" not in org
    assert location["id"] == "site"  # fixed-id entry keeps its id
    assert study["sponsor"]["reference"] == full_url(SAMPLE[1])
    assert SAMPLE[3]["sponsor"]["reference"] == "Organization/sponsor"  # input untouched


def test_dry_run_prints_the_bundle_and_sends_nothing(
    sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--dry-run", "--resources-dir", str(sample_dir))
    assert (code, err) == (0, "")
    bundle = json.loads(out)
    assert bundle["type"] == "transaction"
    assert len(bundle["entry"]) == len(SAMPLE)


# --- failures: one line, documented exit code ----------------------------------------------------
def assert_one_line_failure(code: int, out: str, err: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert TOKEN not in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("status", "expected", "word"),
    [
        (401, 4, "credentials"),
        (403, 4, "denied"),
        (422, 5, "422"),
        (500, 5, "500"),
        (503, 5, "503"),
    ],
)
def test_error_statuses(
    server: FakeFhirServer,
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    expected: int,
    word: str,
) -> None:
    server.fail(status, diagnostics="simulated: resource rejected", times=None)
    code, out, err = publish_to(server, sample_dir, capsys)
    assert_one_line_failure(code, out, err, expected, word)
    if status == 422:
        assert "simulated: resource rejected" in err
    assert server.resources() == []


def test_wrong_token(
    server: FakeFhirServer, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "--fhir-server",
        server.base_url,
        "--token",
        "nope",
        "--resources-dir",
        str(sample_dir),
    )
    assert_one_line_failure(code, out, err, 4, "401")


def test_wrong_base_url_is_a_404(
    server: FakeFhirServer, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "--fhir-server",
        server.base_url + "/nothing-here",
        "--token",
        TOKEN,
        "--resources-dir",
        str(sample_dir),
    )
    assert_one_line_failure(code, out, err, 5, "404")


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("<html><body><h1>Sign in</h1></body></html>", "not answer with FHIR JSON"),
        ({"resourceType": "Patient", "id": "x"}, "Patient"),
        ({"resourceType": "Bundle", "type": "searchset"}, "searchset"),
        ({"resourceType": "Bundle", "type": "transaction-response", "entry": []}, "entries"),
    ],
)
def test_answers_that_are_not_a_transaction_response(
    server: FakeFhirServer,
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
    body: str | dict[str, Any],
    word: str,
) -> None:
    server.fail(200, body=body)
    code, out, err = publish_to(server, sample_dir, capsys)
    assert_one_line_failure(code, out, err, 5, word)


def test_timeout(
    server: FakeFhirServer,
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FHIR_TRIAL_READ_TIMEOUT_S", "0.2")
    server.delay(3.0)
    code, out, err = publish_to(server, sample_dir, capsys)
    assert_one_line_failure(code, out, err, 3, "time limit")


def test_connection_refused(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = run(
        capsys, "--fhir-server", f"http://127.0.0.1:{port}/fhir", "--resources-dir", str(sample_dir)
    )
    assert_one_line_failure(code, out, err, 3, "cannot connect")


# --- bad input -----------------------------------------------------------------------------------
def test_no_server_and_no_dry_run(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--resources-dir", str(sample_dir))
    assert_one_line_failure(code, out, err, 2, "--fhir-server")


def test_missing_resources_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--dry-run", "--resources-dir", str(tmp_path / "absent"))
    assert_one_line_failure(code, out, err, 2, "build-resources")


def test_empty_resources_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--dry-run", "--resources-dir", str(tmp_path))
    assert_one_line_failure(code, out, err, 2, "no resources")


def test_corrupt_resource_file(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(sample_dir / "Location-site.json", sample_dir / "Location-copy.json")
    (sample_dir / "Broken.json").write_text("{not json", encoding="utf-8")
    code, out, err = run(capsys, "--dry-run", "--resources-dir", str(sample_dir))
    assert_one_line_failure(code, out, err, 2, "Broken.json")


def test_duplicate_resource(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(sample_dir / "Location-site.json", sample_dir / "Location-copy.json")
    code, out, err = run(capsys, "--dry-run", "--resources-dir", str(sample_dir))
    assert_one_line_failure(code, out, err, 2, "Location/site")
