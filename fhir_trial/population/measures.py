"""The feasibility counters: what each criterion rules out, the funnel, statuses, open data.

Counts, per criterion of CRITERIA.md (in its order), over the living patients:

- ``removes`` (*on its own*): patients the criterion rules out (an inclusion ``not-met``, an
  exclusion ``met``), whatever the other criteria say; a patient ruled out by three criteria
  counts once in each;
- ``remaining`` (*in protocol order*): the funnel; patients still in after this criterion and
  every one before it; ``first_removed_by`` is how many leave at this step;
- ``sole_removes`` (*impact*): patients ruled out by this criterion and no other: how many more
  would be potentially eligible (or eligible) if the criterion were dropped;
- the number of patients in each status;
- ``missing``: per item of the ``missing`` lists of ``unknown`` results, the patients it keeps
  unknown (each patient once per item), and the criteria that name it.

inc-ana, inc-anti-dsdna and inc-anti-sm only explain inc-autoantibody (``partOf``): they never rule
anyone out on their own, so they have status counts but no ``removes``/``remaining``.

Deceased patients (CRITERIA.md, "Real-world records") are a step of the funnel before the first
criterion: ``deceased`` counts the patients deceased on the screening date, and every per-criterion
count is over the living patients only, so the funnel starts at ``patients - deceased``. Deceased
patients count in the verdicts as ``ineligible``, never as eligible or potentially eligible.
Constant memory whatever the number of patients; :meth:`Feasibility.merge` sums partial counters
(one per process or Spark partition).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.report import STATUSES, EligibilityReport, Verdict

VERDICTS: tuple[Verdict, ...] = ("eligible", "potentially-eligible", "ineligible")
DECEASED_STEP = "deceased"  # the funnel's first step, before the criteria
VOTING: tuple[str, ...] = tuple(spec.id for spec in CRITERIA if spec.part_of is None)
# A missing item is the criterion's wording, the same for everyone; should one ever name a
# resource (``Patient/123``), the shared report must not: the reference is blanked.
_REFERENCE = re.compile(r"\b[A-Z][A-Za-z]{2,63}/[A-Za-z0-9\-.]{1,64}")
# Missing items as shared (references blanked): the same few wordings for every patient, so each
# is blanked once. Bounded: emptied when full (should items ever differ per patient).
_SHARED_ITEM: dict[str, str] = {}
_MAX_SHARED_ITEMS = 4096


def _shared_item(raw: str) -> str:
    item = _SHARED_ITEM.get(raw)
    if item is None:
        if len(_SHARED_ITEM) >= _MAX_SHARED_ITEMS:
            _SHARED_ITEM.clear()
        item = _SHARED_ITEM[raw] = _REFERENCE.sub("<resource>", raw)
    return item


# (kind, status) pairs that remove a patient: what rules_out says yes to (Feasibility.add's loop).
_RULING_OUT = frozenset({("inclusion", "not-met"), ("exclusion", "met")})


def rules_out(kind: str, status: str) -> bool:
    """Whether a criterion result removes the patient (inclusion not-met, exclusion met)."""
    return (kind == "inclusion" and status == "not-met") or (
        kind == "exclusion" and status == "met"
    )


@dataclass(frozen=True)
class Skipped:
    """An input that produced no patient (not JSON, no Patient, ...), with a one-line reason."""

    source: str
    reason: str


@dataclass
class Feasibility:
    """Counters over many reports; constant memory whatever the number of patients."""

    as_of: str | None = None
    total: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(
        default_factory=lambda: {spec.id: Counter() for spec in CRITERIA}
    )
    removes: Counter[str] = field(default_factory=Counter)
    first_removed_by: Counter[str] = field(default_factory=Counter)
    sole_removes: Counter[str] = field(default_factory=Counter)
    missing: Counter[str] = field(default_factory=Counter)  # item -> patients kept unknown
    missing_criteria: dict[str, set[str]] = field(default_factory=dict)  # item -> criterion ids
    skipped: list[Skipped] = field(default_factory=list)
    deceased: int = 0

    @property
    def living(self) -> int:
        """Patients alive on the screening date: where the criteria's funnel starts."""
        return self.total - self.deceased

    def add(self, report: EligibilityReport) -> None:
        """Count one patient's report (a deceased patient only in the deceased step and verdicts)."""
        self.total += 1
        self.as_of = self.as_of or report.as_of
        self.verdicts[report.verdict] += 1
        if report.deceased is not None:
            self.deceased += 1
            return
        out: list[str] = []
        missing: set[str] = set()
        statuses = self.statuses
        for result in report.criteria:
            status = result.status
            counter = statuses.get(result.id)
            if counter is None:  # not setdefault: that would build a Counter per criterion
                counter = statuses[result.id] = Counter()
            counter[status] += 1
            if (result.kind, status) in _RULING_OUT and result.part_of is None:
                self.removes[result.id] += 1
                out.append(result.id)
            if status == "unknown":
                for raw in result.missing:
                    item = _shared_item(raw)
                    missing.add(item)
                    self.missing_criteria.setdefault(item, set()).add(result.id)
        if out:
            self.first_removed_by[out[0]] += 1
            if len(out) == 1:
                self.sole_removes[out[0]] += 1
        self.missing.update(missing)

    def merge(self, other: Feasibility) -> None:
        """Add another counter's counts to this one (e.g. one counter per Spark partition)."""
        self.total += other.total
        self.deceased += other.deceased
        self.as_of = self.as_of or other.as_of
        self.verdicts.update(other.verdicts)
        for criterion_id, counter in other.statuses.items():
            self.statuses.setdefault(criterion_id, Counter()).update(counter)
        self.removes.update(other.removes)
        self.first_removed_by.update(other.first_removed_by)
        self.sole_removes.update(other.sole_removes)
        self.missing.update(other.missing)
        for item, ids in other.missing_criteria.items():
            self.missing_criteria.setdefault(item, set()).update(ids)
        self.skipped.extend(other.skipped)

    def funnel(self) -> list[tuple[str, int]]:
        """``(criterion id, patients remaining after it)`` for the criteria that vote.

        The deceased step comes before (:attr:`living` is where the criteria start).
        """
        remaining = self.living
        out = []
        for criterion_id in VOTING:
            remaining -= self.first_removed_by[criterion_id]
            out.append((criterion_id, remaining))
        return out

    # --------------------------------------------------------------------------- renderings
    def rows(self) -> list[dict[str, Any]]:
        """One row per criterion: id, kind, ref, removes, remaining, one count per status."""
        remaining = dict(self.funnel())
        rows = []
        for spec in CRITERIA:
            counts = self.statuses.get(spec.id, Counter())
            row: dict[str, Any] = {
                "id": spec.id,
                "kind": spec.kind,
                "ref": spec.ref,
                "partOf": spec.part_of,
                "removes": None if spec.part_of else self.removes[spec.id],
                "remaining": remaining.get(spec.id),
            }
            row.update({status: counts[status] for status in STATUSES})
            rows.append(row)
        return rows

    def render(self, output_format: str) -> str:
        """The feasibility report (no what-if, no suppression) as ``text``, ``json`` or ``csv``."""
        from fhir_trial.population.model import FeasibilityReport

        return FeasibilityReport(self).render(output_format)

    def to_json(self) -> dict[str, Any]:
        """The counters as JSON: totals, verdict counts, the criterion rows, skipped inputs.

        The compact form ``$screen-population`` answers with; the CLI's report is
        :meth:`fhir_trial.population.model.FeasibilityReport.to_json`.
        """
        return {
            "asOf": self.as_of,
            "patients": self.total,
            "deceased": self.deceased,
            "living": self.living,
            "verdicts": {verdict: self.verdicts[verdict] for verdict in VERDICTS},
            "criteria": self.rows(),
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
        }

    def to_csv(self) -> str:
        """The counters as CSV: the deceased step, then the criterion rows."""
        out = io.StringIO()
        columns = ["id", "kind", "ref", "partOf", "removes", "remaining", *STATUSES]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerow(
            {k: "" for k in columns}
            | {"id": DECEASED_STEP, "removes": self.deceased, "remaining": self.living}
        )
        for row in self.rows():
            writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
        return out.getvalue()

    def to_text(self) -> str:
        """The terminal table of the feasibility report (see :meth:`render`)."""
        return self.render("text")
