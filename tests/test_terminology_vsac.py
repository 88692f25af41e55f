"""The VSAC import: every imported code is in its ValueSet with its source, carve-outs left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.config import PROJECT_ROOT
from fhir_trial.study.common import EXT_CODE_VERIFICATION
from fhir_trial.study.vsac_import import PLAN, SOURCE_COMMIT, import_vsac
from fhir_trial.terminology import load_terminology

TERMINOLOGY = PROJECT_ROOT / "terminology"
RESOURCES = PROJECT_ROOT / "resources"
VSAC_FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "vsac"
CM = "http://hl7.org/fhir/sid/icd-10-cm"
SN = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
VSAC_URL = "http://cts.nlm.nih.gov/fhir/ValueSet/"


def _imports() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((TERMINOLOGY / "vsac").glob("*.json"))
    ]


def test_every_planned_vsac_value_set_is_imported_with_its_source() -> None:
    imports = {record["oid"]: record for record in _imports()}
    assert set(imports) == {plan.oid for plan in PLAN}
    for record in imports.values():
        assert record["source"]["commit"] == SOURCE_COMMIT
        assert record["source"]["path"].endswith(f"valueset-{record['oid']}.json")
        assert record["version"] and record["targets"]


def test_every_imported_code_is_a_member_of_its_valueset() -> None:
    terminology = load_terminology(str(RESOURCES))
    for record in _imports():
        for target, entries in record["targets"].items():
            valueset = terminology.get(target)
            missing = [e for e in entries if not valueset.contains(e[0], e[1])]
            assert not missing, f"{record['oid']} -> {target}: {missing[:3]}"


def test_each_vsac_include_names_its_value_set_and_source() -> None:
    for path in RESOURCES.glob("ValueSet-*.json"):
        valueset = json.loads(path.read_text(encoding="utf-8"))
        for include in valueset.get("compose", {}).get("include", []):
            if not any(u.startswith(VSAC_URL) for u in include.get("valueSet", [])):
                continue  # the project's own codes, or a project ValueSet included by reference
            (url,) = include["valueSet"]
            assert url.startswith(VSAC_URL + "2.16.840.1.")
            (verification,) = [e for e in include["extension"] if e["url"] == EXT_CODE_VERIFICATION]
            source = {e["url"]: e for e in verification["extension"]}["source"]["valueString"]
            oid = url.split("/")[-1].split("|")[0]
            assert oid in source and SOURCE_COMMIT in source
            assert "VSAC" in valueset["description"]


@pytest.mark.parametrize(
    ("valueset", "system", "code"),
    [
        ("sle", CM, "M32.0"),  # drug-induced lupus is not SLE
        ("sle", SN, "201436003"),
        ("sle", SN, "200936003"),  # generic lupus: reviewed, not SLE
        ("malignancy", CM, "D48.5"),  # uncertain behaviour
        ("malignancy", CM, "D09.0"),  # in situ (a carve-out, not a malignancy)
        ("immunodeficiency", SN, "414029004"),  # never used: contains SLE
        ("immunodeficiency", CM, "D89.811"),  # chronic GVHD
        ("immunodeficiency", SN, "82966003"),  # hereditary angioedema
        ("epilepsy", CM, "R56.9"),  # convulsions are a symptom
        ("pregnancy-findings", CM, "O90.3"),  # puerperium
        ("breastfeeding-status", SN, "169643005"),  # feeding intention
        ("hcg-tests", LOINC, "55870-0"),  # cord blood
        ("hemoglobin", LOINC, "35183-3"),  # plasma free hemoglobin
        ("hemoglobin", LOINC, "24360-0"),  # a panel
    ],
)
def test_carve_outs_are_not_members(valueset: str, system: str, code: str) -> None:
    terminology = load_terminology(str(RESOURCES))
    assert not terminology.get(valueset).contains(system, code)


def test_local_dose_forms_are_left_out_of_the_drug_sets() -> None:
    terminology = load_terminology(str(RESOURCES))
    for record in _imports():
        for target, entries in record["targets"].items():
            if target in ("oral-corticosteroids", "systemic-antibacterials", "immunosuppressants"):
                local = [e for e in entries if "Paste" in e[2] or "Inhalation" in e[2]]
                assert not local, f"{target}: {local[:2]}"
    assert terminology.get("b-cell-therapies").contains(RX, "121191")


def test_the_import_is_reproducible(tmp_path: Path) -> None:
    if not VSAC_FIXTURES.is_dir():
        pytest.skip(f"{VSAC_FIXTURES} is not there (the shared fixtures sit beside the checkout)")
    import_vsac(VSAC_FIXTURES, tmp_path)
    for written in sorted((tmp_path / "vsac").glob("*.json")):
        shipped = TERMINOLOGY / "vsac" / written.name
        assert shipped.read_text(encoding="utf-8") == written.read_text(encoding="utf-8"), (
            f"terminology/vsac/{written.name} is stale: run `fhir-trial import-vsac --from "
            "../shared/fixtures/vsac`"
        )
