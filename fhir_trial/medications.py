"""Medication exposure periods, built from the four medication resource types (CRITERIA.md).

Each usable MedicationStatement, MedicationRequest, MedicationAdministration and MedicationDispense
becomes one :class:`Exposure`: the drug (its codings, including the ingredients of a referenced or
contained Medication), the route(s) stated in its dosage, and the days it covers. Days of supply are
inclusive: a 30-day supply handed over on 1 March covers 1 to 30 March.

How the days are found (CRITERIA.md, "Medication exposure periods"):

- MedicationStatement: ``effectiveDateTime`` is that day; ``effectivePeriod`` start to end; a period
  with no end runs to ``as_of`` when the status is ``active``; otherwise (completed, stopped, ...)
  its start day is certain and it may have lasted until ``dateAsserted`` (when earlier than
  ``as_of``) or ``as_of``: criteria decide on the start day and review what the rest could change.
- MedicationAdministration: ``effectiveDateTime`` is that day; ``effectivePeriod`` start to end (no
  end: ``as_of`` when ``in-progress``, else the start day).
- MedicationDispense: ``whenHandedOver`` (else ``whenPrepared``) plus ``daysSupply`` (d, wk, mo);
  no usable ``daysSupply``: the default supply (``Settings.default_supply_days``).
- MedicationRequest: the ``dosageInstruction`` timing ``boundsPeriod`` (earliest start to latest
  end), else ``dispenseRequest.validityPeriod``, else ``authoredOn`` plus ``expectedSupplyDuration``
  x (1 + ``numberOfRepeatsAllowed``), else ``authoredOn`` to ``as_of`` when ``active``, else
  ``authoredOn`` plus the timing ``boundsDuration`` (the course's stated length), else
  ``authoredOn`` plus the default supply. A bounds/validity period without an end runs to ``as_of``
  when ``active``, else covers the default supply from its start.

Records whose status says the drug was not (or not yet) given are ignored: entered-in-error,
not-taken and intended (Statement: a plan to take it in the future), cancelled and draft
(Request), not-done (Administration), declined, preparation and in-progress (Dispense: not handed
over yet; an Administration in-progress is an infusion running now and counts); so are
MedicationRequests whose intent is proposal or option (no order was given). A
record whose dates cannot be read is kept as :class:`Undated` so a criterion can say so rather
than drop it.

Partial dates (``"2025-03"``) are kept as spans: an exposure then has a *certain* period (days it
covers whichever day is meant) and a *possible* period (days it may cover). Criteria decide on the
certain period, rule out on the possible one, and ask for review in between.

Interval helpers: :func:`merge` bridges gaps of at most ``max_gap`` uncovered days between periods;
:func:`intersect` gives the days two sets of periods share.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from fhir_trial.elements import child, objects
from fhir_trial.fhirdates import DateSpan, parse_span
from fhir_trial.record import MEDICATION_TYPES, PatientRecord, Resource
from fhir_trial.report import frozen_instance, instance_fields
from fhir_trial.terminology import (
    Code,
    ValueSet,
    code_text,
    codings,
    has_letter,
    normalise_system,
    record_code_keys,
)

# The ValueSets the medication criteria read drugs against, and (with the trial medications of
# exc-drug-allergy) the drugs the screening knows by code: a record coded with one of these is
# identified even without a name (DrugRecord.identified). The CQL library's "Known Drug" lists
# the same ValueSets, and fhir_trial.cql.engine sends name matches for the first group.
DRUG_VALUESETS = (
    "oral-corticosteroids",
    "immunosuppressants",
    "sle-biologics",
    "hydroxychloroquine",
    "b-cell-therapies",
    "systemic-antibacterials",
    "antivirals-herpes",
)
KNOWN_DRUG_VALUESETS = (*DRUG_VALUESETS, "trial-medication-allergens")

# Statuses that mean the record is void or the drug was not given (CRITERIA.md, "Medication
# exposure periods"). FHIR R4 names them per resource type: every type has entered-in-error;
# MedicationStatement not-taken, and intended ("may be taken in the future": a plan, which would
# otherwise read as exposure on its effective dates); MedicationRequest cancelled, draft;
# MedicationAdministration not-done; MedicationDispense cancelled, declined, and preparation (not
# handed over yet). No value means exposure in another type, so one set serves all four (and a
# value misused on another type is still read as "not given"); in-progress is the exception
# (IGNORED_STATUSES_BY_TYPE below).
# MedicationRequest intents that are no order: a proposal (a suggestion, e.g. from decision
# support, by someone who may not prescribe) and an option (one choice in a protocol). "plan" still
# counts: EHRs record medications a patient takes under it.
NOT_ORDERED_INTENTS = frozenset({"proposal", "option"})
IGNORED_MEDICATION_STATUSES = frozenset(
    {
        "entered-in-error",
        "not-taken",
        "intended",
        "cancelled",
        "draft",
        "not-done",
        "declined",
        "preparation",
    }
)
# The ignored statuses per resource type: the shared set, and for MedicationDispense in-progress
# too (being prepared or waiting for pickup: not handed over, like preparation). The same code on a
# MedicationAdministration means the drug is being given now (a running infusion), which is
# exposure, so it cannot join the shared set above.
IGNORED_STATUSES_BY_TYPE: Mapping[str, frozenset[str]] = {
    rtype: IGNORED_MEDICATION_STATUSES
    | (frozenset({"in-progress"}) if rtype == "MedicationDispense" else frozenset())
    for rtype in MEDICATION_TYPES
}

Period = tuple[dt.date, dt.date]  # inclusive first and last day

_DAY = dt.timedelta(days=1)
# UCUM codes and common unit spellings of a duration, in days.
_DAYS_PER_UNIT: Mapping[str, int] = {
    "d": 1,
    "day": 1,
    "days": 1,
    "wk": 7,
    "week": 7,
    "weeks": 7,
    "mo": 30,
    "month": 30,
    "months": 30,
}


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DrugRecord:
    """What every medication record says about the drug, whatever its dates."""

    reference: str
    resource_type: str
    drug: str
    codings: tuple[Mapping[str, Any], ...]
    routes: tuple[Mapping[str, Any], ...]
    # Every ValueSet lookup key of the codings (lookup_keys), so that matches() is one set test:
    # criteria ask each record about several ValueSets.
    keys: frozenset[Code]
    # What the record calls its drug: the displays of its codings and the text of its concepts
    # (inline, the Medication's code, its ingredients), each once, for the names safety net.
    names: tuple[str, ...]
    # Whether the record itself names its drug (a display or text with a letter in it); names
    # taken from other records sharing its code (drug_records) do not count for this.
    has_name: bool
    # named_as per ValueSet id, filled on first use (ValueSet ids are unique in a screening).
    _named: dict[str, tuple[str, str] | None] = field(
        default_factory=dict, repr=False, compare=False, kw_only=True
    )
    # Answers of matches, route_in and local_use_in, filled on first use: an inc-prior-therapy
    # decision asks each record about the same few ValueSets a hundred times. They depend on the
    # keys, names and routes only, so records that write the same drug the same way share them,
    # within a patient and across patients (_group_of_key). Keyed by the question and the
    # ValueSet's identity (two ValueSets may share an id), whose ValueSet is kept with the
    # answer so that the identity stays its own; matches, asked most, by the identity alone
    # (an int: no key tuple to build per question). Criteria may keep answers of their own
    # here, under a key naming the question, with what keeps their key's identity (see
    # fhir_trial.criteria.therapy.roles_of).
    _answers: dict[int | tuple[str, int], tuple[object, Any]] = field(
        default_factory=dict, repr=False, compare=False, kw_only=True
    )
    # The words of the drug's names or stated route that say it is for local use ("Topical",
    # "Ophthalmic", ...; :func:`local_use_word`), or "" when none does.
    local_use: str

    def matching_coding(self, valueset: ValueSet) -> Mapping[str, Any] | None:
        """The first coding (product or ingredient) whose code is in the ValueSet, else None."""
        if valueset.contains_any(self.keys):
            for coding in self.codings:
                if valueset.contains(coding.get("system"), coding.get("code")):
                    return coding
        return None

    def named_as(self, valueset: ValueSet) -> tuple[str, str] | None:
        """(name, listed ingredient) when the drug is read by name (CRITERIA.md, "Names as a
        safety net"): none of its codes is in the ValueSet, it has a code (of any system: the
        CQL side can only add codes to an expansion), and one of its names names a listed
        ingredient or brand. Else None."""
        if not self.keys or not self.names:
            return None
        cache = self._named
        if valueset.id in cache:  # criteria ask each record about several ValueSets, often twice
            return cache[valueset.id]
        found = None if valueset.contains_any(self.keys) else valueset.named_by(self.names)
        cache[valueset.id] = found
        return found

    def matches(self, valueset: ValueSet) -> bool:
        """Whether the drug, or one of its ingredients, is in the ValueSet (by code or by name)."""
        key = id(valueset)
        known = self._answers.get(key)
        if known is not None:
            return known[1] is True
        found = valueset.contains_any(self.keys) or self.named_as(valueset) is not None
        self._answers[key] = (valueset, found)
        return found

    def label(self, valueset: ValueSet | None = None) -> str:
        """A readable drug name: the matching coding's display when there is one.

        A drug read by name says so, for a person to check: "泼尼松片 (identified by name:
        prednisone)".
        """
        if valueset is not None:
            coding = self.matching_coding(valueset)
            if coding is not None:
                key = (normalise_system(coding.get("system")), code_text(coding.get("code")) or "")
                shown = coding.get("display") or valueset.displays.get(key)
                if shown:
                    return str(shown)
            elif (named := self.named_as(valueset)) is not None:
                return f"{named[0]} (identified by name: {named[1]})"
        return self.drug

    def local_use_in(self, local_routes: ValueSet) -> str:
        """What says the drug is for local use, or "" when nothing does: the word of its names or
        stated route (:attr:`local_use`), else the label of a stated route coded in
        ``local_routes`` (its display, the ValueSet's display, or the bare code). A route sent
        only as a code has no word to find, so the code must decide.
        """
        if self.local_use:
            return self.local_use
        key = ("local_use_in", id(local_routes))
        known = self._answers.get(key)
        if known is not None:
            return str(known[1])
        found = self._local_route_label(local_routes)
        self._answers[key] = (local_routes, found)
        return found

    def _local_route_label(self, local_routes: ValueSet) -> str:
        """The label of the first stated route coded in ``local_routes``, else ""."""
        for route in self.routes:
            coding = local_routes.matching_coding(route)
            if coding is not None:
                code = code_text(coding.get("code")) or ""
                shown = coding.get("display") or local_routes.displays.get(
                    (normalise_system(coding.get("system")), code)
                )
                return str(shown or code)
        return ""

    def identified(self, known: Sequence[ValueSet]) -> bool:
        """Whether the record says which drug it is (CRITERIA.md, "Unidentified drugs").

        It needs a code (inline, or through a Medication the record holds: its code or an
        ingredient's), and either a code the screening knows (in one of ``known``, the drug
        ValueSets) or a name: a display or text with a letter in it. A name that names no listed
        drug ("metformin 500 MG Oral Tablet") still says what the drug is: another drug. Not
        identified: a drug given only in words (the CQL side can only match codes), a reference
        to a Medication the record does not hold, or codes in no list with no name at all (an
        NDC, an unlisted RxNorm code, a local code, sent bare). Criteria must not read those as
        "not that drug" (:func:`unidentified_text`)."""
        if not self.keys:
            return False
        if self.has_name:
            return True
        return any(
            vs.contains_any(self.keys) or (vs.id in DRUG_VALUESETS and self.named_as(vs))
            for vs in known
        )

    def route_stated(self) -> bool:
        """Whether the record says by which route the drug is given."""
        return bool(self.routes)

    def route_in(self, valueset: ValueSet) -> bool:
        """Whether a stated route is in the ValueSet (False when no route is stated)."""
        key = ("route_in", id(valueset))
        known = self._answers.get(key)
        if known is not None:
            return bool(known[1])
        found = any(valueset.matches(route) for route in self.routes)
        self._answers[key] = (valueset, found)
        return found

    def route_unreadable(self, known: Sequence[ValueSet]) -> bool:
        """Whether a route is stated but the screening cannot place it: no stated route is in any
        of the ``known`` route ValueSets (text only, or a code none of them lists). Such a route
        is not evidence of "another route"; criteria treat it as unknown, never as non-oral/non-IV.
        """
        return self.route_stated() and not any(map(self.route_in, known))

    def route_unreadable_text(self) -> str:
        """Why the stated route cannot be placed, for reasons: "route 'IV' (text only)" or
        "route 'X' (code S|C, in no route ValueSet of this screening)"."""
        coded = [
            c for route in self.routes for c in codings(route) if c.get("system") or c.get("code")
        ]
        label = self.route_label() or "?"
        if not coded:
            return f"route '{label}' (text only, no code)"
        shown = ", ".join(f"{c.get('system') or '?'}|{c.get('code') or '?'}" for c in coded)
        return f"route '{label}' (code {shown}, in no route ValueSet of this screening)"

    def route_label(self) -> str:
        """The stated route, readable ('' when none is stated)."""
        for route in self.routes:
            for coding in codings(route):
                label = coding.get("display") or coding.get("code")
                if label:
                    return str(label)
            if route.get("text"):
                return str(route["text"])
        return ""


@dataclass(frozen=True)
class Exposure(DrugRecord):
    """A drug record placed in time: first and last day of exposure, each possibly partial."""

    start: DateSpan
    end: DateSpan
    basis: str
    # Still running at as_of with no end (an active order, an in-progress infusion): the period
    # stops at as_of only because nothing later is known.
    open_ended: bool = False

    @property
    def partial(self) -> bool:
        """Whether a partial date makes the period uncertain."""
        return not (self.start.exact and self.end.exact)

    def certain(self) -> Period | None:
        """The days covered whichever day a partial date means (None if no day is certain)."""
        if self.start.end > self.end.start:
            return None
        return (self.start.end, self.end.start)

    def possible(self) -> Period:
        """Every day the record may cover."""
        return (self.start.start, self.end.end)

    def period(self, certain: bool) -> Period | None:
        """:meth:`certain` or :meth:`possible`."""
        return self.certain() if certain else self.possible()

    def describe(self) -> str:
        """'2025-01-01 to 2025-06-30', or one day, with partial dates written as ranges."""
        first = _span_text(self.start)
        last = _span_text(self.end)
        return first if first == last else f"{first} to {last}"


@dataclass(frozen=True)
class Undated(DrugRecord):
    """A drug record whose dates could not be read."""

    why: str


@dataclass(frozen=True)
class MedicationHistory:
    """All usable medication records of a patient, as exposures, for one screening date."""

    exposures: tuple[Exposure, ...]
    undated: tuple[Undated, ...]
    ignored: int  # records skipped for their status (entered-in-error, ...) or intent (proposal)
    retrieved: int  # all medication records of the four types, ignored ones included

    @property
    def usable(self) -> int:
        """How many records count (placed in time or not)."""
        return len(self.exposures) + len(self.undated)

    def with_drug(self, valueset: ValueSet) -> list[Exposure]:
        """Exposures whose drug, or one of its ingredients, is in the ValueSet."""
        return [e for e in self.exposures if e.matches(valueset)]

    def undated_with_drug(self, valueset: ValueSet) -> list[Undated]:
        """Undated records whose drug is in the ValueSet."""
        return [u for u in self.undated if u.matches(valueset)]

    def unidentified(self, known: Sequence[ValueSet]) -> list[Exposure]:
        """Dated records whose drug cannot be identified (:meth:`DrugRecord.identified`)."""
        return [e for e in self.exposures if not e.identified(known)]

    def undated_unidentified(self, known: Sequence[ValueSet]) -> list[Undated]:
        """Undated records whose drug cannot be identified."""
        return [u for u in self.undated if not u.identified(known)]


def unidentified_text(records: Sequence[DrugRecord]) -> str:
    """What each record says of a drug it does not identify, for reasons:
    "MedicationAdministration/a ('rituximab 100 mg', 2026-11-16)"; a bare code is shown with its
    system: "MedicationAdministration/b (http://hl7.org/fhir/sid/ndc|50242-051-21: a code in no
    list, without a name, 2026-11-16)"."""
    parts = []
    for record in records:
        when = record.describe() if isinstance(record, Exposure) else "undated"
        bare = _bare_code_note(record)
        parts.append(f"{record.reference} ({bare or repr_drug(record.drug)}, {when})")
    return "; ".join(parts)


