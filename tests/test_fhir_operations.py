"""Registry endpoints: PlanDefinition/$apply and ResearchStudy/$screen-population under /fhir.

The evaluator is the oracle: every answer over HTTP must say what ``evaluate`` says on the same
record (built by the Bundle / NDJSON readers the CLI uses). Outputs are validated against the
official R4 JSON Schema in ../shared and the fhir.resources R4B models.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fake_fhir_server import serve_wsgi
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fhir_trial.app import create_app
from fhir_trial.canonical import STUDY_RESOURCE_ID
from fhir_trial.config import DEFAULT_RESOURCES_DIR, Settings
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.demo import DEMO_AS_OF, demo_bundle_paths
from fhir_trial.evaluate import evaluate
from fhir_trial.fhir_api.apply import APPLY_DEFINITION
from fhir_trial.outputs.fhir import PLAN_DEFINITION_URL, SUBJECT_STATUS
from fhir_trial.population import Feasibility
from fhir_trial.record import CATEGORIES
from fhir_trial.report import STATUSES, EligibilityReport
from fhir_trial.sources.bundle import record_from_bundle, records_from_bundle
from fhir_trial.sources.ndjson import NdjsonExport
from fhir_trial.study.operation_definition import (
    SCREEN_POPULATION_DEFINITION,
    screen_population_operation_definition,
)
from fhir_trial.validation import validate_resource

APPLY = f"/fhir/PlanDefinition/{STUDY_RESOURCE_ID}-eligibility/$apply"
APPLY_TYPE = "/fhir/PlanDefinition/$apply"
SCREEN = f"/fhir/ResearchStudy/{STUDY_RESOURCE_ID}/$screen-population"
NDJSON = "application/fhir+ndjson"
SYNTHEA_AS_OF = dt.date(2026, 11, 26)


# ------------------------------------------------------------------------------ helpers
def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    if not any(Path(DEFAULT_RESOURCES_DIR).glob("PlanDefinition-*.json")):
        pytest.fail("resources/ is empty: run `fhir-trial build-resources`")
    # Development mode: these tests are about the operations; tests/test_operation_auth.py
    # covers their access tokens.
    changes.setdefault("cds_development_mode", True)
    return Settings(database_path=str(tmp_path / "db.sqlite3"), **changes)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture()
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


@pytest.fixture()
def schema(shared_dir: Path) -> Path:
    return shared_dir / "schemas" / "fhir.schema.json"


@pytest.fixture(autouse=True)
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of the code under test go here, so tests can see they are cleaned up."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def demo_bundles() -> list[Path]:
    paths = demo_bundle_paths()
    if not paths:
        pytest.fail("fhir_trial/demo/*.json is empty")
    return paths


def merged_bundle(paths: list[Path], bundle_type: str = "collection") -> dict[str, Any]:
    entries = [entry for path in paths for entry in load(path)["entry"]]
    if bundle_type in ("transaction", "batch"):
        for entry in entries:
            resource = entry["resource"]
            entry["request"] = {
                "method": "PUT",
                "url": f"{resource['resourceType']}/{resource['id']}",
            }
    return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}


def apply_body(data: dict[str, Any] | None, **values: Any) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if data is not None:
        params.append({"name": "data", "resource": data})
    for name, value in values.items():
        params.append({"name": name, **value})
    return {"resourceType": "Parameters", "parameter": params}


def fhir_json(response: TestResponse, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "application/fhir+json"
    body = json.loads(response.get_data(as_text=True))
    assert isinstance(body, dict)
    return body


def outcome(response: TestResponse, status: int) -> tuple[str, list[str]]:
    """(diagnostics, expressions) of an error OperationOutcome."""
    body = fhir_json(response, status)
    assert body["resourceType"] == "OperationOutcome"
    (issue,) = body["issue"]
    assert issue["severity"] == "error"
    return str(issue["diagnostics"]), list(issue.get("expression", []))


def no_issues(resource: dict[str, Any], schema: Path) -> None:
    issues = validate_resource(resource, schema_path=schema)
    assert issues == [], [i.line() for i in issues]


def contained(care_plan: dict[str, Any], rtype: str) -> dict[str, Any]:
    (found,) = [c for c in care_plan["contained"] if c["resourceType"] == rtype]
    return found


def results_of(care_plan: dict[str, Any]) -> dict[str, Any]:
    """The verdict and criterion statuses from the contained Parameters."""
    guidance = contained(care_plan, "GuidanceResponse")
    target = guidance["outputParameters"]["reference"].lstrip("#")
    (params,) = [c for c in care_plan["contained"] if c.get("id") == target]
    assert params["resourceType"] == "Parameters"
    out: dict[str, Any] = {}
    for param in params["parameter"]:
        if param["name"] == "verdict":
            out["verdict"] = param["valueCode"]
        elif param["name"] == "asOf":
            out["asOf"] = param["valueDate"]
        elif param["name"] == "criterion":
            parts = {p["name"]: p for p in param["part"]}
            out[parts["id"]["valueCoding"]["code"]] = parts["status"]["valueCode"]
    return out


def oracle(
    bundle: dict[str, Any], settings: Settings, patient: str | None = None
) -> EligibilityReport:
    return evaluate(record_from_bundle(bundle, patient), settings)


def check_care_plan(cp: dict[str, Any], expected: EligibilityReport, schema: Path) -> None:
    """The $apply answer carries the expected report, in valid, self-consistent FHIR."""
    no_issues(cp, schema)
    assert cp["resourceType"] == "CarePlan"
    assert (cp["status"], cp["intent"]) == ("draft", "proposal")
    assert cp["instantiatesCanonical"] == [PLAN_DEFINITION_URL]
    assert cp["subject"] == {"reference": expected.patient}
    ids = [c["id"] for c in cp["contained"]]
    assert len(ids) == len(set(ids))
    assert all("contained" not in c for c in cp["contained"])  # dom-2: no nesting
    # every contained resource is referenced, every local reference resolves (dom-3)
    local = set(re_local_refs(cp))
    assert local == {f"#{i}" for i in ids}
    results = results_of(cp)
    assert results.pop("verdict") == expected.verdict
    assert results.pop("asOf") == expected.as_of
    assert results == expected.statuses()
    subject = contained(cp, "ResearchSubject")
    assert subject["status"] == SUBJECT_STATUS[expected.verdict]
    assert subject["individual"] == {"reference": expected.patient}
    group = contained(cp, "RequestGroup")
    assert group["instantiatesCanonical"] == [PLAN_DEFINITION_URL]
    assert (group["status"], group["intent"]) == ("draft", "proposal")
    *criteria_actions, verdict_action = group["action"]
    if expected.deceased is None:  # "alive at screening" applies first
        alive = criteria_actions.pop(0)
        assert alive["title"] == "Patient alive on the screening date"
    met = [c.id for c in expected.criteria if c.status == "met"]
    assert [a["code"][0]["coding"][0]["code"] for a in criteria_actions] == met
    assert verdict_action["description"] == expected.verdict
    assert verdict_action["resource"] == {"reference": f"#{subject['id']}"}
    guidance = contained(cp, "GuidanceResponse")
    assert guidance["moduleCanonical"] == PLAN_DEFINITION_URL


def re_local_refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item.startswith("#"):
                yield item
            else:
                yield from re_local_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from re_local_refs(item)


def population(body: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per patient ``{verdict, status, criteria, warnings, guidance}`` and the summary."""
    assert body["resourceType"] == "Parameters"
    patients: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {"verdicts": {}, "feasibility": {}}
    for param in body["parameter"]:
        name = param["name"]
        if name == "patient":
            parts = param["part"]
            subject = parts[0]["valueReference"]["reference"]
            entry: dict[str, Any] = {"criteria": {}, "warnings": []}
            for part in parts[1:]:
                if part["name"] == "criterion":
                    cid, status = (p["valueCode"] for p in part["part"])
                    entry["criteria"][cid] = status
                elif part["name"] == "warning":
                    entry["warnings"].append(part["valueString"])
                elif part["name"] == "guidanceResponse":
                    entry["guidance"] = part["resource"]
                else:
                    entry[part["name"]] = next(v for k, v in part.items() if k.startswith("value"))
            assert subject not in patients
            patients[subject] = entry
        elif name == "verdict":
            code, count = param["part"]
            summary["verdicts"][code["valueCode"]] = count["valueInteger"]
        elif name == "feasibility":
            row = {
                p["name"]: next(v for k, v in p.items() if k.startswith("value"))
                for p in param["part"]
            }
            summary["feasibility"][row.pop("id")] = row
        else:
            summary[name] = next(v for k, v in param.items() if k.startswith("value"))
    return patients, summary


