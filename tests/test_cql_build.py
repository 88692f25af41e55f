"""The CQL libraries translate with the reference translator, and each Library carries one, current.

The translation runs once per session into a temporary folder; the tests compare it with
cql/build/ and the Libraries in resources/, so an edit to cql/*.cql without `fhir-trial cql build`
fails here. The study's logic is split by clinical area as the Python criteria are
(fhir_trial/criteria/): one CQL library, and one Library resource, per area, plus the shared
NCT06010472Common, the main NCT06010472Eligibility and FHIRHelpers.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.canonical import canonical, valueset_url
from fhir_trial.config import DEFAULT_RESOURCES_DIR, PROJECT_ROOT
from fhir_trial.cql.build import (
    BUILD_DIR,
    CQL_DIR,
    CqlTranslationError,
    Translation,
    data_requirements,
    elm_include_aliases,
    elm_includes,
    main_elm,
    translate,
)
from fhir_trial.cql.libraries import CqlLibrary, cql_libraries, resource_id
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.errors import ConfigurationError
from fhir_trial.evaluate import DERIVED
from fhir_trial.study.common import VERSION

LIBRARY_NAME = "NCT06010472Eligibility"
AREAS = (
    "demographics",
    "diagnosis",
    "disease_activity",
    "serology",
    "labs",
    "therapy",
    "allergy",
    "infection",
    "comorbidity",
    "reproductive",
    "trials",
)


def _area_library(module: str) -> str:
    """``disease_activity`` -> ``NCT06010472DiseaseActivity``."""
    return "NCT06010472" + "".join(part.capitalize() for part in module.split("_"))


EXPECTED = {"FHIRHelpers", LIBRARY_NAME, "NCT06010472Common", *(_area_library(a) for a in AREAS)}
LIBRARIES = cql_libraries(CQL_DIR)


@pytest.fixture(scope="session")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Translation, Path]:
    """One translation of cql/ into a temporary folder."""
    out = tmp_path_factory.mktemp("elm")
    return translate(PROJECT_ROOT, out_dir=out), out


def _resource(cql: CqlLibrary) -> dict[str, Any]:
    path = DEFAULT_RESOURCES_DIR / f"Library-{resource_id(cql.name)}.json"
    assert path.is_file(), f"no {path.name} in resources/: run `fhir-trial cql build`"
    resource: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return resource


def _elm(name: str) -> dict[str, Any]:
    return main_elm(BUILD_DIR, name)


def _shipped() -> dict[str, dict[str, Any]]:
    """Every Library in resources/ by its ``url|version``."""
    found = {}
    for path in DEFAULT_RESOURCES_DIR.glob("Library-*.json"):
        lib = json.loads(path.read_text(encoding="utf-8"))
        found[f"{lib['url']}|{lib['version']}"] = lib
    return found


def test_one_library_per_clinical_area() -> None:
    """The CQL libraries mirror the Python criteria modules, plus Common, the main one, FHIRHelpers."""
    assert {lib.name for lib in LIBRARIES} == EXPECTED
    shipped = {lib["name"] for lib in _shipped().values()}
    assert shipped == EXPECTED, "one Library resource per CQL library, no other"


def test_translates_without_errors(fresh: tuple[Translation, Path]) -> None:
    """Zero errors (translate raises on any); every library translated."""
    result, out = fresh
    assert {p.stem for p in out.glob("*.json")} == EXPECTED
    assert len(result.translated) == len(EXPECTED)


def test_no_warnings_that_matter(fresh: tuple[Translation, Path]) -> None:
    """Only identifier-shadowing notes are tolerated (query aliases reusing a parameter name)."""
    result, _ = fresh
    assert [w for w in result.warnings if "is hiding another identifier" not in w] == []


def test_build_folder_is_current(fresh: tuple[Translation, Path]) -> None:
    """cql/build/ holds exactly the ELM a fresh translation gives (fails when stale)."""
    _, out = fresh
    assert {p.name for p in BUILD_DIR.glob("*.json")} == {p.name for p in out.glob("*.json")}, (
        "cql/build holds other files than a fresh translation: run `fhir-trial cql build`"
    )
    for path in out.glob("*.json"):
        current = BUILD_DIR / path.name
        assert json.loads(current.read_text(encoding="utf-8")) == json.loads(
            path.read_text(encoding="utf-8")
        ), f"{current.name} is stale relative to cql/: run `fhir-trial cql build`"


@pytest.mark.parametrize("cql", LIBRARIES, ids=lambda lib: lib.name)
def test_library_carries_its_current_cql_then_elm(
    fresh: tuple[Translation, Path], cql: CqlLibrary
) -> None:
    """Each Library: its own text/cql first, then its own ELM as a fresh translation gives it."""
    _, out = fresh
    lib = _resource(cql)
    assert [(a["contentType"], a["title"]) for a in lib["content"]] == [
        ("text/cql", cql.source.name),
        ("application/elm+json", f"{cql.name}.json"),
    ]
    cql_bytes, elm_bytes = (base64.b64decode(a["data"]) for a in lib["content"])
    assert cql_bytes == cql.source.read_bytes(), f"{cql.name}: Library CQL is stale"
    assert json.loads(elm_bytes) == json.loads((out / f"{cql.name}.json").read_text()), (
        f"{cql.name}: Library ELM is stale"
    )


@pytest.mark.parametrize("cql", LIBRARIES, ids=lambda lib: lib.name)
def test_library_identity_is_the_cql_library(cql: CqlLibrary) -> None:
    """Using CQL with FHIR 4.1/4.2: url <base>/Library/<CQL name>, name and version the CQL
    library's, one text/cql content, a name of at most 30 characters without underscore, subject
    the library's context; the study's libraries carry the project version."""
    lib = _resource(cql)
    identifier = _elm(cql.name)["library"]["identifier"]
    assert lib["name"] == identifier["id"] == cql.name
    assert lib["version"] == identifier["version"] == cql.version
    assert lib["url"] == canonical("Library", cql.name) == canonical("Library", lib["id"])
    assert len(cql.name) <= 30 and "_" not in cql.name
    assert [a["contentType"] for a in lib["content"]].count("text/cql") == 1
    assert "http://hl7.org/fhir/uv/cql/StructureDefinition/cql-library" in lib["meta"]["profile"]
    if re.search(r"^context Patient$", cql.text(), re.MULTILINE):
        assert lib["subjectCodeableConcept"]["coding"][0]["code"] == "Patient"
    else:
        assert "subjectCodeableConcept" not in lib
    assert lib["type"]["coding"][0]["code"] == "logic-library"
    assert lib["status"] == "active"
    if cql.name != "FHIRHelpers":
        assert cql.version == VERSION, f"{cql.source.name}: library version is not {VERSION}"


@pytest.mark.parametrize("cql", LIBRARIES, ids=lambda lib: lib.name)
def test_depends_on_exactly_the_included_libraries(cql: CqlLibrary) -> None:
    """relatedArtifact names, as url|version, exactly the libraries the ELM includes, each shipped."""
    lib = _resource(cql)
    shipped = _shipped()
    depends = [
        a["resource"]
        for a in lib.get("relatedArtifact", [])
        if a["type"] == "depends-on" and "/Library/" in a["resource"]
    ]
    included = elm_includes(_elm(cql.name))
    assert included == [(i.name, i.version) for i in cql.includes]
    assert sorted(depends) == sorted(
        f"{canonical('Library', resource_id(name))}|{version}" for name, version in included
    )
    for target, (name, version) in zip(depends, included, strict=True):
        assert target in shipped, f"{cql.name} depends on {target}, which is not shipped"
        assert (shipped[target]["name"], shipped[target]["version"]) == (name, version)


def test_area_libraries_include_common_and_fhirhelpers() -> None:
    """Each area library includes the shared library and FHIRHelpers, and no other area."""
    for module in AREAS:
        includes = {
            i.name for i in next(x for x in LIBRARIES if x.name == _area_library(module)).includes
        }
        assert includes == {"FHIRHelpers", "NCT06010472Common"}, module


def test_one_define_per_criterion_and_verdict() -> None:
    """Every criterion id is a define of the main library, plus Inclusion, Exclusion and Verdict."""
    defines = {d["name"] for d in main_elm()["library"]["statements"]["def"]}
    missing = {spec.id for spec in CRITERIA} | {"Inclusion", "Exclusion", "Verdict", "Deceased"}
    assert missing - defines == set()


def test_each_criterion_comes_from_the_library_of_its_python_module() -> None:
    """The main library's define "inc-age" is Demographics."inc-age": the area of its Python module."""
    import importlib

    module_of = {}
    for module in AREAS:
        functions = importlib.import_module(f"fhir_trial.criteria.{module}").CRITERIA_FUNCTIONS
        module_of.update(dict.fromkeys(functions, module))
    module_of[DERIVED] = "serology"  # derived from its parts (fhir_trial.evaluate) in Python
    elm = main_elm()
    aliases = elm_include_aliases(elm)
    defines = {d["name"]: d["expression"] for d in elm["library"]["statements"]["def"]}
    for spec in CRITERIA:
        expression = defines[spec.id]
        assert expression["type"] == "ExpressionRef" and expression["name"] == spec.id, spec.id
        assert aliases[expression["libraryName"]] == _area_library(module_of[spec.id]), spec.id


