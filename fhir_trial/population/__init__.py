"""Screening whole populations: the local engine, the Spark engine and the feasibility report.

- :mod:`.local`: screening many patients in this machine's processes (Bundles, Bulk NDJSON);
- :mod:`.spark`: the same on Apache Spark (optional extra ``spark``; import it explicitly, it is
  not imported here so that pyspark stays optional).

The names below are the public API, re-exported so ``from fhir_trial.population import X`` works.
"""

from __future__ import annotations

from fhir_trial.population.local import (
    DECEASED_STEP,
    VERDICTS,
    Feasibility,
    Screened,
    Skipped,
    bounded_map,
    bundle_paths,
    record_from_payload,
    record_payload,
    rules_out,
    screen_bundle_files,
    screen_ndjson,
    screen_records,
    verdict_line,
)

__all__ = [
    "DECEASED_STEP",
    "VERDICTS",
    "Feasibility",
    "Screened",
    "Skipped",
    "bounded_map",
    "bundle_paths",
    "record_from_payload",
    "record_payload",
    "rules_out",
    "screen_bundle_files",
    "screen_ndjson",
    "screen_records",
    "verdict_line",
]
