"""Screening whole populations: the local engine, the Spark engine and the feasibility report.

- :mod:`.local`: screening many patients in this machine's processes (Bundles, Bulk NDJSON);
- :mod:`.spark`: the same on Apache Spark (optional extra ``spark``; import it explicitly, it is
  not imported here so that pyspark stays optional);
- :mod:`.measures` (the counters), :mod:`.model` (the report: every measure, what-if runs,
  suppression by :mod:`.suppression`), :mod:`.whatif` (``--set``), the renderings
  :mod:`.report_text`, :mod:`.report_json`, :mod:`.report_csv`, :mod:`.report_html` (charts:
  :mod:`.charts`, matplotlib, optional extra ``report``), and :mod:`.worklist` (``--report DIR``).

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
    screen_one,
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
    "screen_one",
    "screen_records",
    "verdict_line",
]
