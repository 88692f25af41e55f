"""``fhir-trial publish``: look up, one transaction, read back; per-resource outcomes; failures.

Most tests run against in-memory Medplum-like and HAPI-like servers (tests/publish_servers.py),
each published to twice; the HTTP error paths run against tests/fake_fhir_server.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_fhir_server import FakeFhirServer
from publish_servers import BASE as SIM_BASE
from publish_servers import MIB, SimulatedServer, hapi_like, medplum_like

from fhir_trial import publish as publish_module
from fhir_trial.canonical import BASE, SUPERSEDED
from fhir_trial.cli import main
from fhir_trial.fhir_api.store import load_resources
from fhir_trial.fhir_http import FhirHttp
from fhir_trial.outputs import report_research_subject
from fhir_trial.publish import (
    build_transaction,
    full_url,
    local_ref,
    search_key,
    with_business_key,
)
from fhir_trial.report import EligibilityReport

ROOT = Path(__file__).resolve().parent.parent
PROJECT_RESOURCES = ROOT / "resources"
TOKEN = "publish-token-8c1e"
ACTIONS = ("created", "updated", "unchanged", "failed")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

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


# --- Medplum-like and HAPI-like servers (tests/publish_servers.py), each published to twice -----
@pytest.fixture()
def use_server(monkeypatch: pytest.MonkeyPatch) -> Callable[[SimulatedServer], None]:
    """Route `fhir-trial publish` to a simulated server (the transport FhirHttp uses)."""

    def route(server: SimulatedServer) -> None:
        def connect(base_url: str, token: str | None = None, settings: Any = None) -> FhirHttp:
            return FhirHttp(base_url, token=token, settings=settings, session=server)  # type: ignore[arg-type]

        monkeypatch.setattr(publish_module, "FhirHttp", connect)

    return route


def publish_sim(
    capsys: pytest.CaptureFixture[str], folder: Path, *extra: str
) -> tuple[int, str, str]:
    return run(capsys, "--fhir-server", SIM_BASE, "--resources-dir", str(folder), *extra)


def outcome_of(out: str) -> dict[str, str]:
    """Local Type/id -> action word, from the per-resource lines."""
    found = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ACTIONS:
            found[words[1].rstrip(":")] = words[0]
    return found


def assert_one_copy_each_and_references_resolve(
    server: SimulatedServer, resources: list[dict[str, Any]]
) -> None:
    for resource in resources:
        copies = server.copies(search_key(with_business_key(resource)))
        assert len(copies) == 1, local_ref(resource)
    assert len(server.resources()) == len(resources)
    for stored in server.resources():
        for ref in references_in(stored):
            assert server.resolve(ref) is not None, (stored["resourceType"], ref)


def references_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [
            v if k == "reference" and isinstance(v, str) else r
            for k, v in value.items()
            for r in ([v] if k == "reference" and isinstance(v, str) else references_in(v))
        ]
    if isinstance(value, list):
        return [r for v in value for r in references_in(v)]
    return []


def test_medplum_like_publish_twice(
    use_server: Callable[[SimulatedServer], None],
    resources_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Server ids, no client ids, 1 MiB strings: everything created once, then unchanged."""
    server = medplum_like()
    use_server(server)
    local = load_resources(resources_dir)
    code, out, err = publish_sim(capsys, resources_dir)
    assert (code, err) == (0, ""), err
    assert set(outcome_of(out).values()) == {"created"}
    assert len(outcome_of(out)) == len(local)
    assert f"read back: {len(local)} resources found once each" in out
    assert_one_copy_each_and_references_resolve(server, local)
    (study,) = server.resources("ResearchStudy")
    assert UUID_RE.match(study["id"])
    (org,) = server.resources("Organization")
    assert study["sponsor"]["reference"] == f"Organization/{org['id']}"
    assert study["site"][0]["reference"].startswith("Location/")
    assert server.resolve(study["protocol"][0]["reference"])["resourceType"] == "PlanDefinition"

    server.requests.clear()
    code, out, err = publish_sim(capsys, resources_dir)
    assert (code, err) == (0, ""), err
    assert set(outcome_of(out).values()) == {"unchanged"}
    assert_one_copy_each_and_references_resolve(server, local)
    # nothing written: the CapabilityStatement, one batch of lookups, one batch of read-backs
    assert server.requests == [("GET", "metadata"), ("POST", "(batch)"), ("POST", "(batch)")]


