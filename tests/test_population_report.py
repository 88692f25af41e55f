"""The feasibility report: every measure on a population counted by hand, suppression, what-if
runs, the PHI split of ``--report DIR`` and the report of the Synthea Bulk sample."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from report_checks import all_cells, recomputable, suppressed_cells

from fhir_trial.cli import main
from fhir_trial.commands import screen_population
from fhir_trial.config import Settings
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.population import Feasibility
from fhir_trial.population.measures import rules_out
from fhir_trial.population.model import FeasibilityReport
from fhir_trial.population.suppression import exposed, protect
from fhir_trial.population.whatif import parse_what_if
from fhir_trial.report import CriterionResult, EligibilityReport, Status

AS_OF = "2026-11-26"
SYNTHEA = Path("fixtures/synthea/bulk-ndjson-10-patients")
SYNTHEA_AS_OF = "2024-08-06"


def patient(
    statuses: dict[str, Status] | None = None,
    missing: dict[str, tuple[str, ...]] | None = None,
    *,
    deceased: bool = False,
    pid: str = "x",
) -> EligibilityReport:
    """A report: inclusions met and exclusions not met unless ``statuses`` says otherwise."""
    statuses, missing = statuses or {}, missing or {}
    results = tuple(
        CriterionResult(
            id=spec.id,
            kind=spec.kind,
            ref=spec.ref,
            status=statuses.get(spec.id, "met" if spec.kind == "inclusion" else "not-met"),
            reason="",
            missing=missing.get(spec.id, ()),
            part_of=spec.part_of,
        )
        for spec in CRITERIA
    )
    voting = [r for r in results if r.part_of is None]
    if deceased or any(rules_out(r.kind, r.status) for r in voting):
        verdict = "ineligible"
    elif all(r.status in ("met", "not-met", "not-applicable") for r in voting):
        verdict = "eligible"
    else:
        verdict = "potentially-eligible"
    return EligibilityReport(
        study="NCT06010472",
        patient=f"Patient/{pid}",
        as_of=AS_OF,
        verdict=verdict,  # type: ignore[arg-type]
        criteria=results,
        deceased="2026-01-01" if deceased else None,
    )


def hand_made() -> Feasibility:
    """Seven patients, counted by hand in the tests below."""
    feasibility = Feasibility()
    for report in (
        patient(pid="p1"),  # eligible
        patient({"inc-sledai": "unknown"}, {"inc-sledai": ("SLEDAI score",)}, pid="p2"),
        patient({"inc-age": "not-met"}, pid="p3"),  # out by inc-age alone
        patient({"inc-age": "not-met", "exc-malignancy": "met"}, pid="p4"),  # out by both
        patient({"exc-malignancy": "met"}, pid="p5"),  # out by exc-malignancy alone
        patient(
            {"inc-sledai": "unknown", "inc-lvef": "unknown"},
            {"inc-sledai": ("SLEDAI score",), "inc-lvef": ("LVEF", "SLEDAI score")},
            pid="p6",
        ),
        patient({"inc-age": "not-met"}, deceased=True, pid="p7"),  # a step before the criteria
    ):
        feasibility.add(report)
    return feasibility


def step(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["funnel"] if s["step"] == name)


def row(run: dict[str, Any], criterion_id: str) -> dict[str, Any]:
    return next(r for r in run["criteria"] if r["id"] == criterion_id)


# --------------------------------------------------------------------------- every measure
def test_every_measure_counted_by_hand() -> None:
    run = FeasibilityReport(hand_made()).to_json()["runs"][0]
    pop = run["population"]
    assert (pop["patients"]["count"], pop["deceased"]["count"], pop["living"]["count"]) == (7, 1, 6)
    assert {v: c["count"] for v, c in run["verdicts"].items()} == {
        "eligible": 1,
        "potentially-eligible": 2,
        "ineligible": 4,
    }
    assert run["verdicts"]["ineligible"]["percent"] == 57.1  # 4 of the 7 screened

    # The funnel, in protocol order, percent of the screened.
    assert [s["step"] for s in run["funnel"][:3]] == ["screened", "deceased", "inc-age"]
    assert step(run, "screened")["remaining"] == {"count": 7, "percent": 100.0}
    assert step(run, "deceased")["removed"]["count"] == 1
    assert step(run, "inc-age")["removed"]["count"] == 2  # p3, p4
    assert step(run, "inc-age")["remaining"] == {"count": 4, "percent": 57.1}
    assert step(run, "exc-malignancy")["removed"]["count"] == 1  # p5 (p4 left at inc-age)
    assert step(run, "exc-investigator-judgement")["remaining"]["count"] == 3

    # On its own: statuses (percent of the living), what it rules out, its impact.
    age, malignancy = row(run, "inc-age"), row(run, "exc-malignancy")
    assert age["statuses"]["met"]["count"] == 4
    assert age["statuses"]["not-met"] == {"count": 2, "percent": 33.3}
    assert age["rulesOut"]["count"] == 2 and malignancy["rulesOut"]["count"] == 2
    assert age["impact"]["count"] == 1  # p3 alone would come back without inc-age
    assert malignancy["impact"]["count"] == 1  # p5
    assert row(run, "inc-sledai")["statuses"]["unknown"]["count"] == 2
    assert row(run, "inc-sledai")["impact"]["count"] == 0
    assert row(run, "inc-ana")["rulesOut"] is None  # a part never votes

    # Missing data: each patient once per item, most first, with its criteria and area.
    missing = {item["item"]: item for item in run["missingData"]}
    assert [item["item"] for item in run["missingData"]] == ["SLEDAI score", "LVEF"]
    assert missing["SLEDAI score"]["patients"] == {"count": 2, "percent": 33.3}
    assert missing["SLEDAI score"]["criteria"] == ["inc-lvef", "inc-sledai"]
    assert missing["SLEDAI score"]["area"] == "disease activity"
    assert missing["LVEF"]["area"] == "labs"


def test_text_separates_the_two_measures() -> None:
    text = FeasibilityReport(hand_made()).render("text")
    assert "in protocol order" in text and "on its own" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("inc-age"))
    # removed here, left, left%, rules out on its own, impact, then the statuses
    assert line.split()[:6] == ["inc-age", "2", "4", "57.1%", "2", "1"]


def test_csv_holds_every_count() -> None:
    data = FeasibilityReport(hand_made()).to_json()
    rows = list(csv.DictReader(io.StringIO(FeasibilityReport(hand_made()).render("csv"))))
    assert len(rows) == len(all_cells(data))  # one line per count
    impact = next(r for r in rows if r["id"] == "inc-age" and r["measure"] == "impact")
    assert (impact["run"], impact["count"], impact["percent"]) == ("baseline", "1", "16.7")


def test_merge_gives_the_same_report() -> None:
    whole = hand_made()
    parts = [Feasibility(), Feasibility()]
    reports = [patient(pid="a"), patient({"inc-age": "not-met"}, pid="b")]
    for number, report in enumerate(reports):
        parts[number].add(report)
    merged = Feasibility()
    for part in parts:
        merged.merge(part)
    direct = Feasibility()
    for report in reports:
        direct.add(report)
    assert FeasibilityReport(merged).to_json() == FeasibilityReport(direct).to_json()
    assert whole.total == 7


# --------------------------------------------------------------------------- suppression
def audit(report: FeasibilityReport) -> dict[str, Any]:
    """Assert the suppression property on a report; return its document."""
    data = report.to_json()
    truth = FeasibilityReport(report.baseline, report.what_ifs, report.inputs, 0).to_json()
    hidden = suppressed_cells(data)
    true_cells = all_cells(truth)
    for key, cell in all_cells(data).items():
        value = true_cells[key]["count"]
        if 0 < value < report.min_count:
            assert key in hidden, f"{key} = {value} is published"
        if key in hidden:
            assert cell["percent"] is None, key  # a percentage would give it away
    # No relation, nor any combination of them, recomputes a suppressed count.
    assert recomputable(data, truth) == set()
    # The same count in two runs is suppressed in both or in neither.
    for key in hidden:
        for run in data["runs"]:
            assert (run["id"], *key[1:]) in hidden
    return data


def test_suppression_hides_small_counts_and_they_cannot_be_recomputed() -> None:
    data = audit(FeasibilityReport(hand_made(), min_count=3))
    run = data["runs"][0]
    assert data["suppression"]["minCount"] == 3 and data["suppression"]["suppressedCells"] > 0
    assert step(run, "deceased")["removed"]["suppressed"] is True  # 1 deceased
    assert row(run, "inc-age")["impact"]["count"] is None
    assert run["population"]["patients"]["count"] == 7  # 7 >= 3: shown
    text = FeasibilityReport(hand_made(), min_count=3).render("text")
    assert "* suppressed" in text


def test_without_min_count_nothing_is_suppressed() -> None:
    data = FeasibilityReport(hand_made()).to_json()
    assert suppressed_cells(data) == set() and data["suppression"]["rule"] == "off"


def test_suppression_with_what_if_runs() -> None:
    changed = Feasibility()
    for report in (patient(pid="q1"), patient({"inc-age": "not-met"}, pid="q2")) * 4:
        changed.add(report)
    base = Feasibility()
    for report in (patient(pid="q1"),) * 6 + (patient({"inc-age": "not-met"}, pid="q2"),) * 2:
        base.add(report)
    audit(FeasibilityReport(base, [("max_age=70", {"max_age": "70"}, changed)], min_count=3))


@pytest.mark.parametrize("min_count", [2, 3, 5, 11])
def test_suppression_property_on_the_synthea_sample(
    min_count: int, synthea_report: FeasibilityReport
) -> None:
    synthea_report.min_count = min_count
    audit(synthea_report)


def test_a_lone_relation_gets_a_complement() -> None:
    values = {"total": 20, "a": 2, "b": 9, "c": 9}
    relations = [{"total": 1, "a": -1, "b": -1, "c": -1}]
    hidden = protect(values, relations, 5)
    assert hidden == {"a", "b"}  # the smallest other count
    assert exposed(values, relations, {"a"}) == {"a"}
    assert exposed(values, relations, hidden) == set()
    # Zeros are shown, and a complement of 0 would give the cell away: it is not chosen.
    values = {"total": 12, "a": 3, "z": 0, "c": 9}
    hidden = protect(values, relations=[{"total": 1, "a": -1, "z": -1, "c": -1}], min_count=5)
    assert hidden == {"a", "c"}


# --------------------------------------------------------------------------- what-if
def test_parse_what_if() -> None:
    base = Settings(as_of=None)
    runs = parse_what_if(
        ["sledai_min_score=6", "lvef_window_days=365,sledai_window_days=120"], base
    )
    assert runs[0].settings.sledai_min_score == 6 and runs[0].label == "sledai_min_score=6"
    assert runs[1].changes == {"lvef_window_days": "365", "sledai_window_days": "120"}
    assert runs[1].settings.lvef_window_days == 365 and runs[1].settings.sledai_window_days == 120


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sledai_min=6", "--set sledai_min: not a screening setting; choose from: as_of"),
        ("read_timeout_s=3", "--set read_timeout_s: not a screening setting"),
        ("sledai_min_score=six", "--set sledai_min_score=six: expected a whole number"),
        ("hemoglobin_min_g_per_l=-1", "expected a number of 0 or more"),
        ("as_of=26/11/2026", "expected a date like 2026-11-26"),
        ("sledai_min_score", "expected FIELD=VALUE"),
    ],
)
def test_cli_bad_what_if_is_exit_2(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["screen-population", "--demo", "--set", value, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_what_if_is_evaluated_with_its_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["screen-population", "--demo", "--format", "json", "--no-progress", "--workers", "2"]
    assert main([*args, "--set", "max_age=120", "--set", "min_age=18"]) == 0
    data = json.loads(capsys.readouterr().out)
    baseline, older, same = data["runs"]
    assert (older["label"], older["settings"]) == ("max_age=120", {"max_age": "120"})
    # demo-li is over 65: out in the baseline, back in when the age limit is 120.
    assert row(baseline, "inc-age")["rulesOut"]["count"] == 1
    assert row(older, "inc-age")["rulesOut"]["count"] == 0
    assert same["criteria"] == baseline["criteria"]  # the default value: the same report
    text_args = ["screen-population", "--demo", "--no-progress", "--set", "max_age=120"]
    assert main(text_args) == 0
    assert "What-if runs beside the baseline" in capsys.readouterr().out


def test_workers_default_to_the_cpus() -> None:
    option = next(p for p in screen_population.command.params if p.name == "workers")
    assert option.default == max(1, min(os.cpu_count() or 1, 64))


# --------------------------------------------------------------------------- --report DIR
@pytest.fixture(scope="module")
def synthea_report(shared_dir: Path) -> FeasibilityReport:
    from fhir_trial.evaluate import evaluate
    from fhir_trial.sources import records_from_ndjson

    settings = Settings(as_of=__import__("datetime").date.fromisoformat(SYNTHEA_AS_OF))
    variant = settings.replace(sledai_min_score=4)
    base, what_if = Feasibility(), Feasibility()
    for record in records_from_ndjson(shared_dir / SYNTHEA):
        base.add(evaluate(record, settings))
        what_if.add(evaluate(record, variant))
    return FeasibilityReport(base, [("sledai_min_score=4", {"sledai_min_score": "4"}, what_if)])


def patient_ids(results: Path) -> set[str]:
    ids = set()
    for line in results.read_text(encoding="utf-8").splitlines():
        ids.add(json.loads(line)["patient"].split("/", 1)[1])
    return ids


def test_report_dir_keeps_patients_apart(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = ["screen-population", "--ndjson", str(shared_dir / SYNTHEA), "--as-of", SYNTHEA_AS_OF]
    assert main([*args, "--report", str(out), "--no-progress", "--set", "sledai_min_score=4"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [
        "phi",
        "report.csv",
        "report.html",
        "report.json",
    ]
    assert sorted(p.name for p in (out / "phi").iterdir()) == ["results.ndjson", "worklist.csv"]
    ids = patient_ids(out / "phi" / "results.ndjson")
    assert len(ids) == 13
    for name in ("report.csv", "report.html", "report.json"):
        text = (out / name).read_text(encoding="utf-8")
        named = sorted(pid for pid in ids if pid in text)
        assert named == [], f"{name} names {named}"
        assert not re.search(r"Patient/[A-Za-z0-9\-.]+", text), name
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["runs"][0]["population"]["patients"]["count"] == 13
    assert data["inputs"] is None  # the slot for input accounting


def test_worklist_lists_who_is_still_in_with_open_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["screen-population", "--demo", "--report", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    text = (out / "phi" / "worklist.csv").read_text(encoding="utf-8")
    worklist = list(csv.DictReader(io.StringIO(text)))
    verdicts = data["runs"][0]["verdicts"]
    in_count = verdicts["eligible"]["count"] + verdicts["potentially-eligible"]["count"]
    assert len(worklist) == in_count == 2
    sara = next(line for line in worklist if line["patient"] == "Patient/demo-sara")
    assert sara["verdict"] == "potentially-eligible" and sara["source"] == "04-labs-not-yet-done"
    assert "inc-sledai" in sara["unknown"].split() and "inc-consent" in sara["needs review"]
    assert int(sara["open items"]) == len(f"{sara['unknown']} {sara['needs review']}".split())
    assert "SLEDAI-2K total score within 90 days" in sara["missing data"]
    ids = patient_ids(out / "phi" / "results.ndjson")
    for name in ("report.csv", "report.html", "report.json"):
        text = (out / name).read_text(encoding="utf-8")
        assert not [pid for pid in ids if pid in text], name
        assert "labs-not-yet-done" not in text  # nor the file a patient came from


def test_inputs_slot_is_a_table(tmp_path: Path) -> None:
    inputs = {"Condition": {"files": 1, "resources": 40, "rejected": 2}, "errors": ["x: y"]}
    report = FeasibilityReport(hand_made(), inputs=inputs)
    assert report.to_json()["inputs"] == inputs
    page = report.render("html")
    assert '<h2 id="inputs">Inputs</h2>' in page and "<th>rejected</th>" in page


def test_the_audit_catches_primary_suppression_alone() -> None:
    """A negative control: hiding only the small counts leaves them recomputable."""
    truth = FeasibilityReport(hand_made()).to_json()
    data = json.loads(json.dumps(truth))
    for cell in all_cells(data).values():
        if 0 < cell["count"] < 3:
            cell["count"] = cell["percent"] = None
    leaks = recomputable(data, truth)
    assert ("baseline", "deceased") in leaks  # patients - living
    assert ("baseline", "removed", "deceased") in leaks


def test_a_missing_item_naming_a_resource_is_blanked() -> None:
    feasibility = Feasibility()
    feasibility.add(
        patient({"inc-sledai": "unknown"}, {"inc-sledai": ("score for Patient/abc-1 missing",)})
    )
    items = [i["item"] for i in FeasibilityReport(feasibility).to_json()["runs"][0]["missingData"]]
    assert items == ["score for <resource> missing"]


def test_skipped_inputs_are_counted_without_their_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhir_trial.demo import demo_bundle_paths

    bad = tmp_path / "jane-doe-1970.json"
    bad.write_text("{not json", encoding="utf-8")
    out = tmp_path / "report"
    args = ["screen-population", "--bundles", str(demo_bundle_paths()[0]), str(bad)]
    assert main([*args, "--report", str(out), "--no-progress", "--as-of", AS_OF]) == 0
    assert "skipped jane-doe-1970.json" in capsys.readouterr().out  # the terminal names it
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [s["inputs"] for s in data["skipped"]] == [1]
    for name in ("report.csv", "report.html", "report.json"):
        assert "jane-doe" not in (out / name).read_text(encoding="utf-8"), name


@pytest.mark.parametrize("seed", range(12))
def test_suppression_property_on_random_populations(seed: int) -> None:
    """Seeded random populations (a few criteria varied, some deceased, a what-if run)."""
    import random

    rng = random.Random(seed)
    varied = ["inc-age", "inc-sledai", "inc-lvef", "exc-malignancy", "exc-recent-trial"]
    choices: list[Status] = ["met", "not-met", "unknown", "needs-review"]

    def population() -> Feasibility:
        feasibility = Feasibility()
        for number in range(rng.randint(5, 60)):
            statuses: dict[str, Status] = {}
            for criterion_id in varied:
                if rng.random() < 0.3:
                    statuses[criterion_id] = rng.choice(choices)
            missing = {
                cid: ("item " + cid[-3:],) for cid, st in statuses.items() if st == "unknown"
            }
            feasibility.add(
                patient(statuses, missing, deceased=rng.random() < 0.1, pid=f"r{number}")
            )
        return feasibility

    base = population()
    audit(FeasibilityReport(base, min_count=rng.randint(2, 8)))
    # A what-if run with the same counts: every count is in a group of two.
    audit(FeasibilityReport(base, [("w", {"x": "1"}, base)], min_count=rng.randint(2, 8)))
