"""Screen patients held on a live FHIR server by REST, from a Bundle and through the CDS service.

Runs only when FHIR_TRIAL_TEST_SERVER names a FHIR R4 base URL (Medplum, HAPI FHIR: see
../shared/tools/medplum/ for one on this machine); FHIR_TRIAL_TEST_TOKEN, if set, is sent as the
bearer token (and handed to the CDS service as ``fhirAuthorization``).

What it does:
1. loads a handful of clinical cases (tests/cases) and Synthea records (../shared/fixtures) onto
   the server, each as one transaction of conditional creates (``If-None-Exist`` on an identifier
   the test adds, so a re-run finds them instead of duplicating them), with ``urn:uuid`` fullUrls
   the server rewrites to its own ids;
2. makes sure the study is published (tests/integration/test_publish_live.py tests publishing);
3. screens each patient by REST (:class:`FhirClient`) and from a Bundle of the very resources the
   server stored (read back by their server ids), and compares every criterion: REST and Bundle
   must agree (the differences are printed);
4. calls the CDS service without prefetch: it fetches from the server, and its card must say what
   the REST screening says.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cds_helpers import (
    SERVICE_PATH,
    bearer,
    hook_request,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)
from clinical_cases import CASES_DIR, load_case

from fhir_trial.app import create_app
from fhir_trial.cli import main
from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.fhir_http import FhirHttp
from fhir_trial.report import EligibilityReport
from fhir_trial.sources.bundle import record_from_bundle
from fhir_trial.sources.fhir_client import FhirClient

SERVER = os.environ.get("FHIR_TRIAL_TEST_SERVER", "").rstrip("/")
TOKEN = os.environ.get("FHIR_TRIAL_TEST_TOKEN") or None
ROOT = Path(__file__).resolve().parent.parent.parent
RESOURCES = ROOT / "resources"
SYNTHEA = ROOT.parent / "shared" / "fixtures" / "synthea" / "bundles"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SERVER, reason="set FHIR_TRIAL_TEST_SERVER to a FHIR base URL"),
]

# The identifier system the test stamps on everything it loads (the If-None-Exist key).
TEST_SYSTEM = "https://fhir-trial.org/fhir/NamingSystem/integration-test"
_NAMESPACE = uuid.UUID("6f1d8c1e-52a4-4d0c-9a43-0c7a3f0a7e11")

# Varied clinical cases: SLE with labs and medications, a deceased patient, values inside panel
# components, a patient on another trial, Chinese local-code medications.
CASES = [
    "verdict/potentially-eligible-awaiting-manual-items",
    "deceased/died-two-weeks-ago-is-ineligible",
    "exc-heart-failure/nyha-class-iv-as-component-is-met",
    "inc-ana/panel-with-if-titer-1-320-component-meets",
    "exc-recent-trial/on-another-study-now",
    "inc-prior-therapy/chinese-local-codes-prednisone-and-mmf-200-days",
    # ... and shapes where the REST searches could lose what a Bundle holds: referenced, contained
    # and local-code medications, routes under other code systems, values in components.
    "exc-b-cell-therapy/rituximab-via-referenced-medication",
    "exc-b-cell-therapy/belimumab-active-request",
    "exc-drug-allergy/fludarabine-snomed-substance-allergy",
    "exc-drug-allergy/cyclophosphamide-in-words-only-needs-review",
    "exc-iv-antibiotics/ongoing-iv-antibiotic-before-later-infusion",
    "exc-iv-antibiotics/who-icd10-acute-cystitis-n30-0-active-needs-review",
    "exc-pregnancy-lactation/hcg-component-above-its-range-is-met",
    "exc-abnormal-labs/component-flagged-hh-is-listed",
    "inc-prior-therapy/contained-medication-with-ingredient",
    "exc-malignancy/icd10-gm-breast-cancer-status-after-z-needs-review",
    "inc-anti-dsdna/component-flagged-high-meets",
    # NYHA assessments found by their LOINC code (88020-3) or their LOINC answer, in a panel too.
    "exc-heart-failure/nyha-observation-with-loinc-answer-class-iv-met",
    "exc-heart-failure/loinc-assessment-without-words-valued-as-text-needs-review",
    "exc-heart-failure/loinc-class-ii-answer-after-snomed-class-iii-not-met",
    "exc-heart-failure/nyha-loinc-answer-in-panel-component-met",
    "exc-heart-failure/class-iii-answer-of-another-scale-is-not-nyha",
    # ... and one named only in words (found with code:text).
    "exc-heart-failure/nyha-class-as-text-after-class-ii-needs-review",
]
SYNTHEA_RECORDS = ["Hershel_Marvin", "Willy_Koepp"]
SYNTHEA_AS_OF = dt.date(2026, 11, 26)
# Synthea resource types kept: those the screening reads (claims, encounters, care plans are
# noise here, and their conditional references to practitioners would not resolve).
SCREENED_TYPES = {
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "MedicationDispense",
    "Medication",
    "AllergyIntolerance",
    "Procedure",
    "Consent",
    "ResearchSubject",
    "ResearchStudy",
}


# ------------------------------------------------------------------------------------------ data
@dataclass
class LivePatient:
    """A patient loaded onto the server: its name, server id, screening settings, stored data."""

    name: str
    patient_id: str
    settings: Settings
    stored: list[dict[str, Any]]  # every resource as the server holds it (read back by id)


def case_resources(name: str) -> tuple[list[dict[str, Any]], Settings]:
    """A clinical case's resources and settings; a ResearchStudy it names but lacks is added."""
    case = load_case(CASES_DIR / f"{name}.yaml")
    resources = copy.deepcopy(case.resources)
    present = {f"{r['resourceType']}/{r['id']}" for r in resources}
    for ref in sorted(_references(resources)):
        if ref.startswith("ResearchStudy/") and ref not in present:
            # The case names another trial by reference only; on a server it must exist.
            resources.append(
                {
                    "resourceType": "ResearchStudy",
                    "id": ref.split("/", 1)[1],
                    "status": "active",
                    "title": f"Another trial ({ref})",
                }
            )
    return resources, case.settings_object()