def test_plan_definition_expressions_name_library_defines() -> None:
    """Every CQL expression of the PlanDefinition refers to a define of the main Library it names."""
    defines = {d["name"] for d in main_elm()["library"]["statements"]["def"]}
    plan = json.loads(
        (DEFAULT_RESOURCES_DIR / "PlanDefinition-nct06010472-eligibility.json").read_text()
    )
    (main,) = [lib for lib in LIBRARIES if lib.name == LIBRARY_NAME]
    assert plan["library"] == [f"{_resource(main)['url']}|{main.version}"]
    expressions = [c["expression"] for a in plan["action"] for c in a.get("condition", [])]
    expressions += [d["expression"] for a in plan["action"] for d in a.get("dynamicValue", [])]
    assert len(expressions) == len(CRITERIA) + 2  # + alive at screening, + the verdict
    for expression in expressions:
        named = re.findall(r'"([^"]+)"', expression["expression"])
        assert named == [expression["name"]], expression
        assert expression["name"] in defines


def _included(elm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {alias: _elm(name) for alias, name in elm_include_aliases(elm).items()}


def _reachable(name: str) -> list[str]:
    """A library and every library it includes, directly or not."""
    seen: list[str] = []
    pending = [name]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.append(current)
            pending.extend(elm_include_aliases(_elm(current)).values())
    return seen


@pytest.mark.parametrize("cql", LIBRARIES, ids=lambda lib: lib.name)
def test_data_requirements_are_read_from_the_library_own_elm(cql: CqlLibrary) -> None:
    """dataRequirement: the retrieves of the library's own ELM, with ValueSets it depends on; the
    main library's are those of every library it reaches (all the data needed to run it)."""
    lib = _resource(cql)
    elm = _elm(cql.name)
    requirements = data_requirements(elm, _included(elm))
    if cql.name == LIBRARY_NAME:
        wanted = {
            json.dumps(r, sort_keys=True)
            for name in _reachable(cql.name)
            for r in data_requirements(_elm(name), _included(_elm(name)))
        }
        effective = lib.get("dataRequirement", [])
        assert {json.dumps(r, sort_keys=True) for r in effective} == wanted
        assert len(effective) == len(wanted)  # each once
        assert {"Condition", "Observation", "MedicationRequest"} <= {r["type"] for r in effective}
    else:
        assert lib.get("dataRequirement", []) == requirements, f"{cql.name}: stale"
    depends = {a["resource"].split("|")[0] for a in lib.get("relatedArtifact", [])}
    for requirement in requirements:
        for code_filter in requirement.get("codeFilter", []):
            assert code_filter["valueSet"] in depends, (cql.name, code_filter)
            assert code_filter["valueSet"].startswith(valueset_url(""))
    if cql.name == "FHIRHelpers":
        assert requirements == []
    else:  # every study library works in the Patient context and retrieves something
        assert requirements, cql.name


def test_data_requirements_of_the_whole_logic() -> None:
    """The libraries together retrieve what the criteria need, filtered by the project's ValueSets."""
    requirements = [r for cql in LIBRARIES for r in _resource(cql).get("dataRequirement", [])]
    types = {r["type"] for r in requirements}
    assert {
        "Patient",
        "Condition",
        "Observation",
        "MedicationRequest",
        "AllergyIntolerance",
        "ResearchSubject",
        "Consent",
    } <= types
    urls = {f["valueSet"] for r in requirements for f in r.get("codeFilter", [])}
    assert valueset_url("sledai-2k-total") in urls


def test_valueset_dependencies_carry_versions() -> None:
    """Every ValueSet and CodeSystem a Library depends on is named url|version of a shipped one."""
    shipped = {}
    for path in DEFAULT_RESOURCES_DIR.glob("*.json"):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource["resourceType"] in ("ValueSet", "CodeSystem"):
            shipped[resource["url"]] = resource["version"]
    named = set()
    for cql in LIBRARIES:
        for artifact in _resource(cql).get("relatedArtifact", []):
            url, _, version = artifact["resource"].partition("|")
            if "/Library/" in url:
                continue
            assert shipped.get(url) == version, (cql.name, artifact)
            named.add(url)
    # the shared library declares every ValueSet the logic names
    assert valueset_url("sle") in named


def _project(tmp_path: Path, sources: dict[str, str]) -> Path:
    """A throwaway project: cql/ with these sources, and the real translator and toolchain."""
    project = tmp_path / "project"
    (project / "cql").mkdir(parents=True)
    for name, text in sources.items():
        (project / "cql" / name).write_text(text, encoding="utf-8")
    tools = project / "tools" / "cql"
    tools.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "tools" / "cql" / "translate.mjs", tools / "translate.mjs")
    (tools / "node_modules").symlink_to(PROJECT_ROOT / "tools" / "cql" / "node_modules")
    (tools / "package.json").write_text('{"type": "module"}', encoding="utf-8")
    (tmp_path / "shared").symlink_to(PROJECT_ROOT.parent / "shared")
    return project


