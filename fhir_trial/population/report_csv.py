"""``report.csv``: every count of the report, one per line (a tidy table for spreadsheets).

Columns: ``run`` (baseline, what-if-1, ...), ``section`` (population, verdicts, funnel, criteria,
missingData), ``id`` (step, criterion, verdict or missing item), ``measure`` (removed, remaining,
a status, rulesOut, impact, patients, ...), ``count``, ``percent`` (of the screened or of the
living, as the JSON's ``percentOf`` says), ``suppressed`` (``yes`` when the count is withheld).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

COLUMNS = ("run", "section", "id", "measure", "count", "percent", "suppressed")


def _cells(data: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """``(section, id, measure, count)`` for every count of one run."""
    for name, value in data["population"].items():
        yield "population", name, "patients", value
    for verdict, value in data["verdicts"].items():
        yield "verdicts", verdict, "patients", value
    for step in data["funnel"]:
        for measure in ("removed", "remaining"):
            if measure in step:
                yield "funnel", step["step"], measure, step[measure]
    for row in data["criteria"]:
        for status, value in row["statuses"].items():
            yield "criteria", row["id"], status, value
        for measure in ("rulesOut", "impact"):
            if row[measure] is not None:
                yield "criteria", row["id"], measure, row[measure]
    for item in data["missingData"]:
        yield "missingData", item["item"], "patients", item["patients"]


def render(data: dict[str, Any]) -> str:
    """The CSV text of a report document (:meth:`FeasibilityReport.to_json`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for run in data["runs"]:
        for section, key, measure, value in _cells(run):
            writer.writerow(
                [
                    run["id"],
                    section,
                    key,
                    measure,
                    "" if value["count"] is None else value["count"],
                    "" if value["percent"] is None else value["percent"],
                    "yes" if value.get("suppressed") else "",
                ]
            )
    return out.getvalue()
