"""The live integration suite's loader, checked without a server: its transactions are what a
strict server needs (urn:uuid fullUrls, conditional creates, no dangling references)."""

from __future__ import annotations

from integration.test_screen_live import (
    CASES,
    TEST_SYSTEM,
    case_resources,
    synthea_resources,
    transaction,
)


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for k, v in node.items() if k != "reference" for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_case_transactions_are_conditional_creates_with_internal_references() -> None:
    for name in CASES:
        resources, _ = case_resources(name)
        bundle = transaction(name, resources)
        assert transaction(name, resources) == bundle, f"{name}: not deterministic"
        urns = {e["fullUrl"] for e in bundle["entry"]}
        assert all(u.startswith("urn:uuid:") for u in urns)
        for entry in bundle["entry"]:
            resource, request = entry["resource"], entry["request"]
            assert "id" not in resource and request["method"] == "POST"
            value = entry["fullUrl"].rsplit(":", 1)[-1]
            assert {"system": TEST_SYSTEM, "value": value} in resource["identifier"]
            assert request["ifNoneExist"] == f"identifier={TEST_SYSTEM}|{value}"
            for ref in _references(resource):
                assert ref.startswith("#") or ref in urns, f"{name}: dangling {ref}"


def test_the_other_trial_is_loaded_with_the_patient_on_it() -> None:
    resources, _ = case_resources("exc-recent-trial/on-another-study-now")
    assert [r for r in resources if r["resourceType"] == "ResearchStudy"]


def test_synthea_records_keep_what_the_criteria_read_and_drop_unresolvable_references() -> None:
    resources = synthea_resources("Hershel_Marvin")
    types = {r["resourceType"] for r in resources}
    assert {"Patient", "Condition", "Observation"} <= types
    assert not types & {"Claim", "ExplanationOfBenefit", "Encounter", "Practitioner"}
    bundle = transaction("synthea/Hershel_Marvin", resources)
    urns = {e["fullUrl"] for e in bundle["entry"]}
    patient = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    for entry in bundle["entry"]:
        refs = _references(entry["resource"])
        assert all(ref in urns for ref in refs), refs
        if entry["resource"]["resourceType"] in ("Condition", "Observation"):
            assert entry["resource"]["subject"] == {"reference": patient}