def repr_drug(drug: str) -> str:
    """A drug's words quoted for a reason: 'rituximab 100 mg'."""
    return f"'{drug}'"


def _bare_code_note(record: DrugRecord) -> str:
    """For a record whose codes carry no name: its first code with its system, said so."""
    if not record.keys or record.has_name:
        return ""
    coding = next((c for c in record.codings if code_text(c.get("code"))), None)
    if coding is None:
        return ""
    system = coding.get("system") if isinstance(coding.get("system"), str) else "no system"
    return f"{system}|{code_text(coding.get('code'))}: a code in no list, without a name"


def _span_text(span: DateSpan) -> str:
    start, end = span.start, span.end
    if start == end:  # span.exact, without the property's call
        return start.isoformat()
    return f"{start.isoformat()}..{end.isoformat()}"


# ----------------------------------------------------------------------------- building
# A record's histories live in its ``derived`` dict, under this key (they go with the record).
_HISTORIES = "medication-history"


def medication_history(
    record: PatientRecord, as_of: dt.date, default_supply_days: int
) -> MedicationHistory:
    """The patient's medication exposures (built once per record, screening date and supply)."""
    key = (as_of, default_supply_days, *(record.count(t) for t in MEDICATION_TYPES))
    per_record = record.derived.setdefault(_HISTORIES, {})
    found = per_record.get(key)
    if found is None:
        found = build_history(record, as_of, default_supply_days)
        per_record[key] = found
    return found