@pytest.mark.parametrize("cql", LIBRARIES, ids=lambda lib: lib.name)
def test_every_valueset_the_cql_names_is_a_dependency(cql: CqlLibrary) -> None:
    """Read from the source, independently of the ELM: each ValueSet a library declares or names
    through an include (Common."sle") is a depends-on of its Library."""
    declared: dict[str, str] = {}  # "<alias or ''>.<name>" -> url
    for lib in [cql, *(x for x in LIBRARIES if x.name in {i.name for i in cql.includes})]:
        alias = "" if lib is cql else next(i.alias for i in cql.includes if i.name == lib.name)
        for name, url in re.findall(r"^valueset \"([^\"]+)\": '([^']+)'", lib.text(), re.MULTILINE):
            declared[f"{alias}.{name}"] = url
    named = {declared[f".{n}"] for n in re.findall(r"^valueset \"([^\"]+)\"", cql.text(), re.M)}
    for alias, name in re.findall(r'\b([A-Za-z]+)\."([^"]+)"', cql.text()):
        if f"{alias}.{name}" in declared:
            named.add(declared[f"{alias}.{name}"])
    depends = {
        a["resource"].split("|")[0]
        for a in _resource(cql).get("relatedArtifact", [])
        if "/ValueSet/" in a["resource"]
    }
    assert depends == named


