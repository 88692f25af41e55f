"""Population screening on Spark gives what the local path gives, patient by patient.

The local path is the reference: ``records_from_ndjson`` + ``evaluate`` + ``Feasibility``. One
``local[2]`` SparkSession serves the whole module (starting it takes ~10-20 s).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.cli import main
from fhir_trial.config import Settings
from fhir_trial.demo import DEMO_AS_OF, demo_bundle_paths
from fhir_trial.errors import InputError
from fhir_trial.evaluate import evaluate
from fhir_trial.population import Feasibility
from fhir_trial.population.model import FeasibilityReport
from fhir_trial.sources import records_from_ndjson
from fhir_trial.sources.bundle import read_json_file, records_from_bundle

pytest.importorskip(
    "pyspark", reason="pyspark is not installed (pip install -e '.[spark]' or '.[dev]')"
)

from pyspark.sql import SparkSession

from fhir_trial.population.spark import run_spark_screening, screen_ndjson_spark, spark_session

FIXTURE = Path("fixtures/synthea/bulk-ndjson-10-patients")
FIXTURE_AS_OF = dt.date(2024, 8, 6)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """One local SparkSession for the module; its Python workers run this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Small local "blocks" (256 KiB) split the larger files into several partitions, as HDFS
    # blocks would: line numbers and export order must survive the split.
    session = spark_session("local[2]", {"spark.hadoop.fs.local.block.size": str(256 * 1024)})
    yield session
    session.stop()


def local_path(
    folder: Path, settings: Settings, missing: Sequence[str] = ()
) -> tuple[dict[str, dict[str, Any]], Feasibility]:
    """The reference: the local NDJSON reader, the evaluator and the feasibility counters."""
    feasibility = Feasibility()
    reports = {}
    for record in records_from_ndjson(folder, missing):
        report = evaluate(record, settings)
        feasibility.add(report)
        reports[report.patient] = report.to_json()
    return reports, feasibility


def spark_path(
    spark: SparkSession, folder: Path, settings: Settings, missing: Sequence[str] = ()
) -> tuple[dict[str, dict[str, Any]], Feasibility]:
    frame, feasibility = screen_ndjson_spark(spark, folder, settings, missing)
    rows = frame.collect()
    reports = {row["patient"]: json.loads(row["report"]) for row in rows}
    assert len(reports) == len(rows), "one row per patient"
    for row in rows:
        assert row["verdict"] == reports[row["patient"]]["verdict"]
    return reports, feasibility


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["criteria"]}


def test_synthea_export_same_as_local_path(spark: SparkSession, shared_dir: Path) -> None:
    folder = shared_dir / FIXTURE
    settings = Settings(as_of=FIXTURE_AS_OF)
    expected, expected_feasibility = local_path(folder, settings)
    got, feasibility = spark_path(spark, folder, settings)

    assert len(got) == expected_feasibility.total == 13
    assert expected_feasibility.deceased == 3  # the deceased step is compared too
    assert sorted(got) == sorted(expected)
    for patient, report in expected.items():
        assert got[patient]["verdict"] == report["verdict"], patient
        assert statuses(got[patient]) == statuses(report), patient
        assert got[patient] == report, patient  # reasons, evidence and warnings too
    assert feasibility.to_json() == expected_feasibility.to_json()
    assert feasibility.to_csv() == expected_feasibility.to_csv()
    # The whole feasibility report, every measure, suppressed or not.
    for min_count in (0, 3):
        got_report = FeasibilityReport(feasibility, min_count=min_count).to_json()
        assert got_report == FeasibilityReport(expected_feasibility, min_count=min_count).to_json()


def test_what_if_runs_on_spark_same_as_local(spark: SparkSession, shared_dir: Path) -> None:
    """Baseline and what-if runs are evaluated in one pass on the executors: the same report."""
    folder = shared_dir / FIXTURE
    settings = Settings(as_of=FIXTURE_AS_OF)
    variants = [settings.replace(sledai_min_score=4), settings.replace(lvef_window_days=3650)]
    local = [local_path(folder, s)[1] for s in (settings, *variants)]
    screening = run_spark_screening(spark, folder, settings, what_if=variants)
    screening.evaluated.unpersist()
    labels = [
        ("sledai_min_score=4", {"sledai_min_score": "4"}),
        ("lvef", {"lvef_window_days": "3650"}),
    ]

    def report(counters: list[Feasibility]) -> dict[str, Any]:
        what_ifs = [
            (label, changes, c) for (label, changes), c in zip(labels, counters[1:], strict=True)
        ]
        return FeasibilityReport(counters[0], what_ifs, None, 2).to_json()

    assert report([screening.feasibility, *screening.what_if]) == report(local)