def build_history(
    record: PatientRecord, as_of: dt.date, default_supply_days: int
) -> MedicationHistory:
    """Build :class:`MedicationHistory` (uncached; see :func:`medication_history`)."""
    exposures: list[Exposure] = []
    undated: list[Undated] = []
    ignored = 0
    found = _drug_fields(record)
    ignored_by_type = IGNORED_STATUSES_BY_TYPE
    for rtype, resource, drug in found:
        status, intent = resource.get("status"), resource.get("intent")
        if (isinstance(status, str) and status in ignored_by_type[rtype]) or (
            rtype == "MedicationRequest"
            and isinstance(intent, str)
            and intent in NOT_ORDERED_INTENTS
        ):
            ignored += 1
            continue
        # The usual order is read flat (_one_closed_bounds); any other record by _place.
        placed = (_one_closed_bounds(resource) if rtype == "MedicationRequest" else None) or _place(
            resource, as_of, default_supply_days
        )
        # The drug's fields as drug_records gives them to this record, in one new dict (the dict
        # of a group of records writing the same drug the same way is shared, never changed).
        # ``rtype`` is the record's resourceType: record.resources(rtype) lists only those.
        # frozen_instance is Undated(**fields) / Exposure(**fields) without the per-field
        # object.__setattr__ of a frozen dataclass's __init__ (one per medication record).
        if isinstance(placed, str):
            undated.append(
                frozen_instance(
                    Undated,
                    {
                        **drug,
                        "reference": record.reference_to(resource),
                        "resource_type": rtype,
                        "why": placed,
                    },
                )
            )
        else:
            exposures.append(
                frozen_instance(
                    Exposure,
                    {
                        **drug,
                        "reference": record.reference_to(resource),
                        "resource_type": rtype,
                        "start": placed.start,
                        "end": placed.end,
                        "basis": placed.basis,
                        "open_ended": placed.open_ended,
                    },
                )
            )
    return MedicationHistory(tuple(exposures), tuple(undated), ignored, len(found))


