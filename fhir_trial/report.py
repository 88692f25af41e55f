"""EligibilityReport: the evaluator's answer, and its JSON form exactly as CRITERIA.md shows it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Status = Literal["met", "not-met", "unknown", "needs-review", "not-applicable"]
Verdict = Literal["eligible", "ineligible", "potentially-eligible"]
Kind = Literal["inclusion", "exclusion"]

STATUSES: tuple[Status, ...] = ("met", "not-met", "unknown", "needs-review", "not-applicable")

T = TypeVar("T")


def frozen_instance(cls: type[T], fields: dict[str, Any]) -> T:
    """``cls(**fields)`` for a frozen dataclass given every one of its fields, built faster.

    Why faster: a frozen dataclass's ``__init__`` stores each field through
    ``object.__setattr__`` (about 0.15 µs a field); the evaluator makes dozens of these per
    patient (a result per criterion, an exposure per medication record). Why the same: for a
    dataclass without ``__post_init__``, ``__slots__`` or init-only fields, ``__init__`` does
    nothing but store the fields in the instance's ``__dict__``, which this does at once
    (tests/test_eval_fast_paths.py compares both on every class it is used for). ``fields`` is
    taken over: the caller must not use it afterwards.
    """
    if cls in _COMPILED_CLASSES:
        return cls(**fields)
    if cls not in _INTERPRETED_CLASSES:
        # A class compiled by mypyc (see setup.py) keeps its fields in slots, not in a __dict__;
        # its own __init__ is compiled, and as fast as this.
        (_COMPILED_CLASSES if hasattr(cls, "__mypyc_attrs__") else _INTERPRETED_CLASSES).add(cls)
        return frozen_instance(cls, fields)
    instance = object.__new__(cls)
    object.__setattr__(instance, "__dict__", fields)
    return instance


def instance_fields(instance: Any) -> dict[str, Any]:
    """The fields of a dataclass instance by name (its ``__dict__`` itself when it has one, as
    ``vars()``; a class compiled by mypyc keeps them in slots: a new dict of the same values)."""
    found = getattr(instance, "__dict__", None)
    if found is not None:
        return found
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


_COMPILED_CLASSES: set[type] = set()
_INTERPRETED_CLASSES: set[type] = set()


@dataclass(frozen=True, init=False)
class Finding:
    """What one criterion function decides: status, a readable reason, evidence, what is missing."""

    status: Status
    reason: str
    evidence: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def __init__(
        self,
        status: Status,
        reason: str,
        evidence: tuple[str, ...] = (),
        missing: tuple[str, ...] = (),
    ) -> None:
        # The generated __init__ of a frozen dataclass, in one store instead of an
        # object.__setattr__ per field (see frozen_instance): dozens of Findings per patient.
        _set_attribute(
            self,
            "__dict__",
            {"status": status, "reason": reason, "evidence": evidence, "missing": missing},
        )


_set_attribute = object.__setattr__


@dataclass(frozen=True)
class CriterionResult:
    """One criterion's result in a report."""

    id: str
    kind: Kind
    ref: str
    status: Status
    reason: str
    evidence: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    part_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of CRITERIA.md's output shape."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "ref": self.ref,
            "status": self.status,
            "reason": self.reason,
            "evidence": list(self.evidence),
            "missing": list(self.missing),
        }
        if self.part_of:
            out["partOf"] = self.part_of
        return out