def test_hapi_like_publish_twice_keeps_client_ids(
    use_server: Callable[[SimulatedServer], None],
    resources_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """updateCreate: the project's ids are kept; the second run changes nothing."""
    server = hapi_like()
    use_server(server)
    local = load_resources(resources_dir)
    code, out, err = publish_sim(capsys, resources_dir)
    assert (code, err) == (0, ""), err
    assert set(outcome_of(out).values()) == {"created"}
    assert_one_copy_each_and_references_resolve(server, local)
    study = server.resolve("ResearchStudy/nct06010472")
    assert study is not None
    assert study["sponsor"]["reference"] == "Organization/changhai-hospital"
    assert "ResearchStudy/nct06010472 -> ResearchStudy/nct06010472" in out

    code, out, err = publish_sim(capsys, resources_dir)
    assert (code, err) == (0, ""), err
    assert set(outcome_of(out).values()) == {"unchanged"}
    assert_one_copy_each_and_references_resolve(server, local)


def test_hapi_like_with_server_ids(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = hapi_like()
    use_server(server)
    assert publish_sim(capsys, sample_dir, "--ids", "server")[0] == 0
    (study,) = server.resources("ResearchStudy")
    assert study["id"].isdigit()
    assert publish_sim(capsys, sample_dir, "--ids", "server")[0] == 0
    assert len(server.resources()) == len(SAMPLE)


def test_a_server_without_batch_is_searched_one_key_at_a_time(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = hapi_like()
    server.batch = False
    use_server(server)
    assert publish_sim(capsys, sample_dir)[0] == 0
    server.requests.clear()
    code, out, _ = publish_sim(capsys, sample_dir)
    assert code == 0
    assert set(outcome_of(out).values()) == {"unchanged"}
    searches = [path for method, path in server.requests if method == "GET" and "?" in path]
    # looked up and read back, one by one; and each superseded artifact looked up
    assert len(searches) == 2 * len(SAMPLE) + len(SUPERSEDED)
    assert len(server.resources()) == len(SAMPLE)


def test_client_ids_refused_by_a_medplum_like_server_are_reported(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = medplum_like()
    use_server(server)
    code, out, err = publish_sim(capsys, sample_dir, "--ids", "client")
    assert code == 5
    assert set(outcome_of(out).values()) == {"failed"}
    assert "Invalid id: sponsor" in out and "Invalid id: sponsor" in err
    assert server.resources() == []
    assert len(err.strip().splitlines()) == 1


def test_a_changed_resource_is_updated_the_rest_unchanged(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = medplum_like()
    use_server(server)
    assert publish_sim(capsys, sample_dir)[0] == 0
    path = sample_dir / "ValueSet-sample-vs.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"status": "active"}))
    code, out, _ = publish_sim(capsys, sample_dir)
    assert code == 0
    assert outcome_of(out) == {
        "ValueSet/sample-vs": "updated",
        "Organization/sponsor": "unchanged",
        "Location/site": "unchanged",
        "ResearchStudy/study": "unchanged",
    }
    (valueset,) = server.resources("ValueSet")
    assert (valueset["status"], valueset["meta"]["versionId"]) == ("active", "2")


def test_medplum_like_failure_midway_lists_what_was_left_behind(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The Organization is refused; the server keeps the rest, whose references point at nothing."""
    server = medplum_like()
    use_server(server)
    path = sample_dir / "Organization-sponsor.json"
    good = path.read_text()
    path.write_text(json.dumps(json.loads(good) | {"alias": ["x" * (MIB + 1)]}))
    code, out, err = publish_sim(capsys, sample_dir)
    assert code == 5
    outcomes = outcome_of(out)
    assert outcomes["Organization/sponsor"] == "failed"
    assert outcomes["ValueSet/sample-vs"] == "created"
    # written, but pointing at an Organization that was never created
    assert outcomes["Location/site"] == outcomes["ResearchStudy/study"] == "failed"
    assert "String cannot be larger than 1 MB (at Organization.alias[0])" in out
    assert "does not resolve" in out
    assert "did not roll the transaction back; it kept 3 resources written" in out
    left = out.split("it kept 3 resources written:")[1]
    assert {"ValueSet/sample-vs", "Location/site", "ResearchStudy/study"} == {
        line.split()[0] for line in left.splitlines() if line.startswith("  ")
    }
    (line,) = err.strip().splitlines()
    assert line.startswith("error: 3 of 4 resources not published")
    for name in ("Organization/sponsor", "Location/site", "ResearchStudy/study"):
        assert name in line
    assert "kept 3 resources written" in line

    # fixed and published again: one copy each, every reference resolves
    path.write_text(good)
    code, out, err = publish_sim(capsys, sample_dir)
    assert (code, err) == (0, ""), err
    assert outcome_of(out) == {
        "ValueSet/sample-vs": "unchanged",
        "Organization/sponsor": "created",
        "Location/site": "updated",
        "ResearchStudy/study": "updated",
    }
    assert_one_copy_each_and_references_resolve(server, SAMPLE)


def test_hapi_like_failure_rolls_back_and_every_sent_resource_fails(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = hapi_like()
    use_server(server)
    server.refuse("Location", "Location.status: required binding violated")
    code, out, err = publish_sim(capsys, sample_dir)
    assert code == 5
    assert set(outcome_of(out).values()) == {"failed"}
    assert "Location.status: required binding violated" in out
    assert "the server refused the transaction" in out
    assert "left" not in out and "kept" not in out + err
    assert server.resources() == []
    assert err.startswith("error: 4 of 4 resources not published")


def test_duplicates_on_the_server_are_not_touched(
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two copies match: a conditional update would be 412; it and its dependants are not sent."""
    server = hapi_like()
    use_server(server)
    org = with_business_key(SAMPLE[1])
    for rid in ("a", "b"):
        server.store.setdefault("Organization", {})[rid] = org | {
            "id": rid,
            "meta": {"versionId": "1"},
        }
    code, out, _ = publish_sim(capsys, sample_dir)
    assert code == 5
    outcomes = outcome_of(out)
    assert outcomes["Organization/sponsor"] == "failed"
    assert outcomes["Location/site"] == outcomes["ResearchStudy/study"] == "failed"
    assert outcomes["ValueSet/sample-vs"] == "created"
    assert "2 copies on the server match" in out and "412" in out
    assert "it references Organization/sponsor, which failed" in out
    assert len(server.resources("Organization")) == 2


def test_every_string_of_every_resource_is_under_1_mib(resources_dir: Path) -> None:
    """Servers refuse longer strings (Medplum: "String cannot be larger than 1 MB")."""
    for resource in load_resources(resources_dir):
        for path, value in strings_in(resource, local_ref(resource)):
            assert len(value) < MIB, f"{path}: {len(value)} characters"


def strings_in(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in strings_in(v, f"{path}[{i}]")]
    return []


def test_outputs_reference_the_study_by_its_published_identifier(resources_dir: Path) -> None:
    """ResearchSubject.study names the study by the identifier every server can search."""
    (study,) = [r for r in load_resources(resources_dir) if r["resourceType"] == "ResearchStudy"]
    report = EligibilityReport(
        study="NCT06010472",
        patient="Patient/p1",
        as_of="2026-11-26",
        verdict="eligible",
        criteria=(),
    )
    reference = report_research_subject(report)["study"]
    assert "reference" not in reference
    assert any(
        (i.get("system"), i.get("value")) == tuple(reference["identifier"].values())
        for i in study["identifier"]
    )


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
    assert set(outcome_of(out).values()) == {"created"}


def test_fake_server_publish_twice(
    server: FakeFhirServer, resources_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over real HTTP (tests/fake_fhir_server.py): created, then unchanged, one copy each."""
    local = load_resources(resources_dir)
    assert publish_to(server, resources_dir, capsys)[0] == 0
    code, out, err = publish_to(server, resources_dir, capsys)
    assert (code, err) == (0, "")
    assert set(outcome_of(out).values()) == {"unchanged"}
    assert len(server.resources()) == len(local)


# --- the transaction Bundle ----------------------------------------------------------------------
def test_search_keys() -> None:
    valueset, org, location, study = SAMPLE
    assert search_key(valueset) == (
        "ValueSet?url=https%3A%2F%2Ffhir-trial.org%2Ffhir%2FValueSet%2Fsample-vs&version=0.1.0"
    )
    assert search_key(org) == (
        "Organization?identifier=urn%3Aietf%3Arfc%3A3986%7C"
        "https%3A%2F%2Ffhir-trial.org%2Ffhir%2FOrganization%2Fsponsor"
    )
    # the project's own canonical identifier wins over the official NCT number
    assert "rfc%3A3986" in search_key(study)
    # no url, no identifier: the project's identifier is added and is the key
    assert search_key(location) == (
        "Location?identifier=urn%3Aietf%3Arfc%3A3986%7C"
        "https%3A%2F%2Ffhir-trial.org%2Ffhir%2FLocation%2Fsite"
    )
    assert with_business_key(location)["identifier"] == [
        {"system": "urn:ietf:rfc:3986", "value": f"{BASE}/Location/site"}
    ]


def test_official_identifier_when_there_is_no_canonical_one() -> None:
    study = {
        "resourceType": "ResearchStudy",
        "id": "s",
        "identifier": [
            {"system": "urn:x", "value": "1"},
            {"use": "official", "system": "https://clinicaltrials.gov", "value": "NCT1"},
        ],
    }
    assert search_key(study) == "ResearchStudy?identifier=https%3A%2F%2Fclinicaltrials.gov%7CNCT1"


def test_build_transaction() -> None:
    bundle = build_transaction(SAMPLE)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "transaction")
    entries = bundle["entry"]
    assert [e["request"]["method"] for e in entries] == ["PUT"] * len(SAMPLE)
    assert all("?" in e["request"]["url"] for e in entries)  # conditional, never Type/id
    assert len({e["fullUrl"] for e in entries}) == len(SAMPLE)
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in entries)
    assert build_transaction(SAMPLE) == bundle  # deterministic
    by_type = {e["resource"]["resourceType"]: e["resource"] for e in entries}
    # referenced resources come first
    order = [e["resource"]["resourceType"] for e in entries]
    assert order.index("Organization") < order.index("Location") < order.index("ResearchStudy")
    assert all("id" not in r for r in by_type.values())
    assert "meta" not in by_type["ValueSet"]  # versionId is the server's
    assert by_type["ResearchStudy"]["sponsor"]["reference"] == full_url(SAMPLE[1])
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
    use_server: Callable[[SimulatedServer], None],
    sample_dir: Path,
    capsys: pytest.CaptureFixture[str],
    body: str | dict[str, Any],
    word: str,
) -> None:
    server = medplum_like()
    server.transaction_answer = body
    use_server(server)
    code, out, err = publish_sim(capsys, sample_dir)
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


# --- artifacts the project no longer publishes ---------------------------------------------------
@pytest.mark.parametrize("make_server", [medplum_like, hapi_like], ids=["medplum", "hapi"])
def test_a_superseded_library_still_active_on_the_server_is_retired(
    use_server: Callable[[SimulatedServer], None],
    resources_dir: Path,
    capsys: pytest.CaptureFixture[str],
    make_server: Callable[[], SimulatedServer],
) -> None:
    # What an earlier release published: one Library for the whole CQL, with the name and
    # version the main Library has now. Left active, a consumer looking a library up by
    # name|version finds two.
    server = make_server()
    old_id = "0f3c9a51-2b7e-4c11-9a0e-5d2f8e6b7a10" if server.uuid_ids else "71"
    (rtype, url), *_ = SUPERSEDED
    old = {
        "resourceType": rtype,
        "id": old_id,
        "url": url,
        "name": "NCT06010472Eligibility",
        "version": "0.1.0",
        "status": "active",
        "meta": {"versionId": "3"},
    }
    server.store.setdefault(rtype, {})[old_id] = dict(old)
    use_server(server)
    code, out, err = publish_sim(capsys, resources_dir)
    assert (code, err) == (0, ""), err
    assert f"retired   {rtype}/{old_id}" in out and "1 superseded copies retired" in out
    (kept,) = server.copies(f"{rtype}?url={url}")
    assert kept["status"] == "retired" and kept["name"] == old["name"]  # content kept
    assert kept["meta"]["versionId"] == "4"
    # Published again: nothing left to retire, nothing written.
    server.requests.clear()
    code, out, err = publish_sim(capsys, resources_dir)
    assert (code, err) == (0, "") and "retired" not in out
    assert [m for m, _ in server.requests].count("POST") == 2  # the two batches of searches


def test_a_superseded_library_is_not_retired_when_publishing_failed(
    use_server: Callable[[SimulatedServer], None],
    resources_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = hapi_like()
    (rtype, url), *_ = SUPERSEDED
    server.store.setdefault(rtype, {})["71"] = {
        "resourceType": rtype,
        "id": "71",
        "url": url,
        "status": "active",
        "meta": {"versionId": "1"},
    }
    server.refuse("PlanDefinition", "PlanDefinition rejected by a validator")
    use_server(server)
    code, out, _ = publish_sim(capsys, resources_dir)
    assert code == 5
    assert server.copies(f"{rtype}?url={url}")[0]["status"] == "active"  # the old one still works
    assert "retired" not in out
