"""The feasibility report model: every measure, per run (baseline and what-ifs), suppressed.

:meth:`FeasibilityReport.to_json` is the one source of every rendering (``report.json`` is it;
the CSV, the text table and the HTML page are drawn from it), so suppression holds everywhere and
the Spark engine gives the same report as the local one when its counters are the same.

Per run: the population (screened, deceased, living), the verdicts, the funnel in protocol order
(``removed`` at each step and ``remaining`` after it, percent of the screened), per criterion the
patients in each status and the patients it rules out on its own (percent of the living), its
``impact`` (patients it alone rules out: how many more would be potentially eligible without it),
and the missing data that keeps patients ``unknown``. A count is ``{"count": n, "percent": p}``;
a suppressed one ``{"count": null, "percent": null, "suppressed": true}``.

``inputs`` is the slot for input accounting (per resource type: files, lines, rejected lines,
orphans, duplicates; Bulk error files): any JSON-serialisable mapping, shown as a table. It is
shared as given, so it must hold aggregates only (no patient ids).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.population.measures import DECEASED_STEP, VERDICTS, VOTING, Feasibility
from fhir_trial.population.suppression import Relation, protect
from fhir_trial.report import STATUSES

STUDY = "NCT06010472"
SCREENED_STEP = "screened"
BASELINE = "baseline"
_SPECS = {spec.id: spec for spec in CRITERIA}
_RULING_STATUS = {"inclusion": "not-met", "exclusion": "met"}


@cache
def criterion_area(criterion_id: str) -> str:
    """The clinical area of a criterion (its module under fhir_trial.criteria): ``labs``, ..."""
    from fhir_trial.evaluate import DERIVED, FUNCTIONS

    if criterion_id == DERIVED:
        criterion_id = next(spec.id for spec in CRITERIA if spec.part_of == DERIVED)
    function = FUNCTIONS.get(criterion_id)
    module = getattr(function, "__module__", "") or ""
    return module.rsplit(".", 1)[-1].replace("_", " ") or "other"


def _first(criterion_ids: set[str]) -> str:
    """The first of some criteria in protocol order."""
    return next((spec.id for spec in CRITERIA if spec.id in criterion_ids), "")


@dataclass
class Run:
    """One run's counters: the baseline (``settings`` empty) or a what-if (the changed fields)."""

    id: str
    label: str
    settings: dict[str, str]
    feasibility: Feasibility


def _cells(run: int, f: Feasibility) -> tuple[dict[Hashable, int], list[Relation]]:
    """The counts of one run and the exact relations between them a reader could use."""
    cells: dict[Hashable, int] = {
        (run, "patients"): f.total,
        (run, "deceased"): f.deceased,
        (run, "living"): f.living,
    }
    relations: list[Relation] = [{(run, "patients"): 1, (run, "deceased"): -1, (run, "living"): -1}]
    for verdict in VERDICTS:
        cells[(run, "verdict", verdict)] = f.verdicts[verdict]
    relations.append({(run, "patients"): 1} | {(run, "verdict", v): -1 for v in VERDICTS})
    for spec in CRITERIA:
        counts = f.statuses.get(spec.id, Counter())
        for status in STATUSES:
            cells[(run, "status", spec.id, status)] = counts[status]
        relations.append({(run, "living"): -1} | {(run, "status", spec.id, s): 1 for s in STATUSES})
    previous: Hashable = (run, "living")
    for criterion_id, remaining in f.funnel():
        removed_key, remaining_key = (
            (run, "removed", criterion_id),
            (run, "remaining", criterion_id),
        )
        cells[removed_key] = f.first_removed_by[criterion_id]
        cells[remaining_key] = remaining
        cells[(run, "impact", criterion_id)] = f.sole_removes[criterion_id]
        relations.append({previous: 1, removed_key: -1, remaining_key: -1})
        previous = remaining_key
    first, last = VOTING[0], VOTING[-1]
    # The first step removes whoever the first criterion rules out; whoever leaves at the last
    # step is ruled out by it alone; whoever is left at the end is (potentially) eligible.
    first_status = _RULING_STATUS[_SPECS[first].kind]
    relations.append({(run, "removed", first): 1, (run, "status", first, first_status): -1})
    relations.append({(run, "removed", last): 1, (run, "impact", last): -1})
    relations.append(
        {
            (run, "remaining", last): 1,
            (run, "verdict", "eligible"): -1,
            (run, "verdict", "potentially-eligible"): -1,
        }
    )
    for item, patients in f.missing.items():
        cells[(run, "missing", item)] = patients
    return cells, relations