def check_population(
    body: dict[str, Any], expected: list[EligibilityReport], schema: Path
) -> dict[str, Any]:
    """The population answer equals the reports computed directly, and its counts add up."""
    no_issues(body, schema)
    patients, summary = population(body)
    assert list(patients) == [r.patient for r in expected]
    for report in expected:
        got = patients[report.patient]
        assert got["verdict"] == report.verdict
        assert got["researchSubjectStatus"] == SUBJECT_STATUS[report.verdict]
        assert got["criteria"] == report.statuses()
        assert got["warnings"] == list(report.warnings)
    feasibility = Feasibility()
    for report in expected:
        feasibility.add(report)
    assert summary["patients"] == len(expected)
    assert summary["asOf"] == expected[0].as_of
    assert summary["verdicts"] == {v: feasibility.verdicts[v] for v in summary["verdicts"]}
    assert sum(summary["verdicts"].values()) == len(expected)
    # Deceased patients are the funnel's first step; the criteria count the living.
    living = [r for r in expected if r.deceased is None]
    assert (summary["deceased"], summary["living"]) == (len(expected) - len(living), len(living))
    for report in expected:
        assert ("deceased" in patients[report.patient]) is (report.deceased is not None)
    assert list(summary["feasibility"]) == [spec.id for spec in CRITERIA]
    for spec in CRITERIA:
        row = summary["feasibility"][spec.id]
        assert sum(row[s] for s in STATUSES) == len(living)
        removed = sum(
            1
            for r in living
            if (spec.kind == "inclusion" and r.statuses()[spec.id] == "not-met")
            or (spec.kind == "exclusion" and r.statuses()[spec.id] == "met")
        )
        if spec.part_of:
            assert "removes" not in row and row["partOf"] == spec.part_of
        else:
            assert row["removes"] == removed
    return summary


