"""The CQL library translates with the reference translator, and the Library carries it, current.

The translation runs once per session into a temporary folder; the tests compare it with
cql/build/ and the Library in resources/, so an edit to cql/*.cql without `fhir-trial cql build`
fails here.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from fhir_trial.canonical import valueset_url
from fhir_trial.config import DEFAULT_RESOURCES_DIR, PROJECT_ROOT
from fhir_trial.cql.build import (
    BUILD_DIR,
    CQL_DIR,
    CqlTranslationError,
    Translation,
    data_requirements,
    main_elm,
    translate,
)
from fhir_trial.criteria.catalog import CRITERIA

LIBRARY_NAME = "NCT06010472Eligibility"


@pytest.fixture(scope="session")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Translation, Path]:
    """One translation of cql/ into a temporary folder."""
    out = tmp_path_factory.mktemp("elm")
    return translate(PROJECT_ROOT, out_dir=out), out


def _library() -> dict:
    found = sorted(DEFAULT_RESOURCES_DIR.glob("Library-*.json"))
    assert found, "no Library in resources/: run `fhir-trial cql build`"
    return json.loads(found[0].read_text(encoding="utf-8"))


def test_translates_without_errors(fresh: tuple[Translation, Path]) -> None:
    """Zero errors (translate raises on any); both libraries translated."""
    result, out = fresh
    assert {p.stem for p in out.glob("*.json")} == {"FHIRHelpers", LIBRARY_NAME}
    assert len(result.translated) == 2


def test_no_warnings_that_matter(fresh: tuple[Translation, Path]) -> None:
    """Only identifier-shadowing notes are tolerated (query aliases reusing a parameter name)."""
    result, _ = fresh
    assert [w for w in result.warnings if "is hiding another identifier" not in w] == []


def test_build_folder_is_current(fresh: tuple[Translation, Path]) -> None:
    """cql/build/ holds exactly the ELM a fresh translation gives (fails when stale)."""
    _, out = fresh
    for path in out.glob("*.json"):
        current = BUILD_DIR / path.name
        assert current.is_file(), f"{current} missing: run `fhir-trial cql build`"
        assert json.loads(current.read_text(encoding="utf-8")) == json.loads(
            path.read_text(encoding="utf-8")
        ), f"{current.name} is stale relative to cql/: run `fhir-trial cql build`"


def test_library_carries_current_cql_and_elm(fresh: tuple[Translation, Path]) -> None:
    """The Library's text/cql attachments equal cql/*.cql and its ELM equals a fresh translation."""
    _, out = fresh
    content = _library().get("content", [])
    cql = {
        a["title"]: base64.b64decode(a["data"]) for a in content if a["contentType"] == "text/cql"
    }
    elm = {
        a["title"]: json.loads(base64.b64decode(a["data"]))
        for a in content
        if a["contentType"] == "application/elm+json"
    }
    assert cql == {p.name: p.read_bytes() for p in CQL_DIR.glob("*.cql")}, "Library CQL is stale"
    assert elm == {p.name: json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.json")}, (
        "Library ELM is stale"
    )


def test_one_define_per_criterion_and_verdict() -> None:
    """Every criterion id is a define of the library, plus Inclusion, Exclusion and Verdict."""
    defines = {d["name"] for d in main_elm()["library"]["statements"]["def"]}
    missing = {spec.id for spec in CRITERIA} | {"Inclusion", "Exclusion", "Verdict"}
    assert missing - defines == set()


def test_plan_definition_expressions_name_library_defines() -> None:
    """Every CQL expression of the PlanDefinition refers to a define that the Library has."""
    defines = {d["name"] for d in main_elm()["library"]["statements"]["def"]}
    plan = json.loads(
        (DEFAULT_RESOURCES_DIR / "PlanDefinition-nct06010472-eligibility.json").read_text()
    )
    expressions = [c["expression"] for a in plan["action"] for c in a.get("condition", [])]
    expressions += [d["expression"] for a in plan["action"] for d in a.get("dynamicValue", [])]
    assert len(expressions) == len(CRITERIA) + 2  # + alive at screening, + the verdict
    for expression in expressions:
        named = re.findall(r'"([^"]+)"', expression["expression"])
        assert named == [expression["name"]], expression
        assert expression["name"] in defines


def test_data_requirements_name_project_valuesets() -> None:
    """Data requirements come from the ELM retrieves and point at the project's ValueSets."""
    requirements = data_requirements(main_elm())
    types = {r["type"] for r in requirements}
    assert {
        "Patient",
        "Condition",
        "Observation",
        "MedicationRequest",
        "AllergyIntolerance",
    } <= types
    urls = {f["valueSet"] for r in requirements for f in r.get("codeFilter", [])}
    assert valueset_url("sledai-2k-total") in urls
    assert all(url.startswith(valueset_url("")) for url in urls)
    assert _library()["dataRequirement"] == requirements, "Library dataRequirement is stale"


def test_translation_errors_are_reported(tmp_path: Path) -> None:
    """A broken library makes translate raise with the translator's message (not a traceback)."""
    project = tmp_path / "project"
    (project / "cql").mkdir(parents=True)
    (project / "cql" / "Broken.cql").write_text(
        "library Broken version '1'\ndefine X: 1 +\n", encoding="utf-8"
    )
    tools = project / "tools" / "cql"
    tools.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "tools" / "cql" / "translate.mjs", tools / "translate.mjs")
    (tools / "node_modules").symlink_to(PROJECT_ROOT / "tools" / "cql" / "node_modules")
    (tools / "package.json").write_text('{"type": "module"}', encoding="utf-8")
    (tmp_path / "shared").symlink_to(PROJECT_ROOT.parent / "shared")
    with pytest.raises(CqlTranslationError) as caught:
        translate(project)
    assert caught.value.errors and "Broken.cql" in caught.value.errors[0]