@dataclass
class FeasibilityReport:
    """The feasibility report: the baseline run, what-if runs, inputs, suppression threshold."""

    baseline: Feasibility
    what_ifs: list[tuple[str, dict[str, str], Feasibility]] = field(default_factory=list)
    inputs: Mapping[str, Any] | None = None
    min_count: int = 0

    def runs(self) -> list[Run]:
        """The baseline first, then the what-if runs in the order given."""
        out = [Run(BASELINE, BASELINE, {}, self.baseline)]
        for number, (label, changes, feasibility) in enumerate(self.what_ifs, 1):
            out.append(Run(f"what-if-{number}", label, dict(changes), feasibility))
        return out

    def suppressed(self) -> tuple[dict[Hashable, int], list[Relation], set[Hashable]]:
        """Every cell, every relation, and the cells :func:`protect` suppresses."""
        values: dict[Hashable, int] = {}
        relations: list[Relation] = []
        runs = self.runs()
        for number, run in enumerate(runs):
            cells, rels = _cells(number, run.feasibility)
            values.update(cells)
            relations.extend(rels)
        # The same count in two runs is the same cell for a reader who compares them.
        by_name: dict[Hashable, list[Hashable]] = {}
        for key in values:
            by_name.setdefault(key[1:], []).append(key)  # type: ignore[index]
        groups = [keys for keys in by_name.values() if len(keys) > 1]
        totals = [key for key in values if key[1] in ("patients", "living")]  # type: ignore[index]
        return values, relations, protect(values, relations, self.min_count, groups, totals)

    # ------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON (see the module docstring); suppression applied."""
        values, _, hidden = self.suppressed()

        def count(key: Hashable, denominator: Hashable) -> dict[str, Any]:
            if key in hidden:
                return {"count": None, "percent": None, "suppressed": True}
            value, whole = values[key], values[denominator]
            percent = None
            if denominator not in hidden and whole:
                percent = round(100.0 * value / whole, 1)
            return {"count": value, "percent": percent}

        runs = []
        for number, run in enumerate(self.runs()):
            runs.append(self._run_json(number, run, count))
        # Grouped by reason, without the file's name (a file may be named after its patient).
        skipped = Counter(
            s.reason.replace(s.source, "<file>") if s.source else s.reason
            for s in self.baseline.skipped
        )
        return {
            "study": STUDY,
            "asOf": self.baseline.as_of,
            "suppression": {
                "minCount": self.min_count,
                "suppressedCells": len(hidden),
                "rule": (
                    f"counts from 1 to {self.min_count - 1} are suppressed, with enough other "
                    "counts that none can be recomputed from totals, funnel steps or percentages"
                    if self.min_count > 1
                    else "off"
                ),
            },
            "percentOf": {
                "population, verdicts, funnel": "patients screened",
                "criteria, impact, missingData": "living patients",
            },
            "inputs": dict(self.inputs) if self.inputs is not None else None,
            "skipped": [{"reason": reason, "inputs": n} for reason, n in sorted(skipped.items())],
            "runs": runs,
        }

    def _run_json(self, number: int, run: Run, count: Any) -> dict[str, Any]:
        f = run.feasibility
        patients, living = (number, "patients"), (number, "living")
        funnel: list[dict[str, Any]] = [
            {"step": SCREENED_STEP, "remaining": count(patients, patients)},
            {
                "step": DECEASED_STEP,
                "removed": count((number, "deceased"), patients),
                "remaining": count(living, patients),
            },
        ]
        for criterion_id, _ in f.funnel():
            spec = _SPECS[criterion_id]
            funnel.append(
                {
                    "step": criterion_id,
                    "kind": spec.kind,
                    "ref": spec.ref,
                    "title": spec.title,
                    "removed": count((number, "removed", criterion_id), patients),
                    "remaining": count((number, "remaining", criterion_id), patients),
                }
            )
        criteria = []
        for spec in CRITERIA:
            voting = spec.part_of is None
            ruling = (number, "status", spec.id, _RULING_STATUS[spec.kind])
            criteria.append(
                {
                    "id": spec.id,
                    "kind": spec.kind,
                    "ref": spec.ref,
                    "title": spec.title,
                    "partOf": spec.part_of,
                    "statuses": {
                        s: count((number, "status", spec.id, s), living) for s in STATUSES
                    },
                    "rulesOut": count(ruling, living) if voting else None,
                    "impact": count((number, "impact", spec.id), living) if voting else None,
                }
            )
        missing = sorted(f.missing.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "id": run.id,
            "label": run.label,
            "settings": run.settings,
            "asOf": f.as_of,
            "population": {
                "patients": count(patients, patients),
                "deceased": count((number, "deceased"), patients),
                "living": count(living, patients),
            },
            "verdicts": {v: count((number, "verdict", v), patients) for v in VERDICTS},
            "funnel": funnel,
            "criteria": criteria,
            "missingData": [
                {
                    "item": item,
                    "area": criterion_area(_first(f.missing_criteria.get(item, set()))),
                    "criteria": sorted(f.missing_criteria.get(item, ())),
                    "patients": count((number, "missing", item), living),
                }
                for item, _ in missing
            ],
        }

    # ------------------------------------------------------------------------------ renderings
    def render(self, output_format: str) -> str:
        """The report as ``text`` (terminal), ``json``, ``csv`` or ``html``."""
        from fhir_trial.population import report_csv, report_html, report_json, report_text

        data = self.to_json()
        if output_format == "json":
            return report_json.render(data)
        if output_format == "csv":
            return report_csv.render(data)
        if output_format == "html":
            return report_html.render(data)
        # The terminal is not shared: it names the inputs skipped (the shared forms count them).
        skipped = "".join(f"skipped {s.source}: {s.reason}\n" for s in self.baseline.skipped)
        return report_text.render(data) + skipped


def report_of(
    baseline: Feasibility,
    what_ifs: Sequence[tuple[str, dict[str, str], Feasibility]] = (),
    *,
    inputs: Mapping[str, Any] | None = None,
    min_count: int = 0,
) -> FeasibilityReport:
    """A :class:`FeasibilityReport` (a convenience for callers with positional counters)."""
    return FeasibilityReport(baseline, list(what_ifs), inputs, min_count)