def drug_records(record: PatientRecord) -> dict[int, DrugRecord]:
    """What every medication record of the patient says about its drug, by ``id(resource)``
    (whatever its status and dates; also used by fhir_trial.cql.engine for the CQL side's name
    matches).

    A code means the same drug throughout one patient's record: a hospital code named "泼尼松片"
    on the order and sent bare on the administrations names them all. So each record's names
    are its own followed by those of every other record sharing one of its codes (the CQL side
    adds a name-matched code to the ValueSet for the whole patient, which reads the same).
    """
    drugs: dict[int, DrugRecord] = {}
    for _, resource, drug in _drug_fields(record):
        fields = dict(drug)
        fields["reference"] = record.reference_to(resource)
        fields["resource_type"] = str(resource.get("resourceType"))
        drugs[id(resource)] = frozen_instance(DrugRecord, fields)
    return drugs


def _drug_fields(record: PatientRecord) -> list[tuple[str, Resource, dict[str, Any]]]:
    """(type, resource, the fields of its :class:`DrugRecord`) for every medication record, in
    record order (by type): what :func:`drug_records` and :func:`build_history` build on.

    The fields are those of the record's DrugRecord but for ``reference`` and
    ``resource_type``, which are those of the record the drug was first read from: records
    that write the same drug the same way (see _same_drug_key) share one dict, which callers
    copy before setting their own. Why a dict and not a DrugRecord per record: build_history
    makes an Exposure of each, and a DrugRecord in between cost an object and a copy per record.
    """
    # A patient's hundreds of orders name a few dozen drugs: records that write the same drug
    # the same way (see _same_drug_key) form one group, [fields, exact code keys], and share
    # what is read from it. Groups are listed in the order of their first record.
    rows: list[tuple[str, Resource, list[Any]]] = []
    groups: list[list[Any]] = []
    same: dict[bytes, list[Any]] = {}
    for rtype in MEDICATION_TYPES:
        for resource in record.resources(rtype):
            routes = _routes_of(resource)
            same_key = _same_drug_key(resource, routes)
            group = same.get(same_key) if same_key is not None else None
            if group is None:
                group = list(_group_of_key(same_key, record, resource, routes))
                groups.append(group)
                if same_key is not None:
                    same[same_key] = group
            rows.append((rtype, resource, group))
    # How many groups use each code, and their names, code by code. Per group, not per record:
    # the records of a group have the same codes and names, so each code's names list the same
    # names in the same order of first appearance (the group of the first record naming a name
    # is the first group naming it), which is all _names_with_shared reads of them (it keeps
    # each name once); and a code used by one group only brings that group's own names.
    named: dict[Code, list[str]] = {}
    uses: dict[Code, int] = {}
    for fields, keys in groups:
        names = fields["names"]
        for key in keys:
            uses[key] = uses.get(key, 0) + 1
            if names:
                named.setdefault(key, []).extend(names)
    # Each group's names gain those of the other records sharing one of its codes.
    for group in groups:
        fields = group[0]
        names_ = _names_with_shared(fields["names"], group[1], uses, named)
        if names_ is not None:
            # Other names, so the answers remembered for the old ones do not hold: fresh dicts.
            group[0] = {**fields, "names": names_, "_named": {}, "_answers": {}}
    return [(rtype, resource, group[0]) for rtype, resource, group in rows]


