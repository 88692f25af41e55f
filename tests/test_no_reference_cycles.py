"""Evaluating a record leaves nothing for the cyclic garbage collector.

Why it matters: the population screening turns the collector off while it screens a bucket (see
fhir_trial.sources.ndjson_screen), so a patient's record and what was derived from it must be
freed by reference counting the moment the next patient starts. Anything caught in a reference
cycle (a nested function and the frame it closes over, in the compiled build: see setup.py) would
keep its patient's resources alive until the bucket ends, and the memory would grow with the
bucket. Every clinical case and every Synthea patient is evaluated with the collector off, then
the collector must find nothing.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable

import pytest
from clinical_cases import ClinicalCase, all_cases

from fhir_trial.evaluate import evaluate
from fhir_trial.terminology import load_terminology

CASES = all_cases()


def _garbage_after(work: Callable[[], object]) -> Counter[str]:
    """The types of what the collector finds after ``work()`` ran with it off (empty: nothing was
    left in a cycle)."""
    gc.collect()
    gc.disable()  # as in a screening's bucket
    try:
        work()
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it frees, to name it
        gc.collect()
        return Counter(type(item).__name__ for item in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_the_collector_finds_what_a_cycle_leaves() -> None:
    """The check itself can fail: a cycle made on purpose is found."""

    def make_cycle() -> None:
        node: dict[str, object] = {}
        node["self"] = node

    assert _garbage_after(make_cycle) == Counter({"dict": 1})


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_evaluating_a_case_leaves_no_cycle(case: ClinicalCase) -> None:
    settings = case.settings_object()
    load_terminology(settings.resources_dir)  # loaded once, outside the measured work
    record = case.record()
    evaluate(case.record(), settings)  # caches filled once, as in a screening

    def work() -> None:
        evaluate(record, settings)

    assert _garbage_after(work) == Counter()