def ndjson_lines(bundle_paths: list[Path]) -> bytes:
    """Demo Bundles rewritten as one Bulk NDJSON stream (types mixed, Patients last)."""
    resources = [e["resource"] for p in bundle_paths for e in load(p)["entry"]]
    resources.sort(key=lambda r: r["resourceType"] == "Patient")
    return "".join(json.dumps(r) + "\n" for r in resources).encode()


def export_stream(folder: Path) -> Iterator[bytes]:
    """Every data file of a Bulk export folder, one after the other, in 64 KiB chunks."""
    for path in sorted(folder.glob("*.ndjson")):
        if path.name == "log.ndjson":
            continue
        with path.open("rb") as handle:
            while chunk := handle.read(65536):
                yield chunk
        yield b"\n"


# ------------------------------------------------------------------------------ CapabilityStatement
def test_capability_statement_lists_the_operations(client: FlaskClient) -> None:
    cap = fhir_json(client.get("/fhir/metadata"))
    entries = {r["type"]: r for r in cap["rest"][0]["resource"]}
    (apply_op,) = entries["PlanDefinition"]["operation"]
    assert (apply_op["name"], apply_op["definition"]) == ("apply", APPLY_DEFINITION)
    assert "asOf" in apply_op["documentation"] and "infusionDate" in apply_op["documentation"]
    (screen_op,) = entries["ResearchStudy"]["operation"]
    assert screen_op["name"] == "screen-population"
    assert screen_op["definition"] == SCREEN_POPULATION_DEFINITION
    others = [t for t, r in entries.items() if "operation" in r]
    assert sorted(others) == ["PlanDefinition", "ResearchStudy", "ValueSet"]


def test_without_the_study_resources_nothing_is_claimed_or_served(tmp_path: Path) -> None:
    empty = tmp_path / "no-resources"
    empty.mkdir()
    client = create_app(settings_for(tmp_path, resources_dir=str(empty))).test_client()
    cap = fhir_json(client.get("/fhir/metadata"))
    assert cap["rest"][0]["resource"] == []
    bundle = load(demo_bundles()[0])
    outcome(client.post(APPLY, json=apply_body(bundle)), 404)
    outcome(client.post(SCREEN, json=bundle), 404)


def test_operation_definition_is_valid(schema: Path) -> None:
    definition = screen_population_operation_definition()
    no_issues(definition, schema)
    assert definition["url"] == SCREEN_POPULATION_DEFINITION
    assert definition["code"] == "screen-population"
    assert definition["resource"] == ["ResearchStudy"] and definition["instance"] is True


# ------------------------------------------------------------------------------ $apply
@pytest.mark.parametrize("path", demo_bundle_paths(), ids=lambda p: p.stem)
def test_apply_demo_patient(
    client: FlaskClient, settings: Settings, schema: Path, path: Path
) -> None:
    bundle = load(path)
    body = apply_body(bundle, asOf={"valueDate": DEMO_AS_OF.isoformat()})
    cp = fhir_json(client.post(APPLY, json=body, content_type="application/fhir+json"))
    check_care_plan(cp, oracle(bundle, settings.replace(as_of=DEMO_AS_OF)), schema)


