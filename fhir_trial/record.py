"""PatientRecord: one patient's FHIR resources, indexed, plus what could and could not be obtained.

The evaluator sees nothing else. Resources stay plain JSON dicts (no pydantic models on the hot
path). Every source (REST client, CDS Hooks prefetch, Bundle, Bulk NDJSON) builds one of these and
says, per data category, whether it was obtained or failed; the absence rules of CRITERIA.md depend
on that distinction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from fhir_trial.elements import child, objects
from fhir_trial.terminology import ValueSet, codings, record_code_keys

Resource = dict[str, Any]
CategoryState = Literal["obtained", "failed", "not-requested"]

MEDICATION_TYPES: tuple[str, ...] = (
    "MedicationStatement",
    "MedicationRequest",
    "MedicationAdministration",
    "MedicationDispense",
)

# The data categories the criteria need, one per resource type searched for the patient.
CATEGORIES: tuple[str, ...] = (
    "Patient",
    "Condition",
    "Observation",
    *MEDICATION_TYPES,
    "AllergyIntolerance",
    "ResearchSubject",
    "Consent",
)

# Parts of the Observation category that can fail on their own (a server that cannot run one kind
# of search), without losing the rest of the Observations. They are listed in ``failed`` (and in a
# report's ``notObtained``) like categories; the criteria that depend on them read them.
#  - the NYHA class findings, searched by their value (value-concept, component-value-concept);
#  - values sent only as components of panels: found by ``combo-code``; a server without it is
#    searched by ``code`` and this part is marked failed ("obtained without components").
NYHA_FINDINGS = "Observation.nyha"
OBSERVATION_COMPONENTS = "Observation.components"
OBSERVATION_PARTS: tuple[str, ...] = (NYHA_FINDINGS, OBSERVATION_COMPONENTS)

# Marks a result derived from an Observation.component (its value is the parent's ``Type/id``).
# Not a FHIR element name: nothing that reads FHIR JSON can mistake it for one.
COMPONENT_OF = "fhir-trial:componentOf"

# What a component result takes from its parent Observation: status, time, subject, identity.
_PARENT_ELEMENTS: tuple[str, ...] = (
    "id",
    "status",
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "effectiveTiming",
    "issued",
    "subject",
)

# The element holding the coded concept that criteria select on, per resource type.
_CODE_ELEMENT: Mapping[str, str] = {
    "Condition": "code",
    "Observation": "code",
    "AllergyIntolerance": "code",
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationAdministration": "medicationCodeableConcept",
    "MedicationDispense": "medicationCodeableConcept",
    "Medication": "code",
    "Procedure": "code",
}


def _code_index() -> defaultdict[tuple[str, str], list[Resource]]:
    """One type's code index: (system, code) -> its resources. A function of the module, not a
    lambda in ``__init__``: compiled (setup.py), a lambda there holds the record it is made in,
    so the record would live in a reference cycle until the cyclic collector found it."""
    return defaultdict(list)


_NO_TYPE = object()  # equal to no resourceType


def _as_resource(resource: Any) -> Any:
    """A resource as the record keeps it: a JSON object is a dict; another mapping (a caller's
    read-only view) is kept as a dict of its items, so that every resource the record holds is
    a dict (the compiled build, see setup.py, checks that type where the record hands them on)."""
    if type(resource) is dict or not isinstance(resource, Mapping):
        return resource
    return dict(resource)


class PatientRecord:
    """A patient's resources indexed by type, by reference and by code, with category states."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[Resource]] = defaultdict(list)
        # What ``Type/id`` references (and fullUrls) name, in two parts: the resources add_all
        # keeps (a type without "/", a text id) by type and id, without making a text key for
        # each; the others (add(), fullUrls, odd ids) by their text (see _held, _hold, _lookup).
        self._by_reference: dict[str, Resource] = {}
        self._by_id: dict[str, dict[str, Resource]] = {}
        self._text_types: set[str] = set()  # the text keys' heads (before their first "/")
        self._by_code: dict[str, dict[tuple[str, str], list[Resource]]] = defaultdict(_code_index)
        self._seen: set[int] = set()
        # One derived Observation per coded component, in record order (see component_results),
        # and the place of its parent among the Observations.
        self._components: list[Resource] = []
        self._component_parents: list[int] = []
        # Record order of one type's resources (with the components among the Observations),
        # made when a lookup needs it: type -> (resources and components it counted, ranks).
        self._ranks: dict[str, tuple[int, int, dict[int, int]]] = {}
        # Per coded type, the distinct labels (code.text and coding displays, as written) of its
        # resources and of the component results, gathered while indexing (see
        # observation_labels); the types with a resource whose shape is not plain JSON.
        self._labels: dict[str, set[Any]] = defaultdict(set)
        self._unplain: set[str] = set()
        # What is computed from the record and kept with it (a medication history per screening
        # date): it lives and dies with the record, and is never part of what the record says.
        self.derived: dict[str, Any] = {}
        self.obtained: set[str] = set()
        self.failed: dict[str, str] = {}
        self.warnings: list[str] = []
        # Resources add() left out (no text resourceType, or a Type/id or object already held):
        # while 0, the record holds every resource given, each once.
        self.left_out = 0

    # ------------------------------------------------------------------ building
    def add(self, resource: Any, full_url: str | None = None) -> None:
        """Add one resource (duplicates by type/id are kept once)."""
        resource = _as_resource(resource)
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            self.left_out += 1
            return
        rid = resource.get("id")
        key = f"{rtype}/{rid}" if rid else None
        if key:
            if self._held(key):
                self.left_out += 1
                return
            self._hold(key, resource)
        else:  # no id: the same dict object is still kept once
            if id(resource) in self._seen:
                self.left_out += 1
                return
            self._seen.add(id(resource))
        self._by_type[rtype].append(resource)
        # A fullUrl that is the resource's own ``Type/id`` (most Bundles) adds nothing.
        if full_url and full_url != key:
            self._hold(full_url, resource)
            # Absolute server URLs ending in Type/id are also reachable by their relative form.
            tail = "/".join(full_url.rstrip("/").split("/")[-2:])
            if not self._held(tail):
                self._hold(tail, resource)
        element = _CODE_ELEMENT.get(rtype)
        if element:
            self._index_code(rtype, resource, resource.get(element))
            self._note_labels(rtype, resource, resource.get(element))
            if rtype == "Observation":
                parts = resource.get("component")
                if parts and type(parts) is list:
                    self._add_components(resource, parts)

    def _held(self, key: str) -> bool:
        """Whether a text reference names something held (a resource's Type/id, a fullUrl)."""
        if key in self._by_reference:
            return True
        rtype, _, rid = key.partition("/")
        ids = self._by_id.get(rtype)
        return ids is not None and rid in ids

    def _hold(self, key: str, resource: Resource) -> None:
        """Let a text reference name ``resource`` (replacing what it named, as a dict does)."""
        rtype, _, rid = key.partition("/")
        ids = self._by_id.get(rtype)
        if ids is not None:
            ids.pop(rid, None)  # a type has no "/": a key names one (type, id) pair at most
        self._by_reference[key] = resource
        self._text_types.add(rtype)

    def _lookup(self, key: str) -> Resource | None:
        """What a text reference names, if held."""
        found = self._by_reference.get(key)
        if found is None:
            rtype, _, rid = key.partition("/")
            ids = self._by_id.get(rtype)
            if ids is not None:
                found = ids.get(rid)
        return found

    def _references(self) -> dict[str, Resource]:
        """Every text reference held and what it names (one dict; for tests)."""
        out = dict(self._by_reference)
        for rtype, ids in self._by_id.items():
            for rid, resource in ids.items():
                out[f"{rtype}/{rid}"] = resource
        return out

    def _index_code(self, rtype: str, resource: Resource, concept: Any) -> None:
        index = self._by_code[rtype]
        found = concept.get("coding") if type(concept) is dict else None
        # Plain JSON (the usual case) skips the Mapping checks of codings(); same result.
        for coding in found if type(found) is list else codings(concept):
            if type(coding) is not dict and not isinstance(coding, Mapping):
                continue
            code = coding.get("code")
            if code:
                keys = record_code_keys(coding.get("system"), code)
                if not keys:
                    self._note_unusable_code(rtype)
                for key_ in keys:
                    index[key_].append(resource)

    def _note_labels(self, rtype: str, resource: Any, concept: Any) -> None:
        """Keep the labels of one resource's concept (see :meth:`observation_labels`); a shape
        that is not plain JSON (a resource or concept that is no dict, codings that are no list
        of dicts, a label that cannot be hashed) marks its type instead."""
        if type(resource) is not dict or type(concept) is not dict:
            self._unplain.add(rtype)
            return
        labels = self._labels[rtype]
        found = concept.get("coding", [])
        try:
            labels.add(concept.get("text"))
            if type(found) is not list:
                self._unplain.add(rtype)
                return
            for coding in found:
                if type(coding) is not dict:
                    self._unplain.add(rtype)
                    return
                labels.add(coding.get("display"))
        except TypeError:  # a label that cannot be hashed
            self._unplain.add(rtype)

    def _code_lists(
        self, index: dict[tuple[str, str], list[Resource]], rtype: str, system: Any, code: Any
    ) -> list[list[Resource]]:
        """The index lists a resource coded (system, code) joins (what _index_code appends to)."""
        keys = record_code_keys(system, code)
        if not keys:
            self._note_unusable_code(rtype)
        return [index[key_] for key_ in keys]

    def _add_components(self, parent: Resource, parts: list[Any]) -> None:
        """Index each coded component as an Observation of its own (CRITERIA.md, Real-world records).

        The derived result carries the component's code, value[x], dataAbsentReason,
        interpretation and referenceRange, and the parent's id, status, time and subject, so every
        criterion reading :meth:`with_code` sees it and names the parent as evidence. It is not
        listed by :meth:`resources` nor counted by :meth:`count`, and never resolved by reference.
        """
        base: Resource = {"resourceType": "Observation"}
        for name in _PARENT_ELEMENTS:
            if name in parent:
                base[name] = parent[name]
        base[COMPONENT_OF] = f"Observation/{parent.get('id', 'unknown')}"
        for part in parts:
            if type(part) is not dict or not part.get("code"):
                continue
            derived = dict(base)
            for name, value in part.items():
                # value[x], dataAbsentReason, interpretation, referenceRange, code: the component's
                # own; its id and extensions stay behind (the parent's id names the result).
                if name not in ("id", "extension", "modifierExtension"):
                    derived[name] = value
            self._components.append(derived)
            self._component_parents.append(len(self._by_type["Observation"]) - 1)
            self._index_code("Observation", derived, derived.get("code"))
            self._note_labels("Observation", derived, derived.get("code"))

    def _note_unusable_code(self, rtype: str) -> None:
        # Said once per resource type: the reviewer learns that some codes could not be matched
        # (so an exclusion coded that way cannot have been seen), without one line per resource.
        warning = (
            f"{rtype} codings whose code is not text were ignored: they match no ValueSet, "
            "so what they record was not seen"
        )
        if warning not in self.warnings:
            self.warnings.append(warning)

    def add_all(self, resources: Iterable[Any]) -> None:
        """Add many resources: what :meth:`add` does for each, in order (written out flat).

        A record holds a few hundred resources of a few types, coded with a few dozen codings:
        what depends on the type is looked up when the type changes (resources come grouped by
        type), and the index lists a coding's resource goes to are found once per distinct
        (system, code) and type, not once per resource.
        """
        by_reference = self._by_reference
        by_id = self._by_id
        text_types = self._text_types
        by_type = self._by_type
        by_code = self._by_code
        seen = self._seen
        unplain = self._unplain
        code_element = _CODE_ELEMENT
        # type -> (system, code) -> the index lists a resource with that coding joins
        targets_by_type: dict[str, dict[tuple[str | None, str], list[list[Resource]]]] = {}
        last_type: Any = _NO_TYPE  # what follows is for resources of this type
        kept: list[Resource] | None = None
        element: str | None = None
        index: dict[tuple[str, str], list[Resource]] = {}
        add_label: Any = None  # this type's label set's add (see _note_labels)
        targets_of: dict[tuple[str | None, str], list[list[Resource]]] = {}
        observations = False
        ids: dict[str, Resource] | None = None  # this type's resources by id (None: by text)
        by_text = False  # whether a text key of this type may be held
        for resource in resources:
            if type(resource) is not dict:
                resource = _as_resource(resource)
            rtype = resource.get("resourceType")
            if rtype != last_type:  # JSON never makes a non-text equal to a text
                if not isinstance(rtype, str):
                    self.left_out += 1
                    continue
                last_type = rtype
                ids = None if "/" in rtype else by_id.setdefault(rtype, {})
                by_text = rtype in text_types
                kept = by_type.get(rtype)  # made when one is kept (as add() does)
                element = code_element.get(rtype)
                if element:
                    index = by_code[rtype]
                    add_label = self._labels[rtype].add
                    targets_of = targets_by_type.setdefault(rtype, {})
                observations = rtype == "Observation"
            rid = resource.get("id")
            if rid:
                if ids is not None and type(rid) is str:
                    # Type/id held: by (type, id), or by its text (added by add()).
                    if rid in ids or (by_text and f"{rtype}/{rid}" in by_reference):
                        self.left_out += 1
                        continue
                    ids[rid] = resource
                else:  # a type with "/" or an id not text: by its text
                    key = f"{rtype}/{rid}"
                    if self._held(key):
                        self.left_out += 1
                        continue
                    self._hold(key, resource)
                    by_text = True
            else:  # no id: the same dict object is still kept once
                if id(resource) in seen:
                    self.left_out += 1
                    continue
                seen.add(id(resource))
            if kept is None:
                kept = by_type[rtype]
            kept.append(resource)
            if not element:
                continue
            concept: Any = resource.get(element)
            found = concept.get("coding") if type(concept) is dict else None
            if type(found) is not list or type(resource) is not dict:
                self._index_code(rtype, resource, concept)  # odd shapes: the general walk
                self._note_labels(rtype, resource, concept)
            else:
                # _note_labels written out: the labels of plain JSON (the usual case).
                try:
                    add_label(concept.get("text"))
                except TypeError:
                    unplain.add(rtype)
                for coding in found:
                    if type(coding) is not dict:
                        unplain.add(rtype)
                        if isinstance(coding, Mapping):
                            self._index_code(rtype, resource, {"coding": [coding]})
                        continue
                    try:
                        add_label(coding.get("display"))
                    except TypeError:
                        unplain.add(rtype)
                    code = coding.get("code")
                    if not code:
                        continue
                    system = coding.get("system")
                    if type(code) is str and (system is None or type(system) is str):
                        pair = (system, code)
                        targets = targets_of.get(pair)
                        if targets is None:
                            targets = targets_of[pair] = self._code_lists(
                                index, rtype, system, code
                            )
                    else:  # not text: never remembered (1 and True would be one key)
                        targets = self._code_lists(index, rtype, system, code)
                    for listed in targets:
                        listed.append(resource)
            if observations:
                parts = resource.get("component")
                if parts and type(parts) is list:
                    self._add_components(resource, parts)

    def mark_obtained(self, *categories: str) -> None:
        """Record that these categories were retrieved completely (absence is meaningful)."""
        for category in categories:
            self.obtained.add(category)
            self.failed.pop(category, None)

    def mark_failed(self, category: str, reason: str) -> None:
        """Record that a category could not be obtained; ``reason`` must hold no PHI or token."""
        self.failed[category] = reason
        self.obtained.discard(category)

    # ------------------------------------------------------------------ reading
    def state(self, category: str) -> CategoryState:
        """Whether a category was obtained, failed, or never asked for."""
        if category in self.failed:
            return "failed"
        if category in self.obtained:
            return "obtained"
        return "not-requested"

    def usable(self, category: str) -> bool:
        """True when a category was obtained, so that absence of a record means absence."""
        return self.state(category) == "obtained"

    @property
    def patient(self) -> Resource | None:
        """The Patient resource, if any."""
        patients = self._by_type.get("Patient")
        return patients[0] if patients else None

    @property
    def patient_reference(self) -> str:
        """``Patient/<id>`` (or ``Patient/unknown``)."""
        patient = self.patient
        return f"Patient/{patient.get('id', 'unknown')}" if patient else "Patient/unknown"

    def resources(self, resource_type: str) -> list[Resource]:
        """All resources of one type (a list owned by the record: do not mutate)."""
        return self._by_type.get(resource_type, [])

    def types(self) -> list[str]:
        """The resource types present."""
        return sorted(t for t, items in self._by_type.items() if items)

    def count(self, resource_type: str) -> int:
        """How many resources of a type the record holds."""
        return len(self._by_type.get(resource_type, []))

    def component_results(self) -> list[Resource]:
        """One derived Observation per coded Observation.component, in record order.

        See :func:`is_component` and ``_add_components``; :meth:`with_code` returns them beside
        the Observations whose own code matches.
        """
        return self._components

    def observation_results(self) -> list[Resource]:
        """Every Observation, then every component result: all results a criterion may read."""
        if not self._components:
            return self.resources("Observation")
        return [*self.resources("Observation"), *self._components]

    def observation_labels(self) -> set[Any] | None:
        """The distinct labels of every result :meth:`observation_results` gives: each one's
        ``code.text`` and its codings' displays, as written (None and other values included);
        None when a result's shape is not plain JSON (a result or code that is no dict, codings
        that are no list of dicts, a label that cannot be hashed): then read each result.

        Gathered while the record indexes its resources, which reads these codings anyway.
        """
        if "Observation" in self._unplain:
            return None
        return self._labels.get("Observation", set())

    def with_code(self, resource_type: str, valueset: ValueSet) -> list[Resource]:
        """Resources of a type whose code element has a coding in the ValueSet (index lookup).

        For Observations, a component coded in the ValueSet is returned too, as a derived
        Observation (see :meth:`component_results`) whose evidence reference is its parent.
        For medication resources that name their drug by reference (a Medication resource or a
        contained one), use :meth:`medication_concept` instead; this index only sees inline codes.
        """
        index = self._by_code.get(resource_type)
        if not index:
            return []
        found: dict[int, Resource] = {}
        codes = valueset.codes
        # Walk whichever side is smaller: a record's few codes, or a short ValueSet.
        keys = codes.intersection(index) if len(index) < len(codes) else codes
        lists = 0
        for key in keys:
            listed = index.get(key)
            if listed:
                lists += 1
                for resource in listed:
                    found[id(resource)] = resource
        if len(found) < 2 or lists == 1:
            # One index list (one code matched, the usual case) is in record order already:
            # resources are indexed as they are added, so its order is their positions' order.
            return list(found.values())
        # Set iteration order depends on string hashing, which differs between processes: sort,
        # so reasons and evidence list the same resources in the same order everywhere.
        rank = self._rank(resource_type)
        return sorted(found.values(), key=lambda resource: rank[id(resource)])

    def _rank(self, resource_type: str) -> dict[int, int]:
        """Record order of one type's resources (each component right after its parent, as
        :meth:`add` adds them): ``id(resource) -> rank``. The index lists hold one type's
        resources (and, for Observations, components), so that order is the record's."""
        resources = self._by_type.get(resource_type, [])
        components = self._components if resource_type == "Observation" else []
        made = self._ranks.get(resource_type)
        if made is not None and made[:2] == (len(resources), len(components)):
            return made[2]
        after: dict[int, list[Resource]] = {}
        for parent, component in zip(self._component_parents, components, strict=False):
            after.setdefault(parent, []).append(component)
        rank: dict[int, int] = {}
        for place, resource in enumerate(resources):
            rank[id(resource)] = len(rank)
            for component in after.get(place, ()):
                rank[id(component)] = len(rank)
        self._ranks[resource_type] = (len(resources), len(components), rank)
        return rank

    def resolve(
        self, reference: str | None, container: Mapping[str, Any] | None = None
    ) -> Resource | None:
        """Resolve a reference: ``#id`` in ``container.contained``, ``Type/id``, urn:uuid or URL."""
        if not reference:
            return None
        if reference.startswith("#"):
            for contained in objects(child(container, "contained")):
                if contained.get("id") == reference[1:]:
                    return contained
            return None
        found = self._lookup(reference)
        if found is None and "/" in reference and not reference.startswith("urn:"):
            found = self._lookup("/".join(reference.rstrip("/").split("/")[-2:]))
        return found

    def unresolved_medication_references(self) -> list[str]:
        """Literal references from medication resources to Medications the record does not hold.

        Each once, in record order. Contained (``#id``) and ``urn:`` references are left out: no
        server can be asked for them. Without the Medication a drug cannot be identified, so the
        readers of a FHIR server fetch these before screening.
        """
        wanted: list[str] = []
        for rtype in MEDICATION_TYPES:
            for resource in self.resources(rtype):
                ref = child(resource.get("medicationReference"), "reference")
                if not isinstance(ref, str) or ref.startswith(("#", "urn:")):
                    continue
                if self.resolve(ref, resource) is None and ref not in wanted:
                    wanted.append(ref)
        return wanted

    def medication_concept(self, resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The drug of a medication resource: inline CodeableConcept or the referenced Medication's code."""
        concept = resource.get("medicationCodeableConcept")
        if concept:
            return concept
        ref = child(resource.get("medicationReference"), "reference")
        medication = self.resolve(ref, resource)
        if medication is not None:
            return medication.get("code")
        return None

    def reference_to(self, resource: Mapping[str, Any]) -> str:
        """``Type/id`` of a resource, for evidence lists."""
        return f"{resource.get('resourceType')}/{resource.get('id', 'unknown')}"


def is_component(resource: Mapping[str, Any]) -> bool:
    """Whether an Observation is a result derived from another Observation's component."""
    return COMPONENT_OF in resource
