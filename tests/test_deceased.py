"""Deceased patients (CRITERIA.md, "Real-world records") in every output of the product.

The clinical cases under tests/cases/deceased decide the verdict and the top-level reason for each
shape of Patient.deceased[x] (and feed the CQL oracle); here: the shapes no case can carry (the
CQL engine cannot read them), the verdict rule, and what every output says: the JSON key and
reason, the text's first line, the FHIR outputs, the CDS service (no card), the worksheet, the
population funnel (a step before the first criterion), `screen-population` per-patient lines and
`$apply`.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    FHIR_BASE,
    SERVICE_PATH,
    assert_valid,
    base_settings,
    bearer,
    full_prefetch,
    hook_request,
    make_app,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)

from fhir_trial.app import create_app
from fhir_trial.cds_hooks.worksheet import render_worksheet
from fhir_trial.cli import main
from fhir_trial.config import Settings
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.deceased import VitalStatus, vital_status
from fhir_trial.demo import DEMO_AS_OF, demo_bundle_paths
from fhir_trial.evaluate import evaluate, final_verdict
from fhir_trial.outputs import report_guidance_response, report_research_subject, report_text
from fhir_trial.population import Feasibility, Screened, verdict_line
from fhir_trial.report import EligibilityReport
from fhir_trial.sources.bundle import record_from_bundle
from fhir_trial.sources.ndjson import records_from_ndjson
from fhir_trial.validation import validate_resource

AS_OF = dt.date(2026, 11, 26)
UNROUTABLE = "http://127.0.0.1:9/fhir"  # discard port: any fetch would fail
DEMO = next(p for p in demo_bundle_paths() if p.stem == "01-active-refractory-sle")


def demo_bundle(**patient_fields: Any) -> dict[str, Any]:
    """The demo patient with active refractory SLE (potentially eligible), Patient changed."""
    bundle: dict[str, Any] = json.loads(DEMO.read_text(encoding="utf-8"))
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"].update(copy.deepcopy(patient_fields))
    return bundle


def screened(bundle: dict[str, Any], as_of: dt.date = DEMO_AS_OF) -> EligibilityReport:
    return evaluate(record_from_bundle(bundle), Settings(as_of=as_of))


@pytest.fixture(scope="module")
def deceased_report() -> EligibilityReport:
    return screened(demo_bundle(deceasedDateTime="2026-11-14T08:15:00+08:00"))


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    ("patient", "state"),
    [
        ({"deceasedDateTime": 20261114}, "unclear"),  # a number: the CQL engine cannot read it
        ({"deceasedDateTime": ""}, "unclear"),
        ({"deceasedDateTime": "2026-11-14 10:00"}, "unclear"),  # not a FHIR dateTime
        ({"deceasedDateTime": "14/11/2026"}, "unclear"),
        ({"deceasedDateTime": {"value": "2026-11-14"}}, "unclear"),
        ({"deceasedBoolean": "yes"}, "unclear"),
        ({"deceasedBoolean": 1}, "unclear"),
        ({"deceasedBoolean": "true", "deceasedDateTime": "2026-11-14"}, "unclear"),
        ({"_deceasedBoolean": {"extension": []}}, "unclear"),
        ({"deceasedBoolean": True, "deceasedDateTime": "garbage"}, "deceased"),
        ({"deceasedBoolean": True, "deceasedDateTime": "2027-01-01"}, "deceased"),
        ({"deceasedBoolean": False, "deceasedDateTime": "2027-01-01"}, "alive"),
        ({"deceasedBoolean": None}, "alive"),
        ({"active": False}, "alive"),
        ({}, "alive"),
    ],
)
def test_vital_status_shapes(patient: dict[str, Any], state: str) -> None:
    status = vital_status({"resourceType": "Patient", **patient}, AS_OF)
    assert status.state == state, status
    if state == "unclear":
        assert status.deceased is None and status.warning and status.reason
        assert "check" in status.reason
    if state == "alive":
        assert status == VitalStatus()


def test_no_patient_is_not_a_death() -> None:
    assert vital_status(None, AS_OF).state == "alive"


def test_boolean_with_an_unreadable_date_still_warns() -> None:
    status = vital_status({"deceasedBoolean": True, "deceasedDateTime": "garbage"}, AS_OF)
    assert status.deceased is True and status.reason == (
        "recorded as deceased (Patient.deceasedBoolean true)"
    )
    assert status.warning and "deceasedDateTime" in status.warning


def test_verdict_rule() -> None:
    deceased = VitalStatus("deceased", True, "recorded as deceased")
    unclear = VitalStatus("unclear", None, "cannot be read", "cannot be read")
    for verdict in ("eligible", "potentially-eligible", "ineligible"):
        assert final_verdict(verdict, deceased) == "ineligible"  # type: ignore[arg-type]
        assert final_verdict(verdict, VitalStatus()) == verdict  # type: ignore[arg-type]
    # Unreadable death data: never eligible, never ineligible for it alone.
    assert final_verdict("eligible", unclear) == "potentially-eligible"
    assert final_verdict("potentially-eligible", unclear) == "potentially-eligible"
    assert final_verdict("ineligible", unclear) == "ineligible"


def test_number_as_death_date_is_unclear_in_the_report() -> None:
    report = screened(demo_bundle(deceasedDateTime=20261114))
    assert report.verdict == "potentially-eligible"
    assert report.deceased is None and report.reason and "cannot be read" in report.reason
    assert any("deceasedDateTime 20261114" in w for w in report.warnings)


# ----------------------------------------------------------------------------- outputs
def test_json_carries_deceased_and_reason(deceased_report: EligibilityReport) -> None:
    out = deceased_report.to_json()
    assert list(out)[:7] == [
        "study",
        "patient",
        "asOf",
        "verdict",
        "reason",
        "deceased",
        "criteria",
    ]
    assert out["verdict"] == "ineligible"
    assert out["deceased"] == "2026-11-14T08:15:00+08:00"
    assert out["reason"] == "deceased on 2026-11-14"
    assert len(out["criteria"]) == 29  # the criteria are still reported
    assert out["criteria"][2]["id"] == "inc-sle-diagnosis"
    assert out["criteria"][2]["status"] == "met"


def test_json_without_death_has_neither_key() -> None:
    out = screened(demo_bundle(deceasedBoolean=False)).to_json()
    assert "deceased" not in out and "reason" not in out
    assert out["verdict"] == "potentially-eligible"


def test_boolean_only_gives_true(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dead.json"
    path.write_text(json.dumps(demo_bundle(deceasedBoolean=True)))
    assert main(["screen", "--bundle", str(path), "--as-of", "2026-11-26", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["verdict"], out["deceased"], out["reason"]) == (
        "ineligible",
        True,
        "recorded as deceased (Patient.deceasedBoolean true)",
    )


def test_text_says_it_first(deceased_report: EligibilityReport) -> None:
    first = report_text(deceased_report, width=120).splitlines()[0]
    assert first.startswith("DECEASED: deceased on 2026-11-14.")
    assert "Not eligible whatever the criteria say" in first
    assert "inc-sle-diagnosis" in report_text(deceased_report)


def test_text_of_an_unclear_vital_status_says_check_first() -> None:
    report = screened(demo_bundle(deceasedDateTime="2026-13-45"))
    first = report_text(report, width=120).splitlines()[0]
    assert first.startswith("CHECK FIRST: whether the patient was alive")


def test_text_of_a_living_patient_is_unchanged() -> None:
    report = screened(demo_bundle())
    assert report_text(report).startswith("NCT06010472 screening of")


def test_fhir_outputs_say_it(deceased_report: EligibilityReport, shared_dir: Path) -> None:
    schema = shared_dir / "schemas" / "fhir.schema.json"
    guidance = report_guidance_response(deceased_report)
    assert guidance["reasonCode"] == [
        {
            "text": "deceased on 2026-11-14",
            "coding": [
                {"system": "http://snomed.info/sct", "code": "419099009", "display": "Dead"}
            ],
        }
    ]
    assert guidance["note"] == [{"text": "deceased on 2026-11-14"}]
    params = {p["name"]: p for p in guidance["contained"][0]["parameter"]}
    assert params["verdict"]["valueCode"] == "ineligible"
    assert params["deceased"] == {
        "name": "deceased",
        "valueDateTime": "2026-11-14T08:15:00+08:00",
    }
    assert params["reason"]["valueString"] == "deceased on 2026-11-14"
    subject = report_research_subject(deceased_report)
    assert subject["status"] == "ineligible"  # never a candidate
    for resource in (guidance, subject):
        issues = validate_resource(resource, schema_path=schema)
        assert issues == [], [i.line() for i in issues]


def test_fhir_output_of_a_partial_or_boolean_death(shared_dir: Path) -> None:
    schema = shared_dir / "schemas" / "fhir.schema.json"
    for fields, expected in (
        ({"deceasedBoolean": True}, {"valueBoolean": True}),
        ({"deceasedDateTime": "2026-11"}, {"valueDateTime": "2026-11"}),
        # FHIR wants seconds with a time: kept as written, as text
        ({"deceasedDateTime": "2026-11-14T10:00"}, {"valueString": "2026-11-14T10:00"}),
    ):
        guidance = report_guidance_response(screened(demo_bundle(**fields)))
        (param,) = [p for p in guidance["contained"][0]["parameter"] if p["name"] == "deceased"]
        assert param == {"name": "deceased", **expected}
        assert validate_resource(guidance, schema_path=schema) == []


# ----------------------------------------------------------------------------- CDS Hooks
@pytest.fixture()
def real_client(tmp_path: Path, shared_dir: Path) -> Any:
    """The CDS app with the real evaluator, trusting the sandbox issuer."""

    def build(**changes: Any) -> Any:
        issuer = sandbox_issuer(shared_dir, fhir_servers=[FHIR_BASE, UNROUTABLE])
        issuers = write_issuers(tmp_path / "issuers.json", [issuer])
        settings = base_settings(tmp_path, cds_trusted_issuers_file=issuers, **changes)
        return make_app(settings, evaluator=None).test_client()

    return build


def _hook(client: Any, shared_dir: Path, body: dict[str, Any]) -> Any:
    response = client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid("response", response.get_json())
    return response.get_json()


def _dead_prefetch(**fields: Any) -> dict[str, Any]:
    prefetch = full_prefetch()
    prefetch["patient"] = {**prefetch["patient"], **fields}
    return prefetch


def test_cds_living_patient_gets_a_card(real_client: Any, shared_dir: Path) -> None:
    cards = _hook(real_client(), shared_dir, hook_request(full_prefetch()))["cards"]
    assert len(cards) == 1 and "suggestions" in cards[0]


@pytest.mark.parametrize(
    "fields",
    [
        {"deceasedBoolean": True},
        {"deceasedDateTime": "2026-11-12T14:20:00Z"},
        {"deceasedDateTime": "2026"},
    ],
)
def test_cds_no_card_for_a_deceased_patient(
    real_client: Any, shared_dir: Path, fields: dict[str, Any]
) -> None:
    body = _hook(real_client(), shared_dir, hook_request(_dead_prefetch(**fields)))
    assert body == {"cards": []}


def test_cds_no_card_even_when_ineligible_cards_are_on(real_client: Any, shared_dir: Path) -> None:
    client = real_client(cds_cards_for_ineligible=True)
    prefetch = _dead_prefetch(deceasedBoolean=True)
    assert _hook(client, shared_dir, hook_request(prefetch)) == {"cards": []}
    # The same setting does give a living ineligible (male) patient a card.
    male = full_prefetch(gender="male")
    assert len(_hook(client, shared_dir, hook_request(male))["cards"]) == 1


def test_cds_deceased_with_only_the_patient_fetches_nothing(
    real_client: Any, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing the EHR still holds changes "no card": no 412, and nothing is fetched."""

    def no_fetch(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a deceased patient's record was fetched")

    monkeypatch.setattr("fhir_trial.cds_hooks.service.FhirFetcher", no_fetch)
    body = hook_request(
        {"patient": _dead_prefetch(deceasedDateTime="2026-11-01")["patient"]},
        fhirServer=UNROUTABLE,
    )
    assert _hook(real_client(), shared_dir, body) == {"cards": []}


def test_cds_unreadable_death_date_card_says_check_first(
    real_client: Any, shared_dir: Path
) -> None:
    prefetch = _dead_prefetch(deceasedDateTime="2026-13-45")
    (card,) = _hook(real_client(), shared_dir, hook_request(prefetch))["cards"]
    assert "**Check first:** whether the patient was alive" in card["detail"]
    assert "deceasedDateTime '2026-13-45' is not a readable date" in card["detail"]


def test_cds_death_after_the_screening_date_still_gets_a_card(
    real_client: Any, shared_dir: Path
) -> None:
    prefetch = _dead_prefetch(deceasedDateTime="2026-12")
    assert len(_hook(real_client(), shared_dir, hook_request(prefetch))["cards"]) == 1


# ----------------------------------------------------------------------------- worksheet
def test_worksheet_says_deceased_first(deceased_report: EligibilityReport) -> None:
    page = render_worksheet(deceased_report.to_json())
    assert 'id="deceased"' in page
    assert page.index("Deceased: deceased on 2026-11-14") < page.index('id="summary"')
    assert "criterion-inc-sle-diagnosis" in page  # criteria still shown


def test_worksheet_of_a_living_patient_has_no_banner() -> None:
    page = render_worksheet(screened(demo_bundle()).to_json())
    assert 'id="deceased"' not in page and 'id="vital-status"' not in page


# ----------------------------------------------------------------------------- population
def test_feasibility_counts_the_deceased_before_the_criteria(
    deceased_report: EligibilityReport,
) -> None:
    living = screened(demo_bundle())
    male = screened(demo_bundle(gender="male", deceasedBoolean=True))
    feasibility = Feasibility()
    for report in (deceased_report, living, male):
        feasibility.add(report)
    assert (feasibility.total, feasibility.deceased, feasibility.living) == (3, 2, 1)
    # Deceased patients: ineligible, never (potentially) eligible.
    assert feasibility.verdicts == {"ineligible": 2, "potentially-eligible": 1}
    # Every criterion count is over the one living patient.
    for spec in CRITERIA:
        assert sum(feasibility.statuses[spec.id].values()) == 1, spec.id
    funnel = dict(feasibility.funnel())
    assert funnel["inc-age"] == 1
    data = feasibility.to_json()
    assert (data["patients"], data["deceased"], data["living"]) == (3, 2, 1)
    rows = list(csv.DictReader(io.StringIO(feasibility.to_csv())))
    assert (rows[0]["id"], rows[0]["removes"], rows[0]["remaining"]) == ("deceased", "2", "1")
    assert rows[1]["id"] == "inc-age" and rows[1]["remaining"] == "1"
    text = feasibility.to_text().splitlines()
    step = next(i for i, line in enumerate(text) if line.strip().startswith("deceased "))
    assert text[step].split() == ["deceased", "2", "1", "33.3%"]  # removed, left, left%
    assert text[step + 1].strip().startswith("inc-age")


def test_merge_adds_the_deceased_step(deceased_report: EligibilityReport) -> None:
    one, two = Feasibility(), Feasibility()
    one.add(deceased_report)
    two.add(screened(demo_bundle()))
    one.merge(two)
    assert (one.total, one.deceased, one.living) == (2, 1, 1)


def test_verdict_line_names_the_death(deceased_report: EligibilityReport) -> None:
    line = verdict_line(Screened(deceased_report))
    assert line.startswith("ineligible") and line.endswith(": deceased on 2026-11-14")


def test_bulk_export_deceased_patients_are_a_step(shared_dir: Path) -> None:
    """Synthea's export holds patients who died years ago: counted before the criteria."""
    folder = shared_dir / "fixtures" / "synthea" / "bulk-ndjson-10-patients"
    feasibility = Feasibility()
    for record in records_from_ndjson(folder):
        feasibility.add(evaluate(record, Settings(as_of=AS_OF)))
    assert feasibility.total == 13
    assert feasibility.deceased == 3
    assert all(sum(c.values()) == 10 for c in feasibility.statuses.values())


def test_screen_population_lines_carry_deceased(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps(demo_bundle(deceasedDateTime="2026-11-14")))
    alive = tmp_path / "alive.json"
    alive.write_text(json.dumps(demo_bundle()))
    out_file = tmp_path / "out.jsonl"
    args = ["screen-population", "--bundles", str(dead), str(alive), "--as-of", "2026-11-26"]
    assert main([*args, "--output", str(out_file), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "deceased on 2026-11-14" in text
    lines = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    by_deceased = {line.get("deceased"): line for line in lines}
    assert set(by_deceased) == {"2026-11-14", None}
    assert by_deceased["2026-11-14"]["verdict"] == "ineligible"
    assert by_deceased["2026-11-14"]["reason"] == "deceased on 2026-11-14"
    assert by_deceased[None]["verdict"] == "potentially-eligible"


# ----------------------------------------------------------------------------- $apply
def test_apply_deceased_patient(tmp_path: Path, shared_dir: Path) -> None:
    # Development mode: $apply needs an access token otherwise (tests/test_operation_auth.py).
    settings = Settings(database_path=str(tmp_path / "db.sqlite3"), cds_development_mode=True)
    client = create_app(settings).test_client()
    schema = shared_dir / "schemas" / "fhir.schema.json"

    def apply(bundle: dict[str, Any]) -> dict[str, Any]:
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "data", "resource": bundle},
                {"name": "asOf", "valueDate": DEMO_AS_OF.isoformat()},
            ],
        }
        response = client.post(
            "/fhir/PlanDefinition/nct06010472-eligibility/$apply",
            json=body,
            content_type="application/fhir+json",
        )
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        care_plan: dict[str, Any] = response.get_json()
        assert validate_resource(care_plan, schema_path=schema) == []
        return care_plan

    def part(care_plan: dict[str, Any], rtype: str) -> dict[str, Any]:
        (found,) = [c for c in care_plan["contained"] if c["resourceType"] == rtype]
        return found

    dead = apply(demo_bundle(deceasedDateTime="2026-11-14"))
    assert dead["description"].endswith(": ineligible (deceased on 2026-11-14)")
    assert part(dead, "ResearchSubject")["status"] == "ineligible"
    assert part(dead, "GuidanceResponse")["reasonCode"][0]["text"] == "deceased on 2026-11-14"
    titles = [a["title"] for a in part(dead, "RequestGroup")["action"]]
    assert "Patient alive on the screening date" not in titles
    assert part(dead, "RequestGroup")["action"][-1]["description"] == "ineligible"

    alive = apply(demo_bundle())
    assert (
        part(alive, "RequestGroup")["action"][0]["title"] == "Patient alive on the screening date"
    )
    assert part(alive, "ResearchSubject")["status"] == "candidate"