def test_apply_demo_verdicts_are_the_clinical_ones(client: FlaskClient) -> None:
    """Independent of the oracle: what each demo situation must give."""
    verdicts = {}
    for path in demo_bundles():
        body = apply_body(load(path), asOf={"valueDate": DEMO_AS_OF.isoformat()})
        cp = fhir_json(client.post(APPLY, json=body))
        verdicts[path.stem] = results_of(cp)
    assert verdicts["02-over-age-limit"]["inc-age"] == "not-met"
    assert verdicts["03-recent-rituximab"]["exc-b-cell-therapy"] == "met"
    assert verdicts["05-drug-induced-lupus-only"]["verdict"] == "ineligible"
    assert verdicts["01-active-refractory-sle"]["verdict"] != "ineligible"


def test_apply_type_level_with_url_and_dates(
    client: FlaskClient, settings: Settings, schema: Path
) -> None:
    bundle = load(demo_bundles()[0])
    body = apply_body(
        bundle,
        url={"valueCanonical": PLAN_DEFINITION_URL},
        asOf={"valueDate": "2026-12-01"},
        infusionDate={"valueDate": "2026-12-20"},
        subject={"valueReference": {"reference": "Patient/demo-ana"}},
    )
    cp = fhir_json(client.post(APPLY_TYPE, json=body))
    expected = oracle(
        bundle, settings.replace(as_of=dt.date(2026, 12, 1), infusion_date=dt.date(2026, 12, 20))
    )
    check_care_plan(cp, expected, schema)
    assert results_of(cp)["asOf"] == "2026-12-01"


def test_apply_url_with_version_and_context_parameters(client: FlaskClient) -> None:
    version = load(
        Path(DEFAULT_RESOURCES_DIR) / f"PlanDefinition-{STUDY_RESOURCE_ID}-eligibility.json"
    )["version"]
    body = apply_body(
        load(demo_bundles()[0]),
        url={"valueUri": f"{PLAN_DEFINITION_URL}|{version}"},
        userLanguage={"valueCodeableConcept": {"text": "en"}},
    )
    assert fhir_json(client.post(APPLY_TYPE, json=body))["resourceType"] == "CarePlan"
    body["parameter"][1]["valueUri"] = f"{PLAN_DEFINITION_URL}|0.0.0-other"
    _, where = outcome(client.post(APPLY_TYPE, json=body), 404)
    assert where == ["Parameters.parameter[1].valueUri"]


