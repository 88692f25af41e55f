"""One patient of an export screened when a resource id comes twice with different content.

A Bulk export can hold two versions of the same resource (a re-sent file, a server that wrote a
resource twice while it changed). Keeping the first and ignoring the second hides a fact (the
second Condition may be an active malignancy). The rule (README, "Decisions"): identical copies
are kept once; for each different version, the patient is evaluated again with that version in
place of the first; a criterion whose status changes becomes ``needs-review``, naming both
versions and what each decides. Patients without such duplicates are evaluated once, as before.
Both readers (local and Spark) call :func:`screen_patient`, so they agree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, overload

from fhir_trial.config import Settings
from fhir_trial.deceased import vital_status
from fhir_trial.evaluate import evaluate, final_verdict, verdict_of
from fhir_trial.record import PatientRecord, Resource
from fhir_trial.report import CriterionResult, EligibilityReport
from fhir_trial.terminology import Terminology

Placed = tuple[Any, Resource]  # (where it is, resource): ``where`` makes it "<file>:<line>"


class PlacedResources(Sequence[Placed]):
    """A patient's resources with their places, as the NDJSON worker gathers them: the resources
    in one list (what the record is built from), the places kept per run of lines and made into
    ``(place, resource)`` pairs only when asked (the rare patient with an id twice).

    A place is ``(file index, range index, line number)`` (see ``BucketJob.where``).
    """

    __slots__ = ("_places", "resources")

    def __init__(self) -> None:
        self.resources: list[Resource] = []
        # (file index, range index, line numbers) of a run taken whole, or (place,) of one line
        self._places: list[tuple[Any, ...]] = []

    def add_run(
        self, file_index: int, range_index: int, numbers: Any, parsed: list[Resource]
    ) -> None:
        """A run's resources, one per line number (``numbers`` is kept, not copied)."""
        self.resources.extend(parsed)
        self._places.append((file_index, range_index, numbers))

    def append(self, placed: Placed) -> None:
        """One resource at its place."""
        self._places.append((placed[0],))
        self.resources.append(placed[1])

    def places(self) -> list[Any]:
        """The place of each resource, in order."""
        return list(
            chain.from_iterable(
                part if len(part) == 1 else zip(repeat(part[0]), repeat(part[1]), part[2])
                for part in self._places
            )
        )

    def __iter__(self) -> Iterator[Placed]:
        return zip(self.places(), self.resources, strict=True)

    def __len__(self) -> int:
        return len(self.resources)

    @overload
    def __getitem__(self, index: int) -> Placed: ...

    @overload
    def __getitem__(self, index: slice) -> list[Placed]: ...

    def __getitem__(self, index: int | slice) -> Placed | list[Placed]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PlacedResources, list)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PlacedResources({list(self)!r})"


def resources_of(placed: Sequence[Placed]) -> list[Resource]:
    """The resources of ``(place, resource)`` pairs, in order (not to be changed: it may be the
    list a :class:`PlacedResources` holds)."""
    if type(placed) is PlacedResources:
        return placed.resources
    return [resource for _, resource in placed]


@dataclass
class PatientNotes:
    """What screening one patient found about its inputs (added to the InputAccount)."""

    duplicates_same: int = 0
    duplicates_different: list[str] = field(default_factory=list)
    needs_review: list[str] = field(default_factory=list)


def split_versions(
    resources: Iterable[Placed],
) -> tuple[list[Placed], dict[str, list[Placed]], int]:
    """``(first versions in order, {Type/id: [every version]} for differing ids, identical copies)``."""
    first: dict[str, Placed] = {}
    kept: list[Placed] = []
    versions: dict[str, list[Placed]] = {}
    same = 0
    for place, resource in resources:
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            kept.append((place, resource))
            continue
        key = f"{resource.get('resourceType')}/{rid}"
        seen = first.get(key)
        if seen is None:
            first[key] = (place, resource)
            kept.append((place, resource))
        elif seen[1] == resource or any(v[1] == resource for v in versions.get(key, ())):
            same += 1
        else:
            versions.setdefault(key, [seen]).append((place, resource))
    return kept, versions, same


