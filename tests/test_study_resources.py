"""The study as FHIR R4 resources: contents, cross-links, terminology traps, and staleness."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.canonical import (
    BASE,
    CODESYSTEM_URL,
    REGISTRY_URL,
    canonical,
    valueset_url,
)
from fhir_trial.config import DEFAULT_RESOURCES_DIR, PROJECT_ROOT, Settings
from fhir_trial.cql.libraries import cql_libraries
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.errors import ConfigurationError
from fhir_trial.study import BuildInputs, build_all, library_content, stale_files, write_resources
from fhir_trial.study.common import (
    EXT_CODE_VERIFICATION,
    EXT_LOOKBACK,
    EXT_PERIOD_END_ESTIMATED,
    EXT_TARGET_NUMBER,
)
from fhir_trial.study.terminology_sources import load_terminology_sources
from fhir_trial.terminology import valueset_from_resource
from fhir_trial.validation import reference_issues, validate_set

RESOURCES = Path(DEFAULT_RESOURCES_DIR)
CANONICAL_TYPES = ("PlanDefinition", "Library", "ValueSet", "CodeSystem")


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESOURCES / name).read_text(encoding="utf-8"))
    return data


def _all() -> list[dict[str, Any]]:
    return [_load(p.name) for p in sorted(RESOURCES.glob("*.json"))]


def _valuesets() -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in _all() if r["resourceType"] == "ValueSet"}


@pytest.fixture(scope="module")
def criteria_md_ids(shared_dir: Path) -> list[str]:
    """Criterion ids parsed from the id tables of CRITERIA.md, in file order."""
    text = (shared_dir / "design" / "CRITERIA.md").read_text(encoding="utf-8")
    ids = re.findall(r"^\|\s*((?:inc|exc)-[a-z0-9-]+)\s*\|", text, flags=re.MULTILINE)
    assert len(ids) == 29, ids
    return ids


@pytest.fixture(scope="module")
def study() -> dict[str, Any]:
    return _load("ResearchStudy-nct06010472.json")


@pytest.fixture(scope="module")
def group() -> dict[str, Any]:
    return _load("Group-nct06010472-eligibility.json")


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return _load("PlanDefinition-nct06010472-eligibility.json")


# --- the files in resources/ -------------------------------------------------------------------


def test_resources_folder_is_not_stale() -> None:
    assert stale_files(build_all().resources, RESOURCES) == [], (
        "resources/ is stale: run `fhir-trial build-resources`"
    )


def test_files_are_named_and_formatted_deterministically() -> None:
    for path in sorted(RESOURCES.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        assert path.name == f"{data['resourceType']}-{data['id']}.json"
        assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_every_resource_validates_with_both_validators(shared_dir: Path) -> None:
    schema = shared_dir / "schemas" / "fhir.schema.json"
    assert schema.is_file()
    pairs = [(p.name, _load(p.name)) for p in sorted(RESOURCES.glob("*.json"))]
    assert len(pairs) >= 7
    issues = validate_set(pairs, schema_path=schema)
    assert [i.line() for i in issues] == []


def test_every_reference_and_canonical_resolves() -> None:
    pairs = [(f"{r['resourceType']}/{r['id']}", r) for r in _all()]
    assert reference_issues(pairs) == []


def test_the_set_has_every_resource_type() -> None:
    types = {r["resourceType"] for r in _all()}
    assert types >= {
        "ResearchStudy",
        "Group",
        "PlanDefinition",
        "Library",
        "CodeSystem",
        "Organization",
        "Location",
    }


def test_canonical_resources_share_one_base_and_metadata() -> None:
    for resource in _all():
        if resource["resourceType"] not in CANONICAL_TYPES:
            continue
        assert resource["url"] == canonical(resource["resourceType"], resource["id"])
        assert resource["url"].startswith(BASE + "/")
        # FHIRHelpers keeps the version the FHIR 4.0.1 model info asks for (include ... version '4.0.1')
        assert resource["version"] == ("4.0.1" if resource["id"] == "FHIRHelpers" else "0.1.0")
        assert resource["status"] in ("active", "draft")
        assert resource["publisher"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", resource["date"])
        assert "{{canonical}}" not in json.dumps(resource)


# --- ResearchStudy -----------------------------------------------------------------------------


def test_study_identity(study: dict[str, Any]) -> None:
    ids = {(i.get("use"), i.get("system"), i["value"]) for i in study["identifier"]}
    assert ("official", "https://clinicaltrials.gov", "NCT06010472") in ids
    assert any(use == "secondary" and value == "CHEC2023-174" for use, _s, value in ids)
    assert study["status"] == "active"
    assert study["phase"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/research-study-phase",
        "code": "phase-1",
        "display": "Phase 1",
    }
    assert "CAR NK" in study["title"]
    assert "KN5501" in study["focus"][0]["text"]


def test_study_links(study: dict[str, Any]) -> None:
    assert study["enrollment"] == [{"reference": "Group/nct06010472-eligibility"}]
    assert study["protocol"] == [{"reference": "PlanDefinition/nct06010472-eligibility"}]
    assert study["sponsor"]["reference"] == "Organization/changhai-hospital"
    assert study["site"][0]["reference"] == "Location/changhai-hospital-shanghai"
    assert {"type": "documentation", "url": REGISTRY_URL}.items() <= study["relatedArtifact"][
        0
    ].items()


def test_study_period_enrolment_objectives_arm(study: dict[str, Any]) -> None:
    period = study["period"]
    assert (period["start"], period["end"]) == ("2023-08-20", "2027-08-25")
    assert {"url": EXT_PERIOD_END_ESTIMATED, "valueBoolean": True} in period["extension"]
    assert "ESTIMATED" in study["description"]
    assert {"url": EXT_TARGET_NUMBER, "valueUnsignedInt": 36} in study["extension"]
    kinds = [o["type"]["coding"][0]["code"] for o in study["objective"]]
    assert kinds == ["primary", "secondary", "secondary", "secondary", "secondary"]
    names = " ".join(o["name"] for o in study["objective"])
    for outcome in ("Safety", "BILAG-2004", "SRI-4", "LLDAS", "DORIS"):
        assert outcome in names
    (arm,) = study["arm"]
    assert arm["type"]["coding"][0]["code"] == "experimental"
    assert "KN5501" in arm["description"]


def test_study_conditions_are_coded_from_the_valuesets(study: dict[str, Any]) -> None:
    texts = [c["text"] for c in study["condition"]]
    assert texts == ["Systemic Lupus Erythematosus", "Cutaneous Lupus Erythematosus", "Lupus"]
    valuesets = _valuesets()
    if "sle" not in valuesets:
        pytest.fail("ValueSet sle is missing from resources/")
    sle = valueset_from_resource(valuesets["sle"])
    (coding,) = study["condition"][0]["coding"]
    assert sle.contains(coding["system"], coding["code"])
    for condition in study["condition"]:
        assert condition.get("coding"), f"{condition['text']} is not coded"
        for coding in condition["coding"]:
            assert any(
                valueset_from_resource(vs).contains(coding["system"], coding["code"])
                for vs in valuesets.values()
            ), coding


# --- Group and PlanDefinition carry every criterion --------------------------------------------


def test_catalog_matches_criteria_md(criteria_md_ids: list[str]) -> None:
    assert [spec.id for spec in CRITERIA] == criteria_md_ids


def test_group_has_every_criterion_in_order(
    group: dict[str, Any], criteria_md_ids: list[str]
) -> None:
    assert (group["type"], group["actual"]) == ("person", False)
    deceased, *criteria = group["characteristic"]
    # Before the criteria: patients deceased on the screening date are excluded.
    assert deceased["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "419099009",
        "display": "Dead",
    }
    assert (deceased["valueBoolean"], deceased["exclude"]) == (True, True)
    codes = [c["code"]["coding"][0]["code"] for c in criteria]
    assert codes == criteria_md_ids
    for characteristic in criteria:
        coding = characteristic["code"]["coding"][0]
        assert coding["system"] == CODESYSTEM_URL
        assert characteristic["exclude"] is coding["code"].startswith("exc-")
        assert characteristic["code"]["text"]


def test_group_values_come_from_settings(group: dict[str, Any]) -> None:
    by_id = {c["code"]["coding"][0]["code"]: c for c in group["characteristic"]}
    settings = Settings()
    age = by_id["inc-age"]["valueRange"]
    assert (age["low"]["value"], age["high"]["value"]) == (settings.min_age, settings.max_age)
    assert age["low"]["code"] == "a"
    neutrophils = by_id["inc-neutrophils"]["valueQuantity"]
    assert neutrophils["comparator"] == ">="
    assert neutrophils["value"] == settings.neutrophils_min_10e9_per_l
    assert neutrophils["code"] == "10*9/L"
    lookback = [
        e for e in by_id["exc-recent-herpes-zoster"]["extension"] if e["url"] == EXT_LOOKBACK
    ]
    assert lookback[0]["valueDuration"]["value"] == settings.herpes_window_days

    changed = build_all(BuildInputs(settings=Settings(min_age=21, herpes_window_days=60)))
    new_group = next(r for r in changed.resources if r["resourceType"] == "Group")
    new_by_id = {c["code"]["coding"][0]["code"]: c for c in new_group["characteristic"]}
    assert new_by_id["inc-age"]["valueRange"]["low"]["value"] == 21
    new_lookback = new_by_id["exc-recent-herpes-zoster"]["extension"][-1]
    assert new_lookback["valueDuration"]["value"] == 60


def test_group_sle_characteristic_names_the_sle_valueset(group: dict[str, Any]) -> None:
    sle = next(
        c for c in group["characteristic"] if c["code"]["coding"][0]["code"] == "inc-sle-diagnosis"
    )
    urls = [e["valueCanonical"] for e in sle["valueCodeableConcept"].get("extension", [])]
    assert valueset_url("sle") in urls


def test_plan_definition_has_an_action_per_criterion(
    plan: dict[str, Any], criteria_md_ids: list[str]
) -> None:
    assert plan["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-computableplandefinition"
    ]
    assert plan["type"]["coding"][0]["code"] == "eca-rule"
    assert plan["library"] == [canonical("Library", "NCT06010472Eligibility") + "|0.1.0"]
    alive, *criteria_actions, verdict = plan["action"]
    assert alive["id"] == "alive-at-screening"
    assert alive["condition"][0]["expression"]["expression"] == 'not "Deceased"'
    assert [a["code"][0]["coding"][0]["code"] for a in criteria_actions] == criteria_md_ids
    for action in criteria_actions:
        assert action["title"] and action["description"]
        assert action["trigger"] == [{"type": "named-event", "name": "patient-view"}]
        (condition,) = action["condition"]
        assert condition["kind"] == "applicability"
        criterion = action["code"][0]["coding"][0]["code"]
        assert condition["expression"]["name"] == criterion
        assert condition["expression"]["expression"] == f"\"{criterion}\" = 'met'"
    assert verdict["title"] == "Eligibility verdict"
    assert verdict["dynamicValue"][0]["expression"]["expression"] == '"Verdict"'


def test_codesystem_defines_every_criterion_id(criteria_md_ids: list[str]) -> None:
    codesystem = _load("CodeSystem-fhir-trial.json")
    assert codesystem["url"] == CODESYSTEM_URL
    codes = {c["code"] for c in codesystem["concept"]}
    assert set(criteria_md_ids) <= codes


# --- Library -----------------------------------------------------------------------------------


def _libraries() -> list[dict[str, Any]]:
    return [_load(p.name) for p in sorted(RESOURCES.glob("Library-*.json"))]


def test_one_library_per_cql_file() -> None:
    """Each cql/*.cql has its own Library: its CQL first, then its ELM (cql/build), nothing else."""
    sources = {p.name: p for p in (PROJECT_ROOT / "cql").glob("*.cql")}
    seen = set()
    for lib in _libraries():
        assert lib["type"]["coding"][0]["code"] == "logic-library"
        cql, elm = lib["content"]
        assert cql["contentType"] == "text/cql"
        assert base64.b64decode(cql["data"]) == sources[cql["title"]].read_bytes()
        assert elm["contentType"] == "application/elm+json"
        assert elm["title"] == f"{lib['name']}.json"
        built = PROJECT_ROOT / "cql" / "build" / elm["title"]
        assert json.loads(base64.b64decode(elm["data"])) == json.loads(built.read_text())
        seen.add(cql["title"])
    assert seen == set(sources)
    main = _load("Library-NCT06010472Eligibility.json")
    assert main["name"] == "NCT06010472Eligibility"
    assert _load("Library-FHIRHelpers.json")["name"] == "FHIRHelpers"


def test_no_library_attachment_reaches_one_megabyte() -> None:
    """Servers refuse strings over 1 MB (Medplum): every attachment stays well under it."""
    for lib in _libraries():
        for attachment in lib["content"]:
            assert len(attachment["data"]) < 1024 * 1024, (lib["id"], attachment["title"])


def test_the_project_codesystem_is_a_dependency_where_the_cql_names_it() -> None:
    activity = _load("Library-NCT06010472DiseaseActivity.json")
    depends = {a["resource"] for a in activity["relatedArtifact"] if a["type"] == "depends-on"}
    assert f"{CODESYSTEM_URL}|0.1.0" in depends  # the BILAG grades read from text


def test_library_content_reads_cql_and_elm(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "A.cql").write_text("library A version '1'\n", encoding="utf-8")
    (tmp_path / "build" / "A.json").write_text('{\n  "library": {"a": 1}\n}', encoding="utf-8")
    (source,) = cql_libraries(tmp_path)
    content = library_content(source)
    assert [(c["title"], c["contentType"]) for c in content] == [
        ("A.cql", "text/cql"),
        ("A.json", "application/elm+json"),
    ]
    assert base64.b64decode(content[0]["data"]) == b"library A version '1'\n"
    assert base64.b64decode(content[1]["data"]) == b'{"library":{"a":1}}'
    (tmp_path / "build" / "A.json").unlink()
    assert [c["contentType"] for c in library_content(source)] == ["text/cql"]


def test_a_library_not_translated_yet_is_draft_and_names_its_includes(tmp_path: Path) -> None:
    from fhir_trial.study.library import libraries

    (tmp_path / "Main.cql").write_text(
        "// library Decoy version '9'\nlibrary Main version '2'\n"
        "include Helpers version '1' called H\n"
        "define X: 'https://fhir-trial.org/fhir/ValueSet/sle'\n",
        encoding="utf-8",
    )
    (tmp_path / "Helpers.cql").write_text("library Helpers version '1'\n", encoding="utf-8")
    built = {lib["name"]: lib for lib in libraries(tmp_path, {valueset_url("sle"): "0.1.0"})}
    main = built["Main"]
    assert (main["status"], main["version"], main["id"]) == ("draft", "2", "Main")
    assert [a["resource"] for a in main["relatedArtifact"]] == [
        canonical("Library", "Helpers") + "|1",
        valueset_url("sle") + "|0.1.0",
    ]
    assert "dataRequirement" not in main


# --- building from terminology sources ---------------------------------------------------------


def _source_dir(tmp_path: Path) -> Path:
    terminology = tmp_path / "terminology"
    (terminology / "valuesets").mkdir(parents=True)
    valueset = {
        "resourceType": "ValueSet",
        "id": "demo",
        "title": "Demo",
        "compose": {
            "include": [
                {"system": "{{canonical}}/CodeSystem/fhir-trial", "concept": [{"code": "inc-age"}]}
            ]
        },
    }
    (terminology / "valuesets" / "demo.json").write_text(json.dumps(valueset), encoding="utf-8")
    return terminology


def test_sources_get_the_base_and_metadata(tmp_path: Path) -> None:
    codesystem, valuesets = load_terminology_sources(_source_dir(tmp_path))
    (demo,) = valuesets
    assert demo["url"] == valueset_url("demo")
    assert demo["compose"]["include"][0]["system"] == CODESYSTEM_URL
    assert (demo["version"], demo["status"], demo["experimental"]) == ("0.1.0", "active", False)
    assert demo["expansion"]["contains"] == [{"system": CODESYSTEM_URL, "code": "inc-age"}]
    # No CodeSystem source: the criterion ids are still defined.
    assert {c["code"] for c in codesystem["concept"]} == {spec.id for spec in CRITERIA}


def test_unreadable_source_is_a_configuration_error(tmp_path: Path) -> None:
    terminology = _source_dir(tmp_path)
    (terminology / "valuesets" / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"broken\.json"):
        load_terminology_sources(terminology)


def test_write_then_check(tmp_path: Path) -> None:
    inputs = BuildInputs(terminology_dir=_source_dir(tmp_path), cql_dir=tmp_path / "cql")
    resources = build_all(inputs).resources
    out = tmp_path / "out"
    assert len(write_resources(resources, out)) == len(resources)
    assert stale_files(resources, out) == []
    (out / "Extra-x.json").write_text("{}", encoding="utf-8")
    assert stale_files(resources, out) == ["Extra-x.json"]
    write_resources(resources, out)
    assert not (out / "Extra-x.json").exists()


# --- terminology traps (CRITERIA.md) -----------------------------------------------------------


def _expansion_codes(valueset: dict[str, Any]) -> set[tuple[str, str]]:
    return set(valueset_from_resource(valueset).codes)


def _required(valuesets: dict[str, dict[str, Any]], valueset_id: str) -> dict[str, Any]:
    if valueset_id not in valuesets:
        pytest.fail(f"ValueSet {valueset_id} is missing from resources/")
    return valuesets[valueset_id]


def test_every_expected_valueset_is_built() -> None:
    assert build_all().missing_valuesets == []


def test_sle_valueset_excludes_drug_induced_lupus() -> None:
    valuesets = _valuesets()
    sle = valueset_from_resource(_required(valuesets, "sle"))
    assert sle.contains("http://snomed.info/sct", "55464009")
    for system, code in [
        ("http://snomed.info/sct", "201436003"),
        ("http://snomed.info/sct", "54912002"),
        ("http://hl7.org/fhir/sid/icd-10-cm", "M32.0"),
        ("http://hl7.org/fhir/sid/icd-10", "M32.0"),
    ]:
        assert not sle.contains(system, code), f"sle contains drug-induced lupus {code}"
    drug_induced = valueset_from_resource(_required(valuesets, "drug-induced-lupus"))
    assert drug_induced.contains("http://snomed.info/sct", "201436003")


def test_414029004_is_in_no_valueset() -> None:
    for valueset in _valuesets().values():
        codes = {code for _system, code in _expansion_codes(valueset)}
        included = json.dumps(valueset.get("compose", {}).get("include", []))
        assert "414029004" not in codes, valueset["id"]
        assert '"414029004"' not in included, valueset["id"]


def test_percent_neutrophils_are_not_absolute_counts() -> None:
    valuesets = _valuesets()
    absolute = valueset_from_resource(_required(valuesets, "neutrophils-absolute"))
    assert absolute.contains("http://loinc.org", "751-8")
    for code in ("770-8", "26511-6"):
        assert not absolute.contains("http://loinc.org", code)
    percent = valueset_from_resource(_required(valuesets, "neutrophils-percent"))
    assert percent.contains("http://loinc.org", "770-8")


def test_every_valueset_has_an_expansion() -> None:
    valuesets = _valuesets()
    assert valuesets, "no ValueSets in resources/"
    for valueset in valuesets.values():
        assert _expansion_codes(valueset), f"{valueset['id']} has no expansion"


def _verification_parts(concept: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parts (status, source) of a concept's one code-verification extension, by url."""
    (verification,) = [e for e in concept.get("extension", []) if e["url"] == EXT_CODE_VERIFICATION]
    return {e["url"]: e for e in verification["extension"]}


def _is_vsac_part(include: dict[str, Any]) -> bool:
    """An include imported from a VSAC value set (fhir_trial.study.vsac_import) names it."""
    return any(str(u).startswith("http://cts.nlm.nih.gov/") for u in include.get("valueSet", []))


def test_every_valueset_records_verification_status() -> None:
    valuesets = _valuesets()
    assert valuesets, "no ValueSets in resources/"
    for valueset in valuesets.values():
        # An imported VSAC part records its source once, on its include (names the VSAC set).
        concepts = [
            (include if _is_vsac_part(include) else concept, concept)
            for include in valueset.get("compose", {}).get("include", [])
            for concept in include.get("concept", [])
        ]
        assert concepts, f"{valueset['id']} lists no concepts"
        for holder, concept in concepts:
            parts = _verification_parts(holder)
            where = f"{valueset['id']} {concept['code']}"
            assert parts["status"]["valueCode"] in ("verified", "unverified"), where
            if parts["status"]["valueCode"] == "verified":
                assert parts["source"]["valueString"].strip(), where
    assert any(r["url"] == EXT_CODE_VERIFICATION for r in _all() if "url" in r)


# The labels VERIFICATION.md uses for each code system.
_VERIFICATION_LABELS = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10 (WHO)",
    "http://www.whocc.no/atc": "ATC",
}


def _verification_rows() -> dict[tuple[str, str, str], str]:
    """``(valueset, system label, code) -> 'yes' | 'NO'`` from terminology/VERIFICATION.md."""
    rows: dict[tuple[str, str, str], str] = {}
    section = ""
    text = (PROJECT_ROOT / "terminology" / "VERIFICATION.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        cells = [cell.strip() for cell in line.split("|")]
        if not section or len(cells) < 7 or cells[4] not in ("yes", "NO", "yes (range)"):
            continue
        for code in cells[1].removeprefix("EXCLUDE ").split(","):
            rows[(section, cells[2], code.strip())] = "NO" if cells[4] == "NO" else "yes"
    return rows


def test_verification_table_matches_every_valueset_concept() -> None:
    """Each listed code of the main code systems has its row, with the same verdict, and no more."""
    rows = _verification_rows()
    seen: set[tuple[str, str, str]] = set()
    for vs_id, valueset in _valuesets().items():
        compose = valueset["compose"]
        for block in compose.get("include", []) + compose.get("exclude", []):
            label = _VERIFICATION_LABELS.get(block.get("system", ""))
            if label is None or _is_vsac_part(block):
                continue  # imported VSAC parts: their source is terminology/vsac/<OID>.json
            for concept in block.get("concept", []):
                key = (vs_id, label, concept["code"])
                status = _verification_parts(concept)["status"]["valueCode"]
                assert key in rows, f"VERIFICATION.md has no row for {key}"
                expected = "yes" if status == "verified" else "NO"
                assert rows[key] == expected, f"{key}: table says {rows[key]}, source {status}"
                seen.add(key)
    extra = {key for key in rows if key[1] in _VERIFICATION_LABELS.values()} - seen
    assert not extra, f"rows for codes no ValueSet lists: {sorted(extra)[:5]}"


@pytest.mark.parametrize(
    ("helper", "message"),
    [(None, "which no file declares"), ("library Helpers version '2'\n", "declares version 2")],
)
def test_an_include_must_resolve_to_a_shipped_library_of_that_version(
    tmp_path: Path, helper: str | None, message: str
) -> None:
    from fhir_trial.study.library import libraries

    (tmp_path / "Main.cql").write_text(
        "library Main version '1'\ninclude Helpers version '1' called H\n", encoding="utf-8"
    )
    if helper:
        (tmp_path / "Helpers.cql").write_text(helper, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=message):
        libraries(tmp_path, {})