def test_apply_synthea_bundle(
    client: FlaskClient, settings: Settings, schema: Path, shared_dir: Path
) -> None:
    path = sorted((shared_dir / "fixtures/synthea/bundles").glob("*.json"))[0]
    bundle = load(path)
    (patient_id,) = [
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    body = apply_body(
        bundle,
        subject={"valueString": f"Patient/{patient_id}"},
        asOf={"valueDate": SYNTHEA_AS_OF.isoformat()},
    )
    cp = fhir_json(client.post(APPLY, json=body))
    expected = oracle(bundle, settings.replace(as_of=SYNTHEA_AS_OF))
    assert expected.patient == f"Patient/{patient_id}"
    check_care_plan(cp, expected, schema)


def test_apply_picks_the_subject_from_a_bundle_of_several(
    client: FlaskClient, settings: Settings, schema: Path
) -> None:
    paths = demo_bundles()
    bundle = merged_bundle(paths, "transaction")
    for subject in ("Patient/demo-li", "demo-maya"):
        body = apply_body(
            bundle, subject={"valueString": subject}, asOf={"valueDate": DEMO_AS_OF.isoformat()}
        )
        cp = fhir_json(client.post(APPLY, json=body))
        expected = oracle(bundle, settings.replace(as_of=DEMO_AS_OF), subject)
        check_care_plan(cp, expected, schema)
        assert cp["subject"]["reference"].endswith(subject.rsplit("/", 1)[-1])


def test_apply_several_patients_without_subject_is_400_naming_them(client: FlaskClient) -> None:
    bundle = merged_bundle(demo_bundles())
    text, where = outcome(client.post(APPLY, json=apply_body(bundle)), 400)
    for patient in ("Patient/demo-ana", "Patient/demo-li", "Patient/demo-maya"):
        assert patient in text
    assert where == ["Parameters.parameter.where(name = 'subject')"]


def test_apply_subject_not_in_the_bundle_is_422(client: FlaskClient) -> None:
    bundle = load(demo_bundles()[0])
    body = apply_body(bundle, subject={"valueReference": {"reference": "Patient/nobody"}})
    text, where = outcome(client.post(APPLY, json=body), 422)
    assert "Patient/nobody" in text and "Patient/demo-ana" in text
    assert where == ["Parameters.parameter[1].valueReference"]
    no_patient = {"resourceType": "Bundle", "type": "collection", "entry": []}
    text, where = outcome(client.post(APPLY, json=apply_body(no_patient)), 422)
    assert "no Patient" in text and where == ["Parameters.parameter[0].resource"]


DEMO = json.loads(demo_bundle_paths()[0].read_text(encoding="utf-8")) if demo_bundle_paths() else {}


@pytest.mark.parametrize(
    ("body", "status", "expression", "says"),
    [
        (DEMO, 400, "Parameters", "expects a Parameters"),
        (
            {"resourceType": "Parameters", "parameter": {}},
            400,
            "Parameters.parameter",
            "not a list",
        ),
        (apply_body(None), 400, "Parameters.parameter.where(name = 'data')", "'data'"),
        (
            {"resourceType": "Parameters", "parameter": [{"name": "data", "valueString": "x"}]},
            400,
            "Parameters.parameter[0].resource",
            "Bundle",
        ),
        (
            apply_body({"resourceType": "Observation", "status": "final"}),
            400,
            "Parameters.parameter[0].resource",
            "expected a Bundle",
        ),
        (
            apply_body({"resourceType": "Bundle", "type": "history", "entry": []}),
            400,
            "Parameters.parameter[0].resource",
            "history",
        ),
        (
            apply_body(DEMO, subject={"valueString": "Group/g1"}),
            400,
            "Parameters.parameter[1].valueString",
            "not a Group",
        ),
        (
            apply_body(DEMO, subject={"valueBoolean": True}),
            400,
            "Parameters.parameter[1]",
            "valueString or valueReference",
        ),
        (
            apply_body(DEMO, asOf={"valueDate": "26/11/2026"}),
            400,
            "Parameters.parameter[1].valueDate",
            "YYYY-MM-DD",
        ),
        (
            apply_body(DEMO, infusionDate={"valueDate": "2026-02-30"}),
            400,
            "Parameters.parameter[1].valueDate",
            "infusionDate",
        ),
        (
            apply_body(DEMO, asof={"valueDate": "2026-11-26"}),
            400,
            "Parameters.parameter[1]",
            "'asof'",
        ),
        (
            {"resourceType": "Parameters", "parameter": [{"valueString": "x"}]},
            400,
            "Parameters.parameter[0]",
            "without a name",
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "data", "resource": DEMO},
                    {"name": "subject", "valueString": "Patient/a"},
                    {"name": "subject", "valueString": "Patient/b"},
                ],
            },
            400,
            "Parameters.parameter.where(name = 'subject')",
            "$screen-population",
        ),
    ],
    ids=[
        "not-parameters",
        "parameter-not-list",
        "no-data",
        "data-not-resource",
        "data-not-bundle",
        "bundle-type",
        "subject-group",
        "subject-type",
        "bad-date",
        "impossible-date",
        "unknown-name",
        "no-name",
        "two-subjects",
    ],
)
def test_apply_bad_parameters(
    client: FlaskClient, body: dict[str, Any], status: int, expression: str, says: str
) -> None:
    text, where = outcome(client.post(APPLY, json=body), status)
    assert says in text
    assert where == [expression]


def test_apply_type_level_needs_url(client: FlaskClient) -> None:
    text, where = outcome(client.post(APPLY_TYPE, json=apply_body(DEMO)), 400)
    assert PLAN_DEFINITION_URL in text and where == ["Parameters.parameter.where(name = 'url')"]
    other = apply_body(DEMO, url={"valueUri": "https://example.org/PlanDefinition/x"})
    outcome(client.post(APPLY_TYPE, json=other), 404)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "says"),
    [
        (b"{not json", "application/fhir+json", 400, "not JSON (line 1"),
        (b"\xff\xfe\x00garbage", "application/fhir+json", 400, "not JSON"),
        (b"[1, 2]", "application/json", 400, "not a FHIR resource"),
        (b"[" * 100_000, "application/json", 400, "nested too deeply"),
        (b"", "application/fhir+json", 400, "empty"),
        (b"<Parameters/>", "application/fhir+xml", 415, "application/fhir+json"),
        # A lone UTF-16 surrogate is no character: it could not be written back out as UTF-8.
        (b'{"resourceType": "Parameters", "id": "\\ud800"}', "application/json", 400, "not JSON"),
        (b'{"resourceType": "Parameters", "x": NaN}', "application/fhir+json", 400, "not JSON"),
    ],
    ids=["broken", "binary", "array", "deep", "empty", "xml", "lone-surrogate", "nan"],
)
def test_apply_bad_bodies(
    client: FlaskClient, data: bytes, content_type: str, status: int, says: str
) -> None:
    text, _ = outcome(client.post(APPLY, data=data, content_type=content_type), status)
    assert says in text