def test_translation_errors_are_reported(tmp_path: Path) -> None:
    """A broken library makes translate raise with the translator's message (not a traceback)."""
    project = _project(tmp_path, {"Broken.cql": "library Broken version '1'\ndefine X: 1 +\n"})
    with pytest.raises(CqlTranslationError) as caught:
        translate(project)
    assert caught.value.errors and "Broken.cql" in caught.value.errors[0]


def test_declarations_are_read_outside_comments_and_stale_elm_goes(tmp_path: Path) -> None:
    """A comment line starting with "library" names no library; ELM no file declares is removed."""
    project = _project(
        tmp_path,
        {
            "Main.cql": "/*\nlibrary in words, not a declaration\n*/\nlibrary Main version '1'\n"
            "include Helper version '2' called H\ndefine X: H.Y\n",
            "Helper.cql": "// library Decoy\nlibrary Helper version '2'\ndefine Y: 1\n",
        },
    )
    build = project / "cql" / "build"
    build.mkdir()
    (build / "Renamed.json").write_text("{}", encoding="utf-8")
    result = translate(project)
    assert len(result.translated) == 2
    assert result.removed == ["removed Renamed.json (no CQL library of that name)"]
    assert sorted(p.name for p in build.glob("*.json")) == ["Helper.json", "Main.json"]
    assert [(lib.name, lib.version) for lib in cql_libraries(project / "cql")] == [
        ("Helper", "2"),
        ("Main", "1"),
    ]
    (main,) = [lib for lib in cql_libraries(project / "cql") if lib.name == "Main"]
    assert [(i.name, i.version, i.alias) for i in main.includes] == [("Helper", "2", "H")]
    assert elm_includes(main_elm(build, "Main")) == [("Helper", "2")]


def test_resource_ids_of_cql_libraries() -> None:
    """The id is the CQL library name (url <base>/Library/<name>); a name no id can be is refused."""
    assert resource_id("NCT06010472DiseaseActivity") == "NCT06010472DiseaseActivity"
    assert resource_id("FHIRHelpers") == "FHIRHelpers"
    for bad in ("Has_Underscore", "x" * 65):
        with pytest.raises(ConfigurationError):
            resource_id(bad)


def test_cql_check_names_each_stale_library(tmp_path: Path) -> None:
    """`cql check` lists the Library files that lack their CQL library's current content."""
    from fhir_trial.commands.cql import stale_libraries

    for path in DEFAULT_RESOURCES_DIR.glob("Library-*.json"):
        shutil.copy(path, tmp_path / path.name)
    assert stale_libraries(tmp_path) == []
    labs = json.loads((tmp_path / "Library-NCT06010472Labs.json").read_text(encoding="utf-8"))
    labs["content"] = labs["content"][:1]  # the ELM left out
    (tmp_path / "Library-NCT06010472Labs.json").write_text(json.dumps(labs), encoding="utf-8")
    (tmp_path / "Library-FHIRHelpers.json").unlink()
    assert stale_libraries(tmp_path) == ["Library-FHIRHelpers.json", "Library-NCT06010472Labs.json"]