def synthea_resources(prefix: str) -> list[dict[str, Any]]:
    """One Synthea record (the resource types the screening reads), ids taken from fullUrls."""
    path = next(iter(sorted(SYNTHEA.glob(f"{prefix}_*.json"))), None)
    if path is None:
        pytest.fail(f"no Synthea bundle {prefix}_*.json in {SYNTHEA}")
    bundle = json.loads(path.read_text(encoding="utf-8"))
    kept = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in SCREENED_TYPES:
            resource = copy.deepcopy(resource)
            resource.setdefault("id", str(entry["fullUrl"]).rsplit(":", 1)[-1])
            kept.append(resource)
    return kept


def _references(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["reference"]} if isinstance(node.get("reference"), str) else set()
        for value in node.values():
            found |= _references(value)
        return found
    if isinstance(node, list):
        return set().union(*(_references(v) for v in node)) if node else set()
    return set()


def _rewrite(node: Any, urns: dict[str, str]) -> Any:
    """References to loaded resources become their urn:uuid; others are dropped (kept: display)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and not value.startswith("#"):
                if value in urns:
                    out[key] = urns[value]
                continue
            new = _rewrite(value, urns)
            if new is not None and new != [] and new != {}:
                out[key] = new
        if "reference" in node and not out:
            return None  # a reference to something not loaded, with nothing else to keep
        return out
    if isinstance(node, list):
        items = [_rewrite(v, urns) for v in node]
        return [v for v in items if v is not None and v != {}]
    return node


def transaction(name: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction of conditional creates (keyed by an added identifier) with urn:uuid fullUrls."""
    urns = {}
    for resource in resources:
        key = f"{resource['resourceType']}/{resource['id']}"
        urn = f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{name}/{key}')}"
        urns[key] = urn
        urns[f"urn:uuid:{resource['id']}"] = urn  # Synthea's own references
    entries = []
    for resource in resources:
        urn = urns[f"{resource['resourceType']}/{resource['id']}"]
        body = _rewrite({k: v for k, v in resource.items() if k not in ("id", "meta")}, urns)
        value = urn.rsplit(":", 1)[-1]
        body["identifier"] = [
            *body.get("identifier", []),
            {"system": TEST_SYSTEM, "value": value},
        ]
        entries.append(
            {
                "fullUrl": urn,
                "resource": body,
                "request": {
                    "method": "POST",
                    "url": resource["resourceType"],
                    "ifNoneExist": f"identifier={TEST_SYSTEM}|{value}",
                },
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _server_key(entry: dict[str, Any], rtype: str) -> str:
    """``Type/id`` of a transaction-response entry (its location, or the returned resource)."""
    location = (entry.get("response") or {}).get("location") or ""
    parts = location.split("/_history")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == rtype:
        return f"{rtype}/{parts[-1]}"
    resource = entry.get("resource") or {}
    assert resource.get("id"), f"no server id in the transaction response: {entry}"
    return f"{rtype}/{resource['id']}"


def post_transaction(http: FhirHttp, name: str, bundle: dict[str, Any]) -> list[str]:
    """Post a transaction; the server's ``Type/id`` of each entry, in order."""
    answer = http.request("POST", "", json=bundle).body
    responses = answer.get("entry") or []
    assert len(responses) == len(bundle["entry"]), f"{name}: {json.dumps(answer)[:2000]}"
    keys = []
    for sent, got in zip(bundle["entry"], responses, strict=True):
        status = str((got.get("response") or {}).get("status", ""))
        assert status[:1] == "2", f"{name}: {sent['request']['url']} answered {got}"
        keys.append(_server_key(got, sent["resource"]["resourceType"]))
    return keys


def load(
    http: FhirHttp, name: str, resources: list[dict[str, Any]], settings: Settings
) -> LivePatient:
    """Post one patient's transaction (twice: the second finds, never duplicates); read back."""
    bundle = transaction(name, resources)
    keys = post_transaction(http, name, bundle)
    again = post_transaction(http, name, bundle)
    assert again == keys, f"{name}: a second load did not find the first one's resources"
    stored = [http.get_json(key) for key in keys]
    patient_id = next(r["id"] for r in stored if r["resourceType"] == "Patient")
    return LivePatient(name, patient_id, settings, stored)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def http() -> Iterator[FhirHttp]:
    with FhirHttp(SERVER, token=TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def patients(http: FhirHttp) -> list[LivePatient]:
    loaded = []
    for name in CASES:
        resources, settings = case_resources(name)
        loaded.append(load(http, name, resources, settings))
    for prefix in SYNTHEA_RECORDS:
        settings = Settings(as_of=SYNTHEA_AS_OF)
        loaded.append(load(http, f"synthea/{prefix}", synthea_resources(prefix), settings))
    return loaded


@pytest.fixture(scope="module")
def published() -> None:
    """The study is on the server (publishing twice is tested in test_publish_live.py)."""
    args = ["publish", "--fhir-server", SERVER, "--resources-dir", str(RESOURCES)]
    if TOKEN:
        args += ["--token", TOKEN]
    assert main(args) == 0, "publish failed: see the output above"


# ------------------------------------------------------------------------------------------ comparing
def screen_rest(patient: LivePatient) -> EligibilityReport:
    """Screen by REST: the client's searches against the server."""
    with FhirClient(SERVER, token=TOKEN, settings=patient.settings) as client:
        record = client.fetch_patient_record(patient.patient_id)
    return evaluate(record, patient.settings)


def screen_bundle(patient: LivePatient) -> EligibilityReport:
    """Screen the same stored resources handed over as one Bundle."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{SERVER}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in patient.stored
        ],
    }
    record = record_from_bundle(bundle, patient.patient_id)
    return evaluate(record, patient.settings)


def differences(rest: EligibilityReport, bundle: EligibilityReport) -> list[str]:
    """Every criterion (and the verdict) on which the two screenings disagree, with both reasons."""
    found = []
    if rest.verdict != bundle.verdict:
        found.append(f"verdict: REST {rest.verdict} / Bundle {bundle.verdict}")
    by_id = {r.id: r for r in bundle.criteria}
    for mine in rest.criteria:
        other = by_id.get(mine.id)
        if other is None or other.status != mine.status:
            found.append(
                f"{mine.id}: REST {mine.status} ({mine.reason}) / Bundle "
                f"{other.status if other else 'absent'} ({other.reason if other else ''})"
            )
    return found


def test_rest_and_bundle_screening_agree_on_every_criterion(
    patients: list[LivePatient], published: None
) -> None:
    problems = []
    for patient in patients:
        rest, bundle = screen_rest(patient), screen_bundle(patient)
        print(
            f"{patient.name} (Patient/{patient.patient_id}): REST {rest.verdict}, "
            f"Bundle {bundle.verdict}"
        )
        for line in differences(rest, bundle):
            problems.append(f"{patient.name} (Patient/{patient.patient_id}) {line}")
        for warning in rest.warnings:
            print(f"  REST warning: {warning}")
    print("\n".join(problems))
    assert not problems, "REST and Bundle screening disagree:\n" + "\n".join(problems)


def test_cases_keep_their_expected_statuses_on_the_server(patients: list[LivePatient]) -> None:
    """The cases mean on the server what they mean on file (the loading lost nothing)."""
    problems = []
    for patient in patients[: len(CASES)]:
        case = load_case(CASES_DIR / f"{patient.name}.yaml")
        statuses = {r.id: r.status for r in screen_rest(patient).criteria}
        for cid, want in case.expect.items():
            if cid != "verdict" and statuses.get(cid) != want:
                problems.append(f"{patient.name}: {cid} is {statuses.get(cid)}, expected {want}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------ CDS
def card_verdict(cards: list[dict[str, Any]]) -> str:
    """The verdict a card set shows (no card: ineligible, e.g. a deceased patient)."""
    if not cards:
        return "ineligible"
    summary = cards[0]["summary"]
    for start, verdict in (
        ("Meets the automated", "eligible"),
        ("Possible candidate", "potentially-eligible"),
        ("Not eligible", "ineligible"),
        ("Screening for", "incomplete"),
    ):
        if summary.startswith(start):
            return verdict
    raise AssertionError(f"unknown card: {summary}")


def test_cds_service_without_prefetch_fetches_from_the_server(
    patients: list[LivePatient], published: None, shared_dir: Path, tmp_path: Path
) -> None:
    issuers = write_issuers(
        tmp_path / "issuers.json", [sandbox_issuer(shared_dir, fhir_servers=[SERVER])]
    )
    problems = []
    for patient in patients:
        settings = patient.settings.replace(
            database_path=str(tmp_path / "cds.sqlite3"),
            secret_key="test-secret",
            cds_trusted_issuers_file=issuers,
            cds_deadline_s=30.0,  # the live server may be slow; the budget is tested elsewhere
            cds_cards_for_ineligible=True,
        )
        client = create_app(settings).test_client()
        body = hook_request(None, fhirServer=SERVER)
        body["context"]["patientId"] = patient.patient_id
        if TOKEN:
            body["fhirAuthorization"] = {
                "access_token": TOKEN,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "user/*.read",
                "subject": "cds-service",
            }
        response = client.post(SERVICE_PATH, json=body, headers=bearer(sandbox_token(shared_dir)))
        assert response.status_code == 200, response.get_data(as_text=True)
        cards = response.get_json()["cards"]
        rest = screen_rest(patient)
        shown = card_verdict(cards)
        print(
            f"{patient.name}: card {shown!r} ({cards[0]['summary'] if cards else 'no card'}), "
            f"REST {rest.verdict}"
        )
        if shown != rest.verdict:
            problems.append(f"{patient.name}: card says {shown}, REST screening {rest.verdict}")
    assert not problems, "\n".join(problems)