def test_apply_wrong_method_id_and_encoding(client: FlaskClient) -> None:
    response = client.get(APPLY)
    outcome(response, 405)
    assert response.headers["Allow"] == "POST"
    outcome(client.put(APPLY_TYPE, json=apply_body(DEMO)), 405)
    text, _ = outcome(client.post("/fhir/PlanDefinition/other/$apply", json=apply_body(DEMO)), 404)
    assert "PlanDefinition/other" in text
    gz = client.post(
        APPLY,
        data=b"\x1f\x8b",
        content_type="application/fhir+json",
        headers={"Content-Encoding": "gzip"},
    )
    assert "gzip" in outcome(gz, 415)[0]


def test_apply_body_over_the_limit_is_413(tmp_path: Path) -> None:
    client = create_app(settings_for(tmp_path, max_request_bytes=2000)).test_client()
    body = apply_body(load(demo_bundles()[0]))
    text, _ = outcome(client.post(APPLY, json=body), 413)
    assert "2000 bytes" in text


# ------------------------------------------------------------------------------ $screen-population
@pytest.mark.parametrize("bundle_type", ["collection", "transaction", "batch"])
def test_population_demo_bundle(
    client: FlaskClient, settings: Settings, schema: Path, bundle_type: str
) -> None:
    bundle = merged_bundle(demo_bundles(), bundle_type)
    response = client.post(f"{SCREEN}?asOf={DEMO_AS_OF}", json=bundle)
    expected = [
        evaluate(r, settings.replace(as_of=DEMO_AS_OF)) for r in records_from_bundle(bundle)
    ]
    summary = check_population(fhir_json(response), expected, schema)
    assert summary["feasibility"]["inc-age"]["removes"] >= 1  # 02-over-age-limit
    assert summary["verdicts"]["ineligible"] >= 3


def test_population_demo_ndjson_with_guidance(
    client: FlaskClient, settings: Settings, schema: Path, own_temp_dir: Path
) -> None:
    paths = demo_bundles()
    response = client.post(
        f"{SCREEN}?asOf={DEMO_AS_OF}&guidance=true", data=ndjson_lines(paths), content_type=NDJSON
    )
    body = fhir_json(response)
    run = settings.replace(as_of=DEMO_AS_OF)
    expected = [evaluate(record_from_bundle(load(p)), run) for p in paths]
    patients, _ = population(body)
    for subject, entry in patients.items():
        guidance = entry["guidance"]
        assert guidance["resourceType"] == "GuidanceResponse"
        assert guidance["subject"] == {"reference": subject}
        no_issues(guidance, schema)
    # the schema checks a resource inside Parameters against every type (oneOf): slow, so the
    # GuidanceResponses were validated on their own above and are left out here
    for param in body["parameter"]:
        param["part"] = [p for p in param.get("part", []) if "resource" not in p] or None
        if param["part"] is None:
            del param["part"]
    by_patient = {r.patient: r for r in expected}
    check_population(body, [by_patient[p] for p in patients], schema)
    assert list(own_temp_dir.iterdir()) == []  # spooled upload and index are gone


@pytest.mark.parametrize(
    "tail", [b", ", b', "id": "\\udc00"}'], ids=["truncated", "lone-surrogate"]
)
def test_population_ndjson_unreadable_line_makes_its_category_unknown(
    client: FlaskClient, tail: bytes
) -> None:
    paths = demo_bundles()[:1]
    good = ndjson_lines(paths)
    patient = load(paths[0])["entry"][0]["resource"]
    ref = f"Patient/{patient['id']}"
    broken = b'{"resourceType": "Condition", "subject": {"reference": "' + ref.encode() + b'"}'
    broken += tail + b"\n"
    url = f"{SCREEN}?asOf={DEMO_AS_OF}"
    clean, _ = population(fhir_json(client.post(url, data=good, content_type=NDJSON)))
    spoiled, _ = population(fhir_json(client.post(url, data=broken + good, content_type=NDJSON)))
    assert clean[ref]["criteria"]["exc-malignancy"] == "not-met"
    assert spoiled[ref]["criteria"]["exc-malignancy"] == "unknown"
    assert any("Condition could not be obtained" in w for w in spoiled[ref]["warnings"])
    assert not clean[ref]["warnings"]