# --------------------------------------------------------------------------- synthetic export
def _write(path: Path, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo patients as a Bulk export: Conditions and Observations in different files.

    One MedicationRequest points to a shared Medication (in its own file) instead of carrying its
    code; the second Observation file is gzipped; the first (large, so several splits) ends with a
    truncated line naming demo-maya (so her Observations are in doubt, nobody else's); the Encounter file
    has a line that is not JSON; the log reports a failed Consent download.
    """
    folder = tmp_path_factory.mktemp("spark-export")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for path in demo_bundle_paths():
        for entry in read_json_file(path)["entry"]:
            resource = entry["resource"]
            by_type.setdefault(resource["resourceType"], []).append(resource)
    assert by_type.get("Condition") and len(by_type.get("Observation", [])) > 4

    request = next(
        r for r in by_type["MedicationRequest"] if r["subject"]["reference"] == "Patient/demo-ana"
    )
    medication = {
        "resourceType": "Medication",
        "id": "shared-1",
        "code": request.pop("medicationCodeableConcept"),
    }
    request["medicationReference"] = {"reference": "Medication/shared-1"}

    def dumps(resources: list[dict[str, Any]]) -> list[str]:
        return [json.dumps(r) for r in resources]

    observations = by_type.pop("Observation")
    half = len(observations) // 2
    # Observations of a patient the export does not hold make the file span several splits.
    stray = [
        {"resourceType": "Observation", "id": f"stray-{n}", "subject": {"reference": "Patient/x"}}
        for n in range(6000)
    ]
    truncated = '{"resourceType": "Observation", "subject": {"reference": "Patient/demo-maya"} '
    _write(
        folder / "Observation.000.ndjson",
        [*dumps(observations[:half]), "", *dumps(stray), truncated],
    )
    _write(folder / "Observation.001.ndjson.gz", dumps(observations[half:]))
    for rtype, resources in by_type.items():
        _write(folder / f"{rtype}.000.ndjson", dumps(resources))
    _write(folder / "Medication.000.ndjson", dumps([medication]))
    _write(folder / "Encounter.000.ndjson", ['{"resourceType": "Encounter", "id": "e1"}', "oops"])
    _write(
        folder / "log.ndjson",
        [
            json.dumps({"eventId": "kickoff", "eventDetail": {}}),
            json.dumps(
                {"eventId": "download_error", "eventDetail": {"file": "Consent.000.ndjson"}}
            ),
        ],
    )
    return folder


@pytest.mark.parametrize("missing", [(), ("MedicationRequest",)])
def test_synthetic_export_same_as_local_path(
    spark: SparkSession, export: Path, missing: tuple[str, ...]
) -> None:
    observations_file = str(export / "Observation.000.ndjson")
    assert spark.sparkContext.textFile(observations_file, 1).getNumPartitions() > 1
    settings = Settings(as_of=DEMO_AS_OF)
    expected, expected_feasibility = local_path(export, settings, missing)
    got, feasibility = spark_path(spark, export, settings, missing)

    assert got == expected
    assert feasibility.to_json() == expected_feasibility.to_json()
    assert feasibility.total == len(demo_bundle_paths())

    ana, maya = got["Patient/demo-ana"], got["Patient/demo-maya"]
    # Condition and Observations came from different files and still meet the SLE criteria.
    assert statuses(ana)["inc-sle-diagnosis"] == "met"
    assert statuses(ana)["inc-sledai"] == "met"
    # The bad lines are reported with file and line, and do not stop the run.
    warnings = "\n".join(ana["warnings"])
    assert "Encounter.000.ndjson:2: not JSON" in warnings
    assert "Consent could not be obtained" in warnings  # the log's failed download
    # The truncated Observation line (the file's last, past a split) names demo-maya: only her
    # Observations are in doubt.
    bad_line = len((export / "Observation.000.ndjson").read_text(encoding="utf-8").splitlines())
    assert f"Observation.000.ndjson:{bad_line}: not JSON" in warnings
    assert (
        "Observation could not be obtained: an unreadable line in the export "
        f"(Observation.000.ndjson:{bad_line})"
    ) in maya["warnings"]
    assert not any("Observation could not be obtained" in w for w in ana["warnings"])
    if missing:
        assert any("MedicationRequest is not in the export" in w for w in ana["warnings"])
    else:
        # The shared Medication was joined to demo-ana: the same statuses as her own Bundle.
        bundle = next(p for p in demo_bundle_paths() if p.name.startswith("01-"))
        record = next(iter(records_from_bundle(read_json_file(bundle))))
        record.mark_failed("Consent", "as in the export")
        own = evaluate(record, settings).to_json()
        assert statuses(ana) == statuses(own)
        assert ana["verdict"] == own["verdict"] == "potentially-eligible"


def test_missing_folder_is_an_input_error(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a folder"):
        screen_ndjson_spark(spark, tmp_path / "nope", Settings(as_of=DEMO_AS_OF))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.ndjson files"):
        screen_ndjson_spark(spark, tmp_path / "empty", Settings(as_of=DEMO_AS_OF))
    with pytest.raises(InputError, match="Observations"):
        screen_ndjson_spark(spark, tmp_path, Settings(as_of=DEMO_AS_OF), ["Observations"])


def test_cli_engine_spark_prints_what_the_local_engine_prints(
    spark: SparkSession, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = {}
    names = ("report.json", "report.csv", "report.html", "phi/worklist.csv", "phi/results.ndjson")
    for engine in ("local", "spark"):
        out_file = tmp_path / f"{engine}.jsonl"
        folder = tmp_path / f"{engine}-report"
        args = ["screen-population", "--ndjson", str(export), "--as-of", DEMO_AS_OF.isoformat()]
        args += ["--engine", engine, "--output", str(out_file), "--no-progress"]
        args += ["--report", str(folder), "--set", "max_age=120", "--min-count", "2"]
        assert main(args) == 0
        outputs[engine] = (
            capsys.readouterr().out,
            out_file.read_text(encoding="utf-8"),
            *((folder / name).read_text(encoding="utf-8") for name in names),
        )
    assert outputs["spark"] == outputs["local"]
    assert "potentially-eligible" in outputs["spark"][0]
    assert main(["screen-population", "--demo", "--engine", "spark"]) == 2
    assert "--engine spark works with --ndjson" in capsys.readouterr().err
