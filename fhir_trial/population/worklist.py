"""``--report DIR``: the shareable aggregates in DIR, what names patients apart in DIR/phi/.

- ``DIR/report.html``, ``DIR/report.json``, ``DIR/report.csv``: the feasibility report
  (aggregates only, small counts suppressed with ``--min-count``);
- ``DIR/phi/worklist.csv``: the eligible and potentially eligible patients with their open items
  (criteria unknown or to review, the data that is missing), for the coordinators;
- ``DIR/phi/results.ndjson``: every patient's full report (CRITERIA.md's shape), one per line.

The per-patient files are written as patients are screened (memory stays flat); the aggregates
at the end.
"""

from __future__ import annotations

import csv
import json
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO

from fhir_trial.errors import InputError
from fhir_trial.population.local import Screened
from fhir_trial.population.model import FeasibilityReport
from fhir_trial.report import EligibilityReport

PHI_DIR = "phi"
WORKLIST_COLUMNS = (
    "patient",
    "source",
    "verdict",
    "open items",
    "unknown",
    "needs review",
    "missing data",
    "note",
)
AGGREGATES = {"report.html": "html", "report.json": "json", "report.csv": "csv"}


def worklist_row(screened: Screened) -> dict[str, str] | None:
    """The worklist line of a patient still in (eligible or potentially eligible), else None."""
    report: EligibilityReport = screened.report
    if report.verdict not in ("eligible", "potentially-eligible"):
        return None
    voting = [c for c in report.criteria if c.part_of is None]
    unknown = [c for c in voting if c.status == "unknown"]
    review = [c for c in voting if c.status == "needs-review"]
    missing: list[str] = []
    for result in (*unknown, *review):
        missing += [item for item in result.missing if item not in missing]
    return {
        "patient": report.patient,
        "source": screened.source,
        "verdict": report.verdict,
        "open items": str(len(unknown) + len(review)),
        "unknown": " ".join(c.id for c in unknown),
        "needs review": " ".join(c.id for c in review),
        "missing data": "; ".join(missing),
        "note": report.reason or "",
    }


class ReportDirectory:
    """Writes ``--report DIR`` (a context manager; :meth:`add` per patient, :meth:`finish`)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._stack = ExitStack()
        self._results: IO[str] | None = None
        self._worklist: csv.DictWriter[str] | None = None

    def __enter__(self) -> ReportDirectory:
        phi = self.folder / PHI_DIR
        try:
            phi.mkdir(parents=True, exist_ok=True)
            self._results = self._stack.enter_context(
                (phi / "results.ndjson").open("w", encoding="utf-8")
            )
            handle = self._stack.enter_context(
                (phi / "worklist.csv").open("w", encoding="utf-8", newline="")
            )
        except OSError as exc:
            self._stack.close()
            raise InputError(
                f"cannot write the report to {self.folder}: {exc.strerror or exc}"
            ) from None
        self._worklist = csv.DictWriter(handle, fieldnames=WORKLIST_COLUMNS, lineterminator="\n")
        self._worklist.writeheader()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    def add(self, screened: Screened) -> None:
        """Write one patient's full report and, if still in, their worklist line."""
        assert self._results is not None and self._worklist is not None
        self._results.write(json.dumps(screened.report.to_json(), ensure_ascii=False) + "\n")
        row = worklist_row(screened)
        if row is not None:
            self._worklist.writerow(row)

    def finish(self, report: FeasibilityReport) -> list[Path]:
        """Write the aggregates (HTML, JSON, CSV); return the paths written."""
        written = []
        for name, output_format in AGGREGATES.items():
            path = self.folder / name
            path.write_text(report.render(output_format), encoding="utf-8")
            written.append(path)
        return written