def test_codes_that_are_not_text_are_ignored_with_a_warning(client: FlaskClient) -> None:
    bundle = json.loads(json.dumps(DEMO))
    spoiled = 0
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Condition":
            for coding in entry["resource"]["code"]["coding"]:
                coding["code"] = {"value": coding["code"]}
                spoiled += 1
    assert spoiled
    results = results_of(fhir_json(client.post(APPLY, json=apply_body(bundle))))
    assert results["verdict"] in {"eligible", "potentially-eligible", "ineligible"}
    patients, _ = population(fhir_json(client.post(f"{SCREEN}?asOf={DEMO_AS_OF}", json=bundle)))
    (entry,) = patients.values()
    assert "Condition codings whose code is not text were ignored" in " ".join(entry["warnings"])


def test_population_missing_category(client: FlaskClient, settings: Settings) -> None:
    bundle = merged_bundle(demo_bundles())
    url = f"{SCREEN}?asOf={DEMO_AS_OF}&missing=Condition,AllergyIntolerance"
    patients, _ = population(fhir_json(client.post(url, json=bundle)))
    for entry in patients.values():
        assert entry["criteria"]["exc-malignancy"] == "unknown"
        assert entry["criteria"]["exc-drug-allergy"] == "unknown"
        assert any("Condition" in w for w in entry["warnings"])
    ndjson = client.post(url, data=ndjson_lines(demo_bundles()), content_type=NDJSON)
    assert population(fhir_json(ndjson))[0].keys() == patients.keys()


def test_population_synthea_bundles(
    client: FlaskClient, settings: Settings, schema: Path, shared_dir: Path
) -> None:
    paths = sorted((shared_dir / "fixtures/synthea/bundles").glob("*.json"))[:3]
    bundle = merged_bundle(paths)
    response = client.post(f"{SCREEN}?asOf={SYNTHEA_AS_OF}", json=bundle)
    run = settings.replace(as_of=SYNTHEA_AS_OF)
    check_population(
        fhir_json(response), [evaluate(r, run) for r in records_from_bundle(bundle)], schema
    )


@pytest.mark.parametrize(
    ("query", "data", "content_type", "status", "says"),
    [
        ("", b"{nope", "application/fhir+json", 400, "not JSON"),
        ("", b'{"a": 1}', "application/fhir+json", 400, "not a FHIR resource"),
        (
            "",
            json.dumps(DEMO["entry"][0]["resource"] if DEMO else {}).encode(),
            "application/json",
            400,
            "expected a Bundle",
        ),
        (
            "",
            b'{"resourceType": "Bundle", "type": "collection"}',
            "application/fhir+json",
            400,
            "no Patient",
        ),
        (
            "",
            b'{"resourceType": "Bundle", "type": "message"}',
            "application/fhir+json",
            400,
            "message",
        ),
        ("", b"", "application/fhir+json", 400, "empty"),
        ("", b"a,b\n1,2\n", "text/csv", 415, "application/fhir+json"),
        ("", b'{"resourceType": "Condition", "id": "c"}\n', NDJSON, 400, "no Patient"),
        ("", b"not json\n{also not\n", NDJSON, 400, "first problem"),
        ("", b"\n\n", NDJSON, 400, "no lines"),
        ("?asOf=tomorrow", b"{}", "application/fhir+json", 400, "YYYY-MM-DD"),
        ("?infusionDate=2026-13-01", b"{}", "application/fhir+json", 400, "infusionDate"),
        ("?missing=Labs", b"{}", "application/fhir+json", 400, "Labs"),
        ("?guidance=maybe", b"{}", "application/fhir+json", 400, "guidance"),
        ("?patient=x", b"{}", "application/fhir+json", 400, "'patient'"),
    ],
    ids=[
        "broken-json",
        "not-fhir",
        "not-bundle",
        "no-patient",
        "bundle-type",
        "empty",
        "csv",
        "ndjson-no-patient",
        "ndjson-garbage",
        "ndjson-blank",
        "bad-as-of",
        "bad-infusion",
        "bad-missing",
        "bad-guidance",
        "unknown-query",
    ],
)
def test_population_bad_input(
    client: FlaskClient,
    own_temp_dir: Path,
    query: str,
    data: bytes,
    content_type: str,
    status: int,
    says: str,
) -> None:
    text, _ = outcome(client.post(SCREEN + query, data=data, content_type=content_type), status)
    assert says in text
    assert list(own_temp_dir.iterdir()) == []