def _names_with_shared(
    names: tuple[str, ...],
    keys: list[Code],
    uses: Mapping[Code, int],
    named: Mapping[Code, list[str]],
) -> tuple[str, ...] | None:
    """A record's names followed by those of the other records sharing one of its codes, or None
    when that adds nothing."""
    # Only a code that other groups use too can bring names (most codes are used by one group).
    shared = [n for k in keys if uses[k] > 1 for n in named.get(k, ())]
    if shared:
        merged = tuple(dict.fromkeys((*names, *shared)))
        if merged != names:
            return merged
    return None


# What each drug written the same way says (_same_drug_key -> its DrugRecord and exact code
# keys), for every patient of a screening: the same few hundred drug concepts recur across a
# population. Bounded: emptied when full (a long-running service meets an open-ended set of
# local drug codes).
_DRUG_OF_KEY: dict[bytes, tuple[DrugRecord, list[Code]]] = {}
_MAX_CACHED_DRUGS = 4096


def _group_of_key(
    same_key: bytes | None,
    record: PatientRecord,
    resource: Resource,
    routes: tuple[Mapping[str, Any], ...],
) -> tuple[dict[str, Any], list[Code]]:
    """The fields of :func:`_drug_record` for a record that starts a group in _drug_fields, and
    its exact code keys; remembered across patients by :func:`_same_drug_key`.

    Why the same: a record with a key holds its drug inline (no ``medicationReference``, nothing
    resolved through the record), so its DrugRecord depends on the key's content alone but for
    its own reference and type, which every caller of _drug_fields sets per record. The answers
    of matches, route_in and local_use_in (keyed by ValueSet identity) go with it to every
    patient; those of :meth:`DrugRecord.named_as` never do (a fresh dict each time): they are
    keyed by ValueSet id, which is unique only within one screening. The keys list is the
    group's identity within a patient: never changed once made.
    """
    if same_key is None:
        drug = _drug_record(record, resource, routes)
        return instance_fields(drug), _exact_keys(drug)
    known = _DRUG_OF_KEY.get(same_key)
    if known is None:
        template = _drug_record(record, resource, routes)
        known = (template, _exact_keys(template))
        if len(_DRUG_OF_KEY) >= _MAX_CACHED_DRUGS:
            _DRUG_OF_KEY.clear()
        _DRUG_OF_KEY[same_key] = known
    template, keys = known
    return {**instance_fields(template), "_named": {}}, keys


def _exact_keys(drug: DrugRecord) -> list[Code]:
    return [
        (normalise_system(c.get("system")), text)
        for c in drug.codings
        if (text := code_text(c.get("code"))) is not None
    ]


# orjson options that make it refuse anything but plain JSON values (dates, subclasses,
# dataclasses raise), so that equal bytes mean equal content.
_PLAIN_JSON = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _same_drug_key(resource: Resource, routes: tuple[Mapping[str, Any], ...]) -> bytes | None:
    """What a record's drug is read from, as bytes, when nothing else is read: its inline
    concept and its routes (no ``medicationReference``, which resolves through the record).
    Two records with the same key give the same :class:`DrugRecord` but for their own
    reference and type. None when the general rule must run (a reference, or values that are
    not plain JSON).
    """
    if resource.get("medicationReference") is not None:
        return None
    try:
        key = orjson.dumps((resource.get("medicationCodeableConcept"), routes), option=_PLAIN_JSON)
    except TypeError:  # orjson.JSONEncodeError: not plain JSON
        return None
    # orjson writes NaN and infinities as null: FHIR JSON has no null, so any is left to the rule.
    return None if b"null" in key else key