@dataclass(frozen=True)
class Answer:
    """A coordinator's answer to one criterion (CRITERIA.md, "Coordinator answers").

    ``author`` is who answered (a FHIR reference such as ``Practitioner/123``, from the SMART
    launch's ``fhirUser``), ``date`` when (ISO 8601). Applied by :func:`fhir_trial.answers.apply_answers`.
    """

    criterion: str
    status: Literal["met", "not-met"]
    comment: str = ""
    author: str | None = None
    date: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"criterion", "status", "comment", "author", "date"}`` (absent values left out)."""
        out: dict[str, Any] = {"criterion": self.criterion, "status": self.status}
        if self.comment:
            out["comment"] = self.comment
        if self.author:
            out["author"] = self.author
        if self.date:
            out["date"] = self.date
        return out


@dataclass(frozen=True)
class EligibilityReport:
    """The whole screening result for one patient."""

    study: str
    patient: str
    as_of: str
    verdict: Verdict
    criteria: tuple[CriterionResult, ...]
    warnings: tuple[str, ...] = field(default=())
    # The death date as recorded, or True (deceasedBoolean only): set when the patient was
    # deceased on the screening date (the verdict is then ineligible whatever the criteria say).
    deceased: str | bool | None = None
    # The top-level reason: why the verdict does not follow from the criteria alone (deceased,
    # or a vital status that cannot be read). None when the criteria decide on their own.
    reason: str | None = None
    # A coordinator's answers, already applied to ``criteria`` and ``verdict`` (fhir_trial.answers).
    answers: tuple[Answer, ...] = ()
    # Data categories (and Observation parts) that could not be obtained completely: the report is
    # incomplete (CRITERIA.md, Output shape: "complete": false with "notObtained").
    not_obtained: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every data category the criteria read was obtained."""
        return not self.not_obtained

    def criterion(self, criterion_id: str) -> CriterionResult:
        """The result of one criterion by id (KeyError if absent)."""
        for result in self.criteria:
            if result.id == criterion_id:
                return result
        raise KeyError(criterion_id)

    def statuses(self) -> dict[str, Status]:
        """``{criterion id: status}`` for every criterion."""
        return {c.id: c.status for c in self.criteria}

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled as its fields, each criterion's eight in one flat tuple (not as a dict of
        state per object): the population screening pickles every report in a worker and
        unpickles it in the caller. Rebuilt by :func:`_rebuilt_report`, equal to this one. A
        subclass is pickled the default way."""
        if type(self) is not EligibilityReport:
            return object.__reduce_ex__(self, protocol)
        flat: list[Any] = []
        for c in self.criteria:
            flat += (c.id, c.kind, c.ref, c.status, c.reason, c.evidence, c.missing, c.part_of)
        return (
            _rebuilt_report,
            (
                self.study,
                self.patient,
                self.as_of,
                self.verdict,
                tuple(flat),
                self.warnings,
                self.deceased,
                self.reason,
                self.answers,
                self.not_obtained,
                len(self.criteria),
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of CRITERIA.md: ``reason`` and ``deceased`` when set, ``complete: false``
        and ``notObtained`` when a category failed to load, ``warnings`` if any."""
        out: dict[str, Any] = {
            "study": self.study,
            "patient": self.patient,
            "asOf": self.as_of,
            "verdict": self.verdict,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.deceased is not None:
            out["deceased"] = self.deceased
        if self.not_obtained:
            out["complete"] = False
            out["notObtained"] = list(self.not_obtained)
        out["criteria"] = [c.to_json() for c in self.criteria]
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.answers:
            out["answers"] = [a.to_json() for a in self.answers]
        return out


def _rebuilt_report(
    study: str,
    patient: str,
    as_of: str,
    verdict: Verdict,
    flat: tuple[Any, ...],
    warnings: tuple[str, ...],
    deceased: str | bool | None,
    reason: str | None,
    answers: tuple[Answer, ...],
    not_obtained: tuple[str, ...],
    count: int,
) -> EligibilityReport:
    """The report :meth:`EligibilityReport.__reduce_ex__` took apart (each object built by
    :func:`frozen_instance`: its fields in field order, stored at once)."""
    if type(flat) is not tuple or len(flat) != 8 * count:
        raise ValueError("a pickled EligibilityReport does not hold eight fields per criterion")
    criteria = []
    items = iter(flat)
    for id_, kind, ref, status, why, evidence, missing, part_of in zip(
        items, items, items, items, items, items, items, items, strict=True
    ):
        fields = {
            "id": id_,
            "kind": kind,
            "ref": ref,
            "status": status,
            "reason": why,
            "evidence": evidence,
            "missing": missing,
            "part_of": part_of,
        }
        criteria.append(frozen_instance(CriterionResult, fields))
    report = frozen_instance(
        EligibilityReport,
        {
            "study": study,
            "patient": patient,
            "as_of": as_of,
            "verdict": verdict,
            "criteria": tuple(criteria),
            "warnings": warnings,
            "deceased": deceased,
            "reason": reason,
            "answers": answers,
            "not_obtained": not_obtained,
        },
    )
    return report
