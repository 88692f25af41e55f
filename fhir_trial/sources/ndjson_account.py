"""Every input of a Bulk NDJSON export accounted for: what was read, rejected, missing, doubtful.

:class:`InputAccount` is what the readers (local and Spark) fill in and the feasibility report
shows: per resource type the files, resources read, lines rejected and resources without a
patient; the types the criteria do not read; the types the criteria need that the export does not
hold (and whether something vouches they are simply empty); duplicate ids, orphans and Patients
that share an id. It names ids and ``<file>:<line>`` places, never clinical content. It is plain
data: :meth:`InputAccount.to_json` is JSON-serialisable and :meth:`InputAccount.merge` adds up the
partial accounts of parallel workers.

Completeness of a type with no file (CRITERIA.md, "Completeness"): the export vouches for it only
when the kick-off listed it in ``_type`` (``requested_types``, from the Bulk client or from the
``request`` URL of ``manifest.json``) or the user says so (``--complete TYPE``). A kick-off without
``_type`` vouches for no type that has no file. Otherwise the type is missing data: the criteria
reading it are ``unknown`` ("not in the export"), never ``not-met``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhir_trial.record import CATEGORIES

NAMED_LIMIT = 50  # ids / places spelled out per list; the rest are counted


@dataclass
class TypeAccount:
    """One resource type: its files, resources read, lines rejected, resources without a patient."""

    files: list[str] = field(default_factory=list)
    lines: int = 0  # non-empty lines in its files
    resources: int = 0  # read and kept (or counted, for types the criteria do not read)
    rejected: int = 0
    without_patient: int = 0


@dataclass
class RejectedLine:
    """A line that could not be used: where, why, and whose it was when that can be told."""

    place: str  # "<file>:<line>"
    why: str
    resource_type: str | None = None
    patient: str | None = None  # the patient id the line names, if it can be told


@dataclass
class InputAccount:
    """Everything the export held, and what could not be used. JSON-serialisable via to_json."""

    types: dict[str, TypeAccount] = field(default_factory=dict)
    rejected: list[RejectedLine] = field(default_factory=list)  # first NAMED_LIMIT
    rejected_total: int = 0
    # type -> count of unreadable lines whose patient cannot be told (any patient's data)
    lost_unknown_patient: dict[str, int] = field(default_factory=dict)
    not_read: dict[str, int] = field(default_factory=dict)  # types the criteria do not read
    missing: dict[str, str] = field(default_factory=dict)  # needed type -> why it counts missing
    vouched: dict[str, str] = field(default_factory=dict)  # needed type without file -> who vouches
    orphans: list[str] = field(default_factory=list)  # "Type/id: why", first NAMED_LIMIT
    orphans_total: int = 0
    duplicates_same: int = 0  # identical copies of a resource (kept once)
    duplicates_different: list[str] = field(default_factory=list)  # "Type/id (place, place)"
    duplicates_different_total: int = 0
    needs_review: list[str] = field(default_factory=list)  # "Patient/x criterion: Type/id ..."
    clashing_patients: list[str] = field(default_factory=list)  # ids of different Patients
    oversized: list[str] = field(default_factory=list)  # places of refused lines
    patients: int = 0  # screened

    def type(self, name: str) -> TypeAccount:
        """The account of one type (created on first use)."""
        account = self.types.get(name)
        if account is None:
            account = self.types[name] = TypeAccount()
        return account

    def reject(self, line: RejectedLine) -> None:
        """Count one rejected line (the first NAMED_LIMIT are named)."""
        self.rejected_total += 1
        if line.resource_type:
            self.type(line.resource_type).rejected += 1
        if len(self.rejected) < NAMED_LIMIT:
            self.rejected.append(line)

    def orphan(self, resource_type: str, rid: str, why: str) -> None:
        """Count one resource that belongs to no patient of the export."""
        self.orphans_total += 1
        self.type(resource_type).without_patient += 1
        if len(self.orphans) < NAMED_LIMIT:
            self.orphans.append(f"{resource_type}/{rid or '(no id)'}: {why}")

    def duplicate(self, text: str) -> None:
        """Count one resource id present twice with different content."""
        self.duplicates_different_total += 1
        if len(self.duplicates_different) < NAMED_LIMIT:
            self.duplicates_different.append(text)

    def merge(self, other: InputAccount) -> None:
        """Add another (partial) account to this one."""
        for name, part in other.types.items():
            mine = self.type(name)
            mine.files.extend(f for f in part.files if f not in mine.files)
            mine.lines += part.lines
            mine.resources += part.resources
            mine.rejected += part.rejected
            mine.without_patient += part.without_patient
        self.rejected.extend(other.rejected[: max(0, NAMED_LIMIT - len(self.rejected))])
        self.rejected_total += other.rejected_total
        for name, count in other.lost_unknown_patient.items():
            self.lost_unknown_patient[name] = self.lost_unknown_patient.get(name, 0) + count
        for name, count in other.not_read.items():
            self.not_read[name] = self.not_read.get(name, 0) + count
        self.missing.update(other.missing)
        self.vouched.update(other.vouched)
        self.orphans.extend(other.orphans[: max(0, NAMED_LIMIT - len(self.orphans))])
        self.orphans_total += other.orphans_total
        self.duplicates_same += other.duplicates_same
        room = max(0, NAMED_LIMIT - len(self.duplicates_different))
        self.duplicates_different.extend(other.duplicates_different[:room])
        self.duplicates_different_total += other.duplicates_different_total
        self.needs_review.extend(other.needs_review[: max(0, NAMED_LIMIT - len(self.needs_review))])
        self.clashing_patients.extend(other.clashing_patients)
        self.oversized.extend(other.oversized)
        self.patients += other.patients

    def sort(self) -> None:
        """Put the named lists in a stable order (parallel workers finish in any order)."""
        self.rejected.sort(key=lambda r: _place_key(r.place))
        self.orphans.sort()
        self.duplicates_different.sort()
        self.needs_review.sort()
        self.clashing_patients.sort()
        self.types = dict(sorted(self.types.items()))
        self.not_read = dict(sorted(self.not_read.items()))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the report's "inputs" section)."""
        return asdict(self)

    def aggregates(self) -> dict[str, Any]:
        """What the shareable report shows: counts only, no ids and no places.

        One row per resource type (files, lines, resources read, rejected, without a patient, and
        whether it was read, missing, or vouched empty), then the totals of what needs attention.
        """
        out: dict[str, Any] = {}
        for name in sorted(set(self.types) | set(self.missing) | set(self.vouched)):
            part = self.types.get(name, TypeAccount())
            if name in self.missing:
                state = "missing (criteria unknown)"
            elif name in self.vouched:
                state = "no file, counted as none"
            elif name in self.not_read:
                state = "not read by the criteria"
            else:
                state = "read"
            out[name] = {
                "files": len(part.files),
                "lines": part.lines,
                "resources read": part.resources,
                "lines rejected": part.rejected,
                "without a patient": part.without_patient,
                "status": state,
            }
        out["lines rejected naming no patient"] = sum(self.lost_unknown_patient.values())
        out["lines refused as too long"] = len(self.oversized)
        out["identical duplicates (kept once)"] = self.duplicates_same
        out["ids with two different versions"] = self.duplicates_different_total
        out["criteria made needs-review by two versions"] = len(self.needs_review)
        out["ids shared by two different Patients (not screened)"] = len(self.clashing_patients)
        return out

    def summary(self) -> list[str]:
        """Readable lines for stderr and the report: counts first, then what needs attention."""
        out = []
        for name, part in sorted(self.types.items()):
            if name in self.not_read:
                continue
            bits = [f"{part.resources} read from {len(part.files)} file(s)"]
            if part.rejected:
                bits.append(f"{part.rejected} line(s) rejected")
            if part.without_patient:
                bits.append(f"{part.without_patient} without a patient")
            out.append(f"{name}: " + ", ".join(bits))
        if self.not_read:
            listed = ", ".join(f"{name} ({count})" for name, count in self.not_read.items())
            out.append(f"not read by the criteria: {listed}")
        for name, why in sorted(self.missing.items()):
            out.append(f"MISSING {name}: {why}; its criteria are unknown")
        for name, who in sorted(self.vouched.items()):
            out.append(f"{name}: no file, counted as none ({who})")
        for line in self.rejected:
            whose = f" (Patient/{line.patient})" if line.patient else ""
            out.append(f"rejected {line.place}{whose}: {line.why}")
        if self.rejected_total > len(self.rejected):
            out.append(f"... and {self.rejected_total - len(self.rejected)} more rejected lines")
        for name, count in sorted(self.lost_unknown_patient.items()):
            out.append(
                f"WARNING: {count} unreadable {name} line(s) name no patient: some patient's "
                f"{name} data is incomplete and cannot be told whose"
            )
        for place in self.oversized:
            out.append(f"refused {place}: line longer than the limit")
        if self.orphans_total:
            out.append(f"{self.orphans_total} resource(s) without a patient of the export:")
            out.extend(f"  {text}" for text in self.orphans)
        if self.duplicates_same:
            out.append(f"{self.duplicates_same} identical duplicate(s), kept once")
        if self.duplicates_different_total:
            out.append(
                f"{self.duplicates_different_total} id(s) with two different versions "
                "(both kept; a criterion they decide differently is needs-review):"
            )
            out.extend(f"  {text}" for text in self.duplicates_different)
        out.extend(f"needs-review: {text}" for text in self.needs_review)
        for pid in self.clashing_patients:
            out.append(f"Patient/{pid}: two different Patients share this id; not screened")
        return out