def _drug_record(
    record: PatientRecord, resource: Resource, routes: tuple[Mapping[str, Any], ...]
) -> DrugRecord:
    concept = record.medication_concept(resource)
    # The drug's concept, then its ingredients' (inline, or a referenced Medication's code).
    concepts: list[object] = [concept]
    reference = child(resource.get("medicationReference"), "reference")
    medication = record.resolve(reference, resource)
    if medication is not None:
        for ingredient in _ingredients(medication):
            concepts.append(ingredient.get("itemCodeableConcept"))
            item_ref = child(ingredient.get("itemReference"), "reference")
            # A contained ingredient Medication lives in the parent's contained list.
            item = record.resolve(item_ref, medication) or record.resolve(item_ref, resource)
            if item is not None and item.get("resourceType") == "Medication":
                concepts.append(item.get("code"))
    drug = _concept_label(concept) or (
        str(child(resource.get("medicationReference"), "display") or "") or "unnamed drug"
    )
    if reference and medication is None:
        # Said in the name, so every reason naming the drug shows why it could not be identified.
        drug = f"{drug} ({reference}: not in the record)"
    drug_codings = tuple(c for found in concepts for c in codings(found) if isinstance(c, dict))
    drug_names = [c.get("display") for c in drug_codings] + [child(c, "text") for c in concepts]
    names = [*drug_names, *(c.get("display") for r in routes for c in codings(r))]
    names += [r.get("text") for r in routes]
    return DrugRecord(
        reference=record.reference_to(resource),
        resource_type=str(resource.get("resourceType")),
        drug=drug,
        codings=drug_codings,
        routes=routes,
        keys=frozenset(
            key
            for coding in drug_codings
            for key in record_code_keys(coding.get("system"), coding.get("code"))
        ),
        names=(
            names_ := tuple(dict.fromkeys(n for n in drug_names if type(n) is str and n.strip()))
        ),
        has_name=any(has_letter(n) for n in names_),
        local_use=local_use_word(names),
    )


