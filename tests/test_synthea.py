"""Real-world-shaped records: the Synthea fixtures all screen, and what they yield is pinned.

The golden file ``tests/golden/synthea-statuses.json`` holds every criterion's status and the verdict
(and the death date, for the patients Synthea made deceased) for each Synthea bundle, screened as of 2026-11-26. A change in the evaluator that moves any of them
fails here and must be looked at (then the golden file regenerated on purpose:
``FHIR_TRIAL_UPDATE_GOLDEN=1 pytest tests/test_synthea.py``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.sources.bundle import read_json_file, record_from_bundle
from fhir_trial.sources.ndjson import records_from_ndjson

GOLDEN = Path(__file__).parent / "golden" / "synthea-statuses.json"
SETTINGS = Settings(as_of=dt.date(2026, 11, 26))


def _bundles(shared_dir: Path) -> list[Path]:
    paths = sorted((shared_dir / "fixtures" / "synthea" / "bundles").glob("*.json"))
    assert len(paths) == 13
    return paths


def _screen(bundle: dict[str, Any]) -> dict[str, Any]:
    report = evaluate(record_from_bundle(bundle), SETTINGS)
    pinned: dict[str, Any] = {"verdict": report.verdict, **report.statuses()}
    if report.deceased is not None:  # Synthea writes deceasedDateTime with a zone offset
        pinned["deceased"] = report.deceased
    return pinned


def test_synthea_bundles_match_the_pinned_statuses(shared_dir: Path) -> None:
    actual = {path.name: _screen(read_json_file(path)) for path in _bundles(shared_dir)}
    if os.environ.get("FHIR_TRIAL_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert actual == expected


def test_synthea_lupus_code_needs_review(shared_dir: Path) -> None:
    """Synthea codes lupus as 200936003 (lupus erythematosus, not specifically SLE)."""
    bundle = read_json_file(_bundles(shared_dir)[0])
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    condition = copy.deepcopy(
        next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    )
    condition["fullUrl"] = "urn:uuid:00000000-0000-4000-8000-000000000001"
    condition["resource"]["id"] = "lupus"
    condition["resource"]["code"] = {
        "coding": [
            {
                "system": "http://snomed.info/sct",
                "code": "200936003",
                "display": "Lupus erythematosus",
            }
        ],
        "text": "Lupus erythematosus",
    }
    condition["resource"]["subject"] = {"reference": patient["fullUrl"]}
    condition["resource"].pop("abatementDateTime", None)
    bundle["entry"].append(condition)
    report = evaluate(record_from_bundle(bundle), SETTINGS)
    sle = report.criterion("inc-sle-diagnosis")
    assert sle.status == "needs-review", sle.reason
    assert "Condition/lupus" in sle.evidence
    assert "1997" in sle.reason


@pytest.mark.parametrize("folder", ["blaze"])
def test_other_synthea_shapes_screen_without_error(shared_dir: Path, folder: str) -> None:
    screened = 0
    for path in sorted((shared_dir / "fixtures" / "synthea" / folder).glob("*.json")):
        bundle = read_json_file(path)
        if not any(
            e.get("resource", {}).get("resourceType") == "Patient" for e in bundle.get("entry", [])
        ):
            continue  # the shared Organization/Practitioner batches
        report = evaluate(record_from_bundle(bundle), SETTINGS)
        assert len(report.criteria) == 29
        screened += 1
    assert screened == 5


def test_bulk_export_screens_every_patient(shared_dir: Path) -> None:
    folder = shared_dir / "fixtures" / "synthea" / "bulk-ndjson-10-patients"
    verdicts = [evaluate(record, SETTINGS).verdict for record in records_from_ndjson(folder)]
    assert len(verdicts) == 13
    # No SLE anywhere in the export: every patient fails inc-sle-diagnosis (absence rule 3).
    assert set(verdicts) == {"ineligible"}
