"""The oracle: the reference CQL engine and the Python evaluator agree on every test patient.

Every clinical case under tests/cases and every Synthea bundle in ../shared/fixtures/synthea/bundles
goes through both ``fhir_trial.evaluate.evaluate`` and the CQL library (cql/build ELM) run by
cql-execution in ONE long-lived Node process for the whole test session. Each criterion's status,
the verdict and whether the patient was deceased on the screening date must be the same.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clinical_cases import ClinicalCase, all_cases, case_bundle

from fhir_trial.config import Settings
from fhir_trial.cql.engine import CqlEngine
from fhir_trial.evaluate import evaluate
from fhir_trial.record import CATEGORIES, PatientRecord

CASES = all_cases()
SYNTHEA_AS_OF = "2026-11-26"


@pytest.fixture(scope="session")
def cql_engine() -> Iterator[CqlEngine]:
    """One Node process running the reference engine, for the whole session."""
    engine = CqlEngine().start()
    try:
        yield engine
    finally:
        engine.close()


def _differences(python: dict[str, str], cql: dict[str, str]) -> list[str]:
    return [
        f"{k}: python {python[k]} / cql {cql.get(k)}" for k in python if python[k] != cql.get(k)
    ]


def _compare(
    engine: CqlEngine,
    bundle: dict[str, Any],
    record: PatientRecord,
    settings: Settings,
    failed: list[str],
) -> None:
    report = evaluate(record, settings)
    result = engine.evaluate(bundle, settings, failed)
    python = {c.id: c.status for c in report.criteria}
    python["verdict"] = report.verdict
    python["deceased"] = str(report.deceased is not None)
    cql = dict(result.statuses)
    cql["verdict"] = result.verdict
    cql["deceased"] = str(result.deceased)
    assert not _differences(python, cql), "Python and CQL disagree: " + "; ".join(
        _differences(python, cql)
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_agrees(cql_engine: CqlEngine, case: ClinicalCase) -> None:
    """Each clinical case: same status per criterion and same verdict on both sides."""
    _compare(
        cql_engine, case_bundle(case), case.record(), case.settings_object(), sorted(case.failed)
    )


def _synthea_bundles() -> list[Path]:
    folder = (
        Path(__file__).resolve().parent.parent.parent
        / "shared"
        / "fixtures"
        / "synthea"
        / "bundles"
    )
    return sorted(folder.glob("*.json"))


@pytest.mark.parametrize("path", _synthea_bundles(), ids=lambda p: p.stem.split("_")[0])
def test_synthea_agrees(cql_engine: CqlEngine, path: Path) -> None:
    """Each Synthea bundle: same status per criterion and same verdict on both sides."""
    bundle = json.loads(path.read_text(encoding="utf-8"))
    record = PatientRecord()
    for entry in bundle.get("entry", []):
        if isinstance(entry.get("resource"), dict):
            record.add(entry["resource"], entry.get("fullUrl"))
    record.mark_obtained(*CATEGORIES)
    settings = Settings(as_of=dt.date.fromisoformat(SYNTHEA_AS_OF))
    _compare(cql_engine, bundle, record, settings, [])


def test_synthea_bundles_are_there(shared_dir: Path) -> None:
    """The shared Synthea fixtures exist (the oracle must not pass by running nothing)."""
    assert _synthea_bundles(), f"no Synthea bundles under {shared_dir}"
    assert CASES, "no clinical cases under tests/cases"


def test_engine_reports_a_bad_bundle(cql_engine: CqlEngine) -> None:
    """A request that is not a Bundle gives a clear error and the engine keeps running."""
    from fhir_trial.cql.engine import CqlEngineError

    with pytest.raises(CqlEngineError, match="not a FHIR Bundle"):
        cql_engine.evaluate({"resourceType": "Patient"})
    ok = cql_engine.evaluate(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "id": "p", "gender": "male"}}],
        },
        Settings(as_of=None),
    )
    assert ok.statuses["inc-contraception"] == "not-applicable"


def test_parameters_reach_the_library_that_declares_them(cql_engine: CqlEngine) -> None:
    """The parameters live in NCT06010472Common; passed by name, they decide the area libraries."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "id": "p", "birthDate": "1986-05-01"}}],
    }
    as_of = dt.date(2026, 11, 26)  # 40 years old
    assert cql_engine.evaluate(bundle, Settings(as_of=as_of)).statuses["inc-age"] == "met"
    older = Settings(as_of=as_of, min_age=41)
    assert cql_engine.evaluate(bundle, older).statuses["inc-age"] == "not-met"


def test_engine_refuses_a_build_folder_missing_an_included_library(tmp_path: Path) -> None:
    """Without the ELM of a library the main one includes, start() names it (no engine error)."""
    from fhir_trial.cql.build import BUILD_DIR
    from fhir_trial.errors import ConfigurationError

    for path in BUILD_DIR.glob("*.json"):
        if path.stem != "NCT06010472Labs":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ConfigurationError, match="NCT06010472Labs"):
        CqlEngine(build_dir=tmp_path).start()


def test_the_published_libraries_run_as_they_are(cql_engine: CqlEngine) -> None:
    """The ELM inside resources/Library-*.json alone (no cql/build) gives the same results: the
    published Libraries are complete, includes and all."""
    from fhir_trial.cql.engine import published_elm

    sample = [c for c in CASES if c.name.split("/")[0] in ("inc-age", "exc-heart-failure")][:12]
    assert sample
    with CqlEngine(libraries=published_elm(Settings().resources_dir)) as published:
        for case in sample:
            settings, failed = case.settings_object(), sorted(case.failed)
            bundle = case_bundle(case)
            expected = cql_engine.evaluate(bundle, settings, failed)
            assert published.evaluate(bundle, settings, failed).raw == expected.raw, case.name


def test_published_libraries_missing_one_are_refused() -> None:
    from fhir_trial.cql.engine import published_elm
    from fhir_trial.errors import ConfigurationError

    elms = published_elm(Settings().resources_dir)
    assert len(elms) == len(list(Path(Settings().resources_dir).glob("Library-*.json")))
    without = [e for e in elms if e["library"]["identifier"]["id"] != "NCT06010472Common"]
    with pytest.raises(ConfigurationError, match="NCT06010472Common"):
        CqlEngine(libraries=without).start()
