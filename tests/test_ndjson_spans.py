"""A patient's consecutive lines in a plain file are read where they are (spans), not copied.

The split records where each run of lines lies in the data file; the worker reads it there.
Whatever way a line travels (a span, a copied run as in a gzip file, a line routed alone), the
reports, the line numbers and the input account must be the same.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_trial.config import Settings
from fhir_trial.errors import InputError
from fhir_trial.population import screen_ndjson
from fhir_trial.record import CATEGORIES
from fhir_trial.sources import ndjson_buckets
from fhir_trial.sources.ndjson import NdjsonExport

SETTINGS = Settings(as_of=__import__("datetime").date.fromisoformat("2026-11-26"))
LUNG_CANCER = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C34.90"}]}
HYPERTENSION = {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}
HEMOGLOBIN = {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}


def _condition(cid: str, pid: str, code: dict[str, Any] = HYPERTENSION) -> str:
    return json.dumps(
        {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": code,
            "subject": {"reference": f"Patient/{pid}"},
        }
    )


def _observation(oid: str, pid: str, value: float) -> str:
    return json.dumps(
        {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": HEMOGLOBIN,
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2026-10-01",
            "valueQuantity": {"value": value, "unit": "g/dL"},
        }
    )


def _export(folder: Path) -> None:
    """Runs of several patients, cut and interleaved, with every odd line between them."""
    folder.mkdir()
    patients = [
        json.dumps({"resourceType": "Patient", "id": p, "birthDate": "1980-01-01"}) for p in "abcde"
    ]
    (folder / "Patient.000.ndjson").write_text("\n".join(patients) + "\n")
    observations = []
    for n in range(60):
        pid = "abcde"[(n // 7) % 5]
        observations.append(_observation(f"o{n}", pid, 9 + n % 5))
    observations[9] = observations[9] + "\r"  # CRLF
    observations[17] = "   " + observations[17]  # leading spaces
    observations[20] = ""
    observations[21] = "   "
    observations[25] = '{"resourceType":"Observation","subject":{"reference":"Patient/b"} cut'
    observations[30] = _observation("big", "c", 1).replace("final", "final" + " " * 900)
    observations[33] = observations[33].replace("Patient/", "Patient\\/")
    observations[40] = json.dumps(
        {
            "resourceType": "Observation",
            "id": "both",
            "subject": {"reference": "Patient/d"},
            "performer": [{"reference": "Patient/e"}],
        }
    )
    observations[44] = _observation("o3", "a", 20)  # a second version, elsewhere
    (folder / "Observation.000.ndjson").write_text("\n".join(observations))  # no final newline
    conditions = [_condition(f"c{n}", "abcde"[n % 5]) for n in range(20)]
    conditions[12] = _condition("c2", "c", LUNG_CANCER)  # c2 again, deciding differently
    conditions[13] = _condition("c13", "d", LUNG_CANCER) + "\r"
    (folder / "Condition.000.ndjson").write_bytes(("\r\n".join(conditions) + "\r\n").encode())


def _screen(folder: Path) -> tuple[Any, Any, NdjsonExport]:
    export = NdjsonExport(folder, complete_types=CATEGORIES, max_line_bytes=800)
    reports = [s.report.to_json() for s in screen_ndjson(export, SETTINGS, workers=1)]
    return reports, export.account.to_json(), export


@pytest.mark.parametrize("small", [False, True], ids=["default", "small-blocks-and-ranges"])
def test_spans_give_what_copied_runs_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool
) -> None:
    _export(tmp_path / "plain")
    packed = tmp_path / "gzip"
    packed.mkdir()
    for path in (tmp_path / "plain").iterdir():
        (packed / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    if small:  # spans cut by blocks, flushes and ranges, and joined again where they meet
        monkeypatch.setattr(ndjson_buckets, "RANGE_BYTES", 2500)
        monkeypatch.setattr(ndjson_buckets, "BLOCK_BYTES", 700)
        monkeypatch.setattr(ndjson_buckets, "FLUSH_BYTES", 1500)
    spans = _screen(tmp_path / "plain")
    gzipped = _screen(packed)
    monkeypatch.setattr(ndjson_buckets, "IN_PLACE", False)
    copied = _screen(tmp_path / "plain")
    assert sum(job.spanned for job in spans[2].jobs) > 0  # the spans were used
    assert sum(job.spanned for job in copied[2].jobs) == 0
    assert spans[:2] == copied[:2]
    # Reports and account name the files: only their names differ.
    assert json.dumps(spans[:2]).replace(".ndjson", ".ndjson.gz") == json.dumps(gzipped[:2])
    by_patient = {r["patient"]: r for r in spans[0]}
    reviews = [
        c["reason"] for c in by_patient["Patient/c"]["criteria"] if c["status"] == "needs-review"
    ]
    assert any("Condition.000.ndjson:3 gives" in why and ":13 gives" in why for why in reviews)
    assert [r["place"] for r in spans[1]["rejected"]] == [
        "Observation.000.ndjson:26",
        "Observation.000.ndjson:31",
    ]


@pytest.mark.parametrize("change", ["appended", "removed"])
def test_a_data_file_changed_after_the_split_is_an_error(tmp_path: Path, change: str) -> None:
    _export(tmp_path / "plain")
    export = NdjsonExport(tmp_path / "plain", complete_types=CATEGORIES)
    export.prepare()
    path = tmp_path / "plain" / "Observation.000.ndjson"
    if change == "removed":
        path.unlink()
    else:
        with path.open("a") as handle:
            handle.write("\n")
    with pytest.raises(InputError, match="changed" if change == "appended" else "no longer"):
        list(export)


def test_spans_read_without_pread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _export(tmp_path / "plain")
    with_pread = _screen(tmp_path / "plain")
    monkeypatch.setattr(ndjson_buckets, "_PREAD", None)  # as on Windows: seek and read
    assert _screen(tmp_path / "plain")[:2] == with_pread[:2]


def test_the_split_gives_the_collector_back(tmp_path: Path) -> None:
    import gc

    _export(tmp_path / "plain")
    assert gc.isenabled()
    with NdjsonExport(tmp_path / "plain") as export:
        export.prepare()  # splits with the collector off
    assert gc.isenabled()
    gc.disable()
    try:  # and leaves it off when it was off
        with NdjsonExport(tmp_path / "plain") as export:
            export.prepare()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("block", [None, 300], ids=["one-block", "small-blocks"])
def test_a_line_of_the_limit_is_read_one_byte_more_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int | None
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Patient.000.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "a", "birthDate": "1980-01-01"}) + "\n"
    )
    limit = 700

    def padded(cid: str, size: int) -> str:
        line = _condition(cid, "a")
        return line[:-1] + " " * (size - len(line)) + "}"

    lines = [
        _condition("c0", "a"),
        padded("c1", limit),
        padded("c2", limit + 1),
        padded("c3", limit),
    ]
    (folder / "Condition.000.ndjson").write_text("\n".join(lines) + "\n")
    if block:
        monkeypatch.setattr(ndjson_buckets, "BLOCK_BYTES", block)
    export = NdjsonExport(folder, complete_types=CATEGORIES, max_line_bytes=limit)
    list(screen_ndjson(export, SETTINGS, workers=1))
    assert export.account.oversized == ["Condition.000.ndjson:3"]
    assert export.account.types["Condition"].resources == 3