def _ingredients(medication: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = medication.get("ingredient")
    return [i for i in found if isinstance(i, dict)] if isinstance(found, list) else []


# RxNorm clinical drug names end in a standard dose form ("... Topical Cream", "... Ophthalmic
# Emulsion", "... Metered Dose Inhaler"), and route codes are displayed as "Topical route",
# "Cutaneous use", "Ocular use": these words mean a drug applied where it acts, not a systemic
# treatment. Transdermal is systemic and is not listed. European product names bring their own
# words (German Salbe, Creme, Augentropfen, Nasenspray; French collyre, pommade; Spanish colirio,
# pomada), and Chinese ones theirs, without word boundaries: 软膏 ointment, 乳膏 cream, 眼膏 eye
# ointment, 滴眼液 eye drops, 眼用 ophthalmic, 滴耳 ear drops, 滴鼻 / 鼻喷 nasal, 外用 external
# use, 吸入 inhaled, 气雾 aerosol, 栓剂 suppository, 阴道 vaginal, 凝胶 gel, 洗剂 lotion, 搽剂
# liniment (他克莫司软膏 is tacrolimus ointment). cql/NCT06010472Common.cql ("Says Local Use") has
# the same words.
_LOCAL_USE = re.compile(
    r"\b(topical|cutaneous|ophthalmic|ocular|otic|auricular|nasal|intranasal|inhal\w*|rectal|"
    r"enema|vaginal|oromucosal|mouthwash|ointment|cream|lotion|shampoo|salbe|creme|"
    r"augentropfen|augensalbe|nasenspray|collyre|pommade|colirio|pomada)\b|"
    r"(软膏|乳膏|眼膏|滴眼|眼用|滴耳|滴鼻|鼻喷|外用|吸入|气雾|栓剂|阴道|凝胶|洗剂|搽剂)",
    re.IGNORECASE,
)


def local_use_word(names: Iterable[object]) -> str:
    """The first word in ``names`` (drug names, route labels) that marks local use, or ""."""
    for name in names:
        if isinstance(name, str) and (found := _LOCAL_USE.search(name)):
            return found.group(0)
    return ""


def _concept_label(concept: object) -> str:
    for coding in codings(concept):
        label = coding.get("display") or coding.get("code")
        if label:
            return str(label)
    return str(child(concept, "text") or "")


def _routes_of(resource: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """Route concepts from dosage (Statement), dosageInstruction (Request, Dispense) or dosage
    (Administration, a single object)."""
    dosages: Any = resource.get("dosage") or resource.get("dosageInstruction") or []
    if isinstance(dosages, dict):
        dosages = [dosages]
    if not isinstance(dosages, list):
        return ()
    return tuple(
        [
            route
            for dosage in dosages
            if isinstance(dosage, dict) and isinstance(route := dosage.get("route"), dict)
        ]
    )


class Placed(NamedTuple):
    """First day, last day, how they were derived, and whether the record is still running at
    ``as_of`` with no end (its exposure was cut at the screening date, it may continue after)."""

    start: DateSpan
    end: DateSpan
    basis: str
    open_ended: bool = False


def _place(resource: Resource, as_of: dt.date, supply: int) -> Placed | str:
    """(first day, last day, how it was derived), or why the record cannot be placed in time."""
    rtype = resource.get("resourceType")
    status = resource.get("status")
    if rtype == "MedicationStatement":
        return _from_effective(
            resource,
            as_of,
            open_status="active",
            what="effective",
            unknown_end_until=_asserted_by(resource, as_of),
        )
    if rtype == "MedicationAdministration":
        return _from_effective(resource, as_of, open_status="in-progress", what="effective")
    if rtype == "MedicationDispense":
        handed = parse_span(resource.get("whenHandedOver"))
        # Without a hand-over date the preparation date stands in; the reason says which it was.
        verb = "handed over"
        if handed is None:
            handed, verb = parse_span(resource.get("whenPrepared")), "prepared"
        if handed is None:
            return "it has no readable whenHandedOver date"
        days = _days(resource.get("daysSupply"))
        if days is not None:
            return _covering(handed, days, f"{verb} {_span_text(handed)}, {days}-day supply")
        return _covering(
            handed,
            supply,
            f"{verb} {_span_text(handed)}, no days supply: default {supply}-day supply",
        )
    # MedicationRequest
    placed = _one_closed_bounds(resource)
    if placed is not None:
        return placed
    bounds = [
        child(child(child(d, "timing"), "repeat"), "boundsPeriod")
        for d in objects(resource.get("dosageInstruction"))
    ]
    placed = _from_periods([b for b in bounds if b], status, as_of, supply, "dosage bounds")
    if placed is not None:
        return placed
    validity = child(resource.get("dispenseRequest"), "validityPeriod")
    placed = _from_periods([validity] if validity else [], status, as_of, supply, "validity period")
    if placed is not None:
        return placed
    authored = parse_span(resource.get("authoredOn"))
    if authored is None:
        return "it has no dosage bounds, validity period or readable authoredOn date"
    dispense = resource.get("dispenseRequest") or {}
    duration = _days(dispense.get("expectedSupplyDuration"))
    if duration is not None:
        repeats = dispense.get("numberOfRepeatsAllowed")
        fills = 1 + (repeats if isinstance(repeats, int) and repeats > 0 else 0)
        total = duration * fills
        return _covering(
            authored,
            total,
            f"authored {_span_text(authored)}, {duration}-day supply x {fills} fill(s)",
        )
    if status == "active":
        return _until(authored, as_of, f"authored {_span_text(authored)}, still active")
    # A finished order that states how long the course lasts (timing boundsDuration: "5 days")
    # says more than the default supply, which would stretch a short IV course into a window it
    # ended before.
    course = _bounds_days(resource)
    if course is not None:
        return _covering(
            authored,
            course,
            f"authored {_span_text(authored)}, {course}-day course (dosage bounds duration)",
        )
    return _covering(
        authored, supply, f"authored {_span_text(authored)}, default {supply}-day supply"
    )


def _one_closed_bounds(request: Resource) -> Placed | None:
    """What _place reads from a MedicationRequest with one dosage whose timing bounds period has
    a readable start and an end not before it (the usual order), read flat; None for any other
    request (then the general rule reads it).

    Why the same: that dosage gives the one period _from_periods sees (a truthy dict), whose
    start and end :func:`_bounds_of_one` reads as here (:func:`_day_read` is parse_span and
    _span_text of a text), and a readable end not before the start is the first case of
    _from_periods (tests/test_eval_fast_paths.py compares).
    """
    dosages = request.get("dosageInstruction")
    if type(dosages) is not list or len(dosages) != 1:
        return None
    dosage = dosages[0]
    timing = dosage.get("timing") if type(dosage) is dict else None
    repeat = timing.get("repeat") if type(timing) is dict else None
    period = repeat.get("boundsPeriod") if type(repeat) is dict else None
    if type(period) is not dict:
        return None
    start_text, end_text = period.get("start"), period.get("end")
    if type(start_text) is not str or type(end_text) is not str:
        return None  # absent, or not plain text: the general rule
    start, shown_start = _DAY_READS.get(start_text) or _day_read(start_text)
    end, shown_end = _DAY_READS.get(end_text) or _day_read(end_text)
    if start is None or end is None or end.end < start.start:
        return None
    # Placed(...) without the Python-level __new__ of a named tuple (one per order).
    return _new_tuple(Placed, (start, end, f"dosage bounds {shown_start} to {shown_end}", False))


_new_tuple = tuple.__new__
# parse_span and _span_text of a date text, per text (medication orders of a population start
# and end on the same days again and again): one lookup of a string whose hash the record's
# indexes or parse_span's own cache often computed already. Bounded: emptied when full.
_DAY_READS: dict[str, tuple[DateSpan | None, str]] = {}
_MAX_DAY_READS = 16384


def _day_read(text: str) -> tuple[DateSpan | None, str]:
    """``(parse_span(text), _span_text of it)`` (``""`` when unreadable), remembered."""
    span = parse_span(text)
    found = (span, _span_text(span) if span is not None else "")
    if len(_DAY_READS) >= _MAX_DAY_READS:
        _DAY_READS.clear()
    _DAY_READS[text] = found
    return found


def _asserted_by(statement: Resource, as_of: dt.date) -> dt.date:
    """The last day a finished statement's course may have lasted: when it was asserted, if that
    was before the screening date (the course had ended by then), else the screening date."""
    asserted = parse_span(statement.get("dateAsserted"))
    return asserted.end if asserted is not None and asserted.end < as_of else as_of


def _from_effective(
    resource: Resource,
    as_of: dt.date,
    *,
    open_status: str,
    what: str,
    unknown_end_until: dt.date | None = None,
) -> Placed | str:
    moment = parse_span(resource.get("effectiveDateTime"))
    if moment is not None:
        return Placed(moment, moment, f"{what} {_span_text(moment)}")
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        start = parse_span(period.get("start"))
        end = parse_span(period.get("end"))
        if start is None and end is not None:
            start = end
        if start is not None:
            if end is not None:
                if end.end < start.start:
                    return "its period ends before it starts"
                return Placed(start, end, f"{what} {_span_text(start)} to {_span_text(end)}")
            if resource.get("status") == open_status:
                return _until(start, as_of, f"{what} from {_span_text(start)}, {open_status}")
            if unknown_end_until is not None and unknown_end_until > start.end:
                # A finished statement with an open period ended on a day the record does not
                # give: its start day is certain, any day up to ``unknown_end_until`` possible.
                return Placed(
                    start,
                    DateSpan(start.start, unknown_end_until),
                    f"{what} from {_span_text(start)} with no end: the start day is certain, it "
                    f"may have lasted until {unknown_end_until.isoformat()}",
                )
            return Placed(
                start, start, f"{what} from {_span_text(start)} with no end: start day only"
            )
    return f"it has no readable {what}[x] date"


def _from_periods(
    candidates: Sequence[Any], status: Any, as_of: dt.date, supply: int, what: str
) -> Placed | None:
    periods = [p for p in candidates if isinstance(p, dict)]  # a damaged one is no period
    bounds = _bounds_of_one(periods[0]) if len(periods) == 1 else _bounds_of(periods)
    if bounds is None:
        return None
    start, end = bounds
    if end is not None and end.end >= start.start:
        return Placed(start, end, f"{what} {_span_text(start)} to {_span_text(end)}")
    if status == "active":
        return _until(start, as_of, f"{what} from {_span_text(start)}, still active")
    return _covering(
        start,
        supply,
        f"{what} from {_span_text(start)} with no end: default {supply}-day supply",
    )


def _bounds_of(periods: Sequence[Mapping[str, Any]]) -> tuple[DateSpan, DateSpan | None] | None:
    """The earliest start of some periods and, when every one has a readable end, the latest
    end (else None); None when no start can be read."""
    starts = [s for s in (parse_span(p.get("start")) for p in periods) if s is not None]
    if not starts:
        return None
    start = min(starts, key=lambda s: s.start)
    ends = [parse_span(p.get("end")) for p in periods]
    if ends and all(e is not None for e in ends):
        return start, max((e for e in ends if e is not None), key=lambda e: e.end)
    return start, None


def _bounds_of_one(period: Mapping[str, Any]) -> tuple[DateSpan, DateSpan | None] | None:
    """:func:`_bounds_of` for one period (the usual order): its own start and end, read flat,
    without the lists and extremes of the general rule (tests/test_eval_fast_paths.py)."""
    start = parse_span(period.get("start"))
    if start is None:
        return None
    return start, parse_span(period.get("end"))


def _until(start: DateSpan, as_of: dt.date, basis: str) -> Placed:
    if start.start > as_of:
        return Placed(start, start, basis)
    return Placed(start, DateSpan(as_of, as_of), f"{basis} (runs to {as_of.isoformat()})", True)


def _covering(start: DateSpan, days: int, basis: str) -> Placed:
    """``days`` inclusive days from ``start`` (a supply, a course)."""
    return Placed(start, _shift(start, days - 1), basis)


def _shift(span: DateSpan, days: int) -> DateSpan:
    delta = dt.timedelta(days=max(days, 0))
    return DateSpan(span.start + delta, span.end + delta)


def _bounds_days(resource: Resource) -> int | None:
    """The longest ``dosageInstruction`` timing ``boundsDuration`` in days, or None."""
    found = [
        days
        for d in objects(resource.get("dosageInstruction"))
        if (days := _days(child(child(child(d, "timing"), "repeat"), "boundsDuration"))) is not None
    ]
    return max(found, default=None)


def _days(quantity: Any) -> int | None:
    """A Duration/Quantity in whole days (d, wk, mo), or None when it cannot be read."""
    if not isinstance(quantity, dict):
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    unit = str(quantity.get("code") or quantity.get("unit") or "d").strip().lower()
    factor = _DAYS_PER_UNIT.get(unit)
    if factor is None:
        return None
    return max(1, round(value * factor))


def unavailable_medication_types(record: PatientRecord) -> list[str]:
    """The medication resource types that could not be obtained (absence rule 1)."""
    return [t for t in MEDICATION_TYPES if not record.usable(t)]


def unavailable_text(record: PatientRecord, types: Sequence[str]) -> str:
    """'MedicationRequest (timeout)' etc., for reasons."""
    return ", ".join(f"{t} ({record.failed.get(t, 'not requested')})" for t in types)


# ----------------------------------------------------------------------------- interval arithmetic
def merge(periods: Iterable[Period], max_gap: int) -> list[Period]:
    """Merge periods, bridging gaps of at most ``max_gap`` uncovered days (bridged days count)."""
    ordered = sorted(periods)
    merged: list[Period] = []
    for start, end in ordered:
        if merged and (start - merged[-1][1]).days - 1 <= max_gap:
            last_start, last_end = merged[-1]
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def intersect(first: Sequence[Period], second: Sequence[Period]) -> list[Period]:
    """The days shared by two sorted, non-overlapping lists of periods."""
    out: list[Period] = []
    i = j = 0
    while i < len(first) and j < len(second):
        start = max(first[i][0], second[j][0])
        end = min(first[i][1], second[j][1])
        if start <= end:
            out.append((start, end))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(periods: Iterable[Period], last_day: dt.date) -> list[Period]:
    """Periods cut off after ``last_day`` (periods starting later are dropped)."""
    return [(s, min(e, last_day)) for s, e in periods if s <= last_day]


def overlaps(period: Period, window: Period) -> bool:
    """Whether two inclusive periods share at least one day."""
    return period[0] <= window[1] and window[0] <= period[1]


def days_in(period: Period) -> int:
    """Number of days in an inclusive period."""
    return (period[1] - period[0]).days + 1


def next_day(day: dt.date) -> dt.date:
    """The day after."""
    return day + _DAY
