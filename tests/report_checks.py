"""Checks on a feasibility report document that do not trust the code that made it.

:func:`recomputable` rebuilds, from the published JSON alone, every exact relation a reader can
use (totals, status rows, funnel steps, the first and last steps, the verdicts, the same count in
two runs) and finds the suppressed counts those relations pin down, with numpy's rank (not the
project's own elimination) and the non-negativity of counts.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

Cell = dict[str, Any]


def _cells(data: dict[str, Any]) -> tuple[dict[Hashable, Cell], list[dict[Hashable, int]]]:
    cells: dict[Hashable, Cell] = {}
    relations: list[dict[Hashable, int]] = []
    for run in data["runs"]:
        r = run["id"]
        pop = run["population"]
        for name in ("patients", "deceased", "living"):
            cells[(r, name)] = pop[name]
        relations.append({(r, "patients"): 1, (r, "deceased"): -1, (r, "living"): -1})
        for verdict, cell in run["verdicts"].items():
            cells[(r, "verdict", verdict)] = cell
        relations.append({(r, "patients"): 1} | {(r, "verdict", v): -1 for v in run["verdicts"]})
        for row in run["criteria"]:
            for status, cell in row["statuses"].items():
                cells[(r, "status", row["id"], status)] = cell
            relations.append(
                {(r, "living"): -1} | {(r, "status", row["id"], s): 1 for s in row["statuses"]}
            )
            if row["rulesOut"] is not None:
                cells[(r, "rulesOut", row["id"])] = row["rulesOut"]
                ruling = "not-met" if row["kind"] == "inclusion" else "met"
                relations.append(
                    {(r, "rulesOut", row["id"]): 1, (r, "status", row["id"], ruling): -1}
                )
                cells[(r, "impact", row["id"])] = row["impact"]
        steps = run["funnel"]
        cells[(r, "remaining", "screened")] = steps[0]["remaining"]
        relations.append({(r, "remaining", "screened"): 1, (r, "patients"): -1})
        previous = (r, "remaining", "screened")
        for step in steps[1:]:
            name = step["step"]
            cells[(r, "removed", name)] = step["removed"]
            cells[(r, "remaining", name)] = step["remaining"]
            relations.append({previous: 1, (r, "removed", name): -1, (r, "remaining", name): -1})
            previous = (r, "remaining", name)
        relations.append({(r, "removed", "deceased"): 1, (r, "deceased"): -1})
        first, last = steps[2]["step"], steps[-1]["step"]
        relations.append({(r, "removed", first): 1, (r, "rulesOut", first): -1})
        relations.append({(r, "removed", last): 1, (r, "impact", last): -1})
        relations.append(
            {
                (r, "remaining", last): 1,
                (r, "verdict", "eligible"): -1,
                (r, "verdict", "potentially-eligible"): -1,
            }
        )
        for item in run["missingData"]:
            cells[(r, "missing", item["item"])] = item["patients"]
    return cells, relations


def recomputable(data: dict[str, Any], truth: dict[str, Any]) -> set[Hashable]:
    """The suppressed counts of a report that its published counts give away exactly.

    ``truth``: the same report unsuppressed (a count a reader works out is then known to them).
    """
    cells, relations = _cells(data)
    true_cells, _ = _cells(truth)
    known = {key: cell["count"] for key, cell in cells.items() if cell["count"] is not None}
    hidden = [key for key in cells if key not in known]
    found: set[Hashable] = set()
    while True:
        new: set[Hashable] = set()
        unknown = [key for key in hidden if key not in known]
        for relation in relations:  # counts are >= 0: a sum of same-sign unknowns equal to 0
            free = [key for key in relation if key not in known]
            rest = sum(c * known[key] for key, c in relation.items() if key in known)
            if free and rest == 0 and len({relation[key] > 0 for key in free}) == 1:
                new.update(free)
        if unknown:
            index = {key: n for n, key in enumerate(unknown)}
            rows = [
                [relation.get(key, 0) for key in unknown]
                for relation in relations
                if any(key in index for key in relation)
            ]
            if rows:
                # x_i is pinned iff every solution of the homogeneous system has x_i = 0, i.e.
                # the i-th coordinate of every null-space vector is 0 (SVD null space).
                matrix = np.array(rows, dtype=float)
                _, singular, vt = np.linalg.svd(matrix)
                rank = int((singular > 1e-9 * max(1.0, singular.max(initial=0.0))).sum())
                null = vt[rank:]
                for key, n in index.items():
                    if null.shape[0] == 0 or np.abs(null[:, n]).max() < 1e-9:
                        new.add(key)
        new -= set(known)
        if not new:
            return found
        found |= new
        for key in new:
            known[key] = true_cells[key]["count"]


def suppressed_cells(data: dict[str, Any]) -> set[Hashable]:
    """The cells of a report shown as suppressed."""
    cells, _ = _cells(data)
    return {key for key, cell in cells.items() if cell["count"] is None}


def all_cells(data: dict[str, Any]) -> dict[Hashable, Cell]:
    """Every count cell of a report, keyed by (run, what, ...)."""
    return _cells(data)[0]