def _place_key(place: str) -> tuple[str, int]:
    name, _, line = place.rpartition(":")
    return (name, int(line)) if line.isdigit() else (place, 0)


def requested_types_from_manifest(directory: Path) -> set[str] | None:
    """The ``_type`` list of the kick-off, read from ``manifest.json``'s ``request`` URL.

    None when there is no readable manifest or its request has no ``_type`` (which vouches for
    nothing).
    """
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    request = manifest.get("request") if isinstance(manifest, dict) else None
    if not isinstance(request, str):
        return None
    values = parse_qs(urlsplit(request).query).get("_type")
    if not values:
        return None
    return {t.strip() for value in values for t in value.split(",") if t.strip()}


def absent_types(
    present: Iterable[str],
    requested_types: Iterable[str] | None,
    complete: Iterable[str],
) -> tuple[dict[str, str], dict[str, str]]:
    """``(missing, vouched)``: the needed types with no file, as missing data or vouched-empty.

    ``missing`` maps a type to the reason its criteria are unknown; ``vouched`` maps a type to who
    says the export holds none of it (the kick-off's ``_type``, or the user's ``--complete``).
    """
    have = set(present)
    requested = set(requested_types) if requested_types is not None else set()
    complete_set = set(complete)
    missing: dict[str, str] = {}
    vouched: dict[str, str] = {}
    for category in CATEGORIES:
        if category in have:
            continue
        if category in complete_set:
            vouched[category] = "the user says the export is complete for it (--complete)"
        elif category in requested:
            vouched[category] = "the kick-off requested it in _type"
        else:
            missing[category] = f"{category} is not in the export"
    return missing, vouched