def screen_patient(
    build: Callable[[list[Resource]], PatientRecord],
    resources: Sequence[Placed],
    settings: Settings,
    terminology: Terminology | None = None,
    where: Callable[[Any], str] = str,
) -> tuple[EligibilityReport, PatientNotes, PatientRecord]:
    """Evaluate one patient; differing versions of a resource make the criteria they split
    ``needs-review``. ``build`` turns the patient's resources (in order) into its record;
    ``where`` names a resource's place (``<file>:<line>``) from the first item of its pair.
    """
    record = build(resources_of(resources))
    if record.left_out == 0:
        # Every resource was taken, each once: no id comes twice, so there is nothing to split
        # (what split_versions would find; the common case costs one build and no extra pass).
        return evaluate(record, settings, terminology), PatientNotes(), record
    kept, versions, same = split_versions(resources)
    notes = PatientNotes(duplicates_same=same)
    record = build([r for _, r in kept])
    report = evaluate(record, settings, terminology)
    if not versions:
        return report, notes, record
    base = report.statuses()
    disputes: dict[str, list[str]] = {}
    for key, placed in versions.items():
        places = ", ".join(where(p) for p, _ in placed)
        notes.duplicates_different.append(f"{key} in {record.patient_reference} ({places})")
        first_place, first_resource = placed[0]
        for place, version in placed[1:]:
            swapped = [version if r is first_resource else r for _, r in kept]
            other = evaluate(build(swapped), settings, terminology).statuses()
            for criterion, status in other.items():
                if status != base[criterion]:
                    disputes.setdefault(criterion, []).append(
                        f"{key} at {where(first_place)} gives {base[criterion]}, "
                        f"its other version at {where(place)} gives {status}"
                    )
    if not disputes:
        return report, notes, record
    for criterion, why in disputes.items():
        notes.needs_review.append(f"{record.patient_reference} {criterion}: {'; '.join(why)}")
    return _with_reviews(report, record.patient, disputes), notes, record


def screen_with_what_if(
    build: Callable[[list[Resource]], PatientRecord],
    resources: Sequence[Placed],
    settings: Settings,
    what_if: Sequence[Settings],
    terminology: Terminology | None = None,
    where: Callable[[Any], str] = str,
) -> tuple[EligibilityReport, tuple[EligibilityReport, ...], PatientNotes]:
    """:func:`screen_patient` under ``settings``, then under each what-if Settings.

    A patient whose resources were all taken, each once, is evaluated again on the same record
    (evaluation reads a record and never changes it): what building it again would give, without
    the cost of building it per what-if run. Any other patient goes through screen_patient again.
    """
    report, notes, record = screen_patient(build, resources, settings, terminology, where)
    if record.left_out == 0 and notes == PatientNotes():
        variants = tuple(evaluate(record, variant, terminology) for variant in what_if)
    else:
        variants = tuple(
            screen_patient(build, resources, variant, terminology, where)[0] for variant in what_if
        )
    return report, variants, notes


def _with_reviews(
    report: EligibilityReport, patient: Mapping[str, object] | None, disputes: dict[str, list[str]]
) -> EligibilityReport:
    criteria: list[CriterionResult] = []
    for result in report.criteria:
        why = disputes.get(result.id)
        if why:
            result = dataclasses.replace(
                result,
                status="needs-review",
                reason="two versions of the same resource in the export decide this differently: "
                + "; ".join(why),
            )
        criteria.append(result)
    results = tuple(criteria)
    vital = vital_status(patient, dt.date.fromisoformat(report.as_of))
    return dataclasses.replace(
        report, criteria=results, verdict=final_verdict(verdict_of(results), vital)
    )