def test_population_method_study_and_size(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, population_max_ndjson_bytes=3000, population_max_bundle_bytes=2000
    )
    client = create_app(settings).test_client()
    response = client.get(SCREEN)
    outcome(response, 405)
    assert response.headers["Allow"] == "POST"
    outcome(client.post("/fhir/ResearchStudy/other/$screen-population", json=DEMO), 404)
    big = ndjson_lines(demo_bundles())
    assert "3000 bytes" in outcome(client.post(SCREEN, data=big, content_type=NDJSON), 413)[0]
    assert "2000 bytes" in outcome(client.post(SCREEN, json=merged_bundle(demo_bundles())), 413)[0]


def test_population_uploads_have_their_own_limit(tmp_path: Path) -> None:
    """A registry upload is not held to the one-patient limit of the hook and $apply."""
    client = create_app(settings_for(tmp_path, max_request_bytes=3000)).test_client()
    big = ndjson_lines(demo_bundles())
    assert len(big) > 3000
    response = client.post(SCREEN, data=big, content_type=NDJSON)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    patients, _ = population(response.get_json())
    assert len(patients) == len(demo_bundles())
    bundle = merged_bundle(demo_bundles())
    assert client.post(SCREEN, json=bundle).status_code == 200
    body = apply_body(load(demo_bundles()[0]))
    assert "3000 bytes" in outcome(client.post(APPLY, json=body), 413)[0]


# ------------------------------------------------------------------------------ real HTTP
@pytest.fixture()
def live(tmp_path: Path) -> Iterator[str]:
    settings = settings_for(tmp_path)  # default limits: a 10 MB export must go through
    with serve_wsgi(create_app(settings)) as root:
        yield f"{root}/fhir"


def test_over_real_http(live: str, tmp_path: Path, shared_dir: Path, schema: Path) -> None:
    folder = shared_dir / "fixtures/synthea/bulk-ndjson-10-patients"
    settings = settings_for(tmp_path, as_of=SYNTHEA_AS_OF)
    # An upload counts as complete for every type (like a Bundle), unlike a Bulk export folder.
    with NdjsonExport(folder, complete_types=CATEGORIES) as export:
        expected = [evaluate(record, settings) for record in export]
    with requests.Session() as session:
        # chunked upload (no Content-Length) of the whole export as one mixed stream
        response = session.post(
            f"{live}/ResearchStudy/{STUDY_RESOURCE_ID}/$screen-population",
            params={"asOf": SYNTHEA_AS_OF.isoformat()},
            data=export_stream(folder),
            headers={"Content-Type": NDJSON},
            timeout=120,
        )
        assert response.status_code == 200, response.text[:500]
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        body = response.json()
        patients, _ = population(body)
        by_patient = {r.patient: r for r in expected}
        assert sorted(patients) == sorted(by_patient) and len(patients) == 13
        check_population(body, [by_patient[p] for p in patients], schema)

        bundle = load(demo_bundles()[0])
        applied = session.post(
            f"{live}/PlanDefinition/{STUDY_RESOURCE_ID}-eligibility/$apply",
            json=apply_body(bundle, asOf={"valueDate": DEMO_AS_OF.isoformat()}),
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert applied.status_code == 200
        check_care_plan(applied.json(), oracle(bundle, settings.replace(as_of=DEMO_AS_OF)), schema)

        bad = session.post(f"{live}/PlanDefinition/$apply", data=b"{", timeout=30)
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_chunked_upload_over_the_limit_is_413_over_real_http(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, population_max_ndjson_bytes=4096)
    with serve_wsgi(create_app(settings)) as root:
        chunks = (b'{"resourceType": "Observation", "status": "final"}\n' for _ in range(500))
        response = requests.post(
            f"{root}/fhir/ResearchStudy/{STUDY_RESOURCE_ID}/$screen-population",
            data=chunks,
            headers={"Content-Type": NDJSON},
            timeout=30,
        )
        assert response.status_code == 413
        assert response.json()["resourceType"] == "OperationOutcome"
