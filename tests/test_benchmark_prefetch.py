"""benchmarks/bench_cds.py plays the EHR: it runs every prefetch template of the discovery answer
against a synthetic record. A template with a search parameter it cannot match stops the benchmark
(it did once the NYHA words search, ``code:text``, was added), so ``make bench`` would fail long
after the change: this test runs its prefetch on the current templates.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_cds import execute_template, prefetch_for  # noqa: E402
from synthetic import synthetic_bundle  # noqa: E402

from fhir_trial.cds_hooks.discovery import prefetch_templates  # noqa: E402
from fhir_trial.config import Settings  # noqa: E402
from fhir_trial.searches import plan_searches  # noqa: E402
from fhir_trial.terminology import load_terminology  # noqa: E402


def test_the_benchmark_ehr_answers_every_prefetch_template() -> None:
    plan = plan_searches(load_terminology(Settings().resources_dir))
    patient_id, prefetch, total = prefetch_for(synthetic_bundle(1, 120), plan)
    assert set(prefetch) == set(prefetch_templates(plan))
    assert total >= 100 and patient_id
    searchsets = [v for v in prefetch.values() if v.get("resourceType") == "Bundle"]
    assert searchsets and all(v["type"] == "searchset" for v in searchsets)
    assert any(v["total"] > 0 for v in searchsets)


def test_code_text_matches_words_in_text_or_display_ignoring_case() -> None:
    resources = [
        {
            "resourceType": "Observation",
            "id": "o1",
            "subject": {"reference": "Patient/p"},
            "code": {"text": "NYHA functional class"},
        },
        {
            "resourceType": "Observation",
            "id": "o2",
            "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"display": "New York Heart Association class"}]},
        },
        {
            "resourceType": "Observation",
            "id": "o3",
            "subject": {"reference": "Patient/p"},
            "code": {"text": "heart rate"},
        },
    ]
    found = execute_template(
        "Observation?patient={{context.patientId}}&code:text=nyha,new%20york%20heart%20association",
        "p",
        resources,
    )
    assert [e["resource"]["id"] for e in found["entry"]] == ["o1", "o2"]
