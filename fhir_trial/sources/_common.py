"""Helpers the record builders share: which patient a resource belongs to, and known types.

A resource belongs to a patient when one of its top-level references (``subject``, ``patient``,
``individual``, ``beneficiary``, Provenance ``target``, ...) points at that patient, written as
``Patient/<id>``, as an absolute URL ending in ``Patient/<id>``, or as the patient entry's
``fullUrl`` (``urn:uuid:...`` in transaction Bundles). A resource with no reference to any patient
(Medication, Organization, Practitioner, ...) is shared by every patient of the same source.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from fhir_trial.record import CATEGORIES

# ``[base/]Type/id[/_history/vid]``: the FHIR literal reference grammar, reduced to what we need.
_LITERAL = re.compile(
    r"^(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")

# Resource types kept from large exports: the categories the criteria read, the Medications that
# medication resources point to, and two types the criteria may cite as evidence. Everything else
# (Encounter, Claim, DocumentReference, ...) is never read by the evaluator.
KEPT_TYPES: frozenset[str] = frozenset({*CATEGORIES, "Medication", "Procedure", "DiagnosticReport"})


def normalise_reference(reference: str) -> str:
    """``Type/id`` for relative or absolute literal references; anything else unchanged."""
    if reference.startswith(("urn:", "#")) or "?" in reference:
        return reference
    if reference.count("/") == 1 and not reference.endswith("\n"):
        return reference  # already ``Type/id`` (or not a literal reference): the regex keeps it
    match = _LITERAL.match(reference)
    if match is None:
        return reference
    return f"{match['type']}/{match['id']}"


def references(resource: Mapping[str, Any]) -> Iterator[str]:
    """The reference strings of a resource's top-level Reference elements (single or repeated)."""
    for value in resource.values():
        if isinstance(value, dict):
            ref = value.get("reference")
            if isinstance(ref, str):
                yield ref
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    ref = item.get("reference")
                    if isinstance(ref, str):
                        yield ref


# What :func:`patient_refs` makes of each reference string seen: its normalised form when that
# may name a patient, else "". A patient's resources repeat the same few references thousands of
# times ("Patient/123" on every Observation), so this saves the regex on all but the first. Bounded:
# a population run meets one new reference per patient, and the cache is emptied when full.
_PATIENT_REF_OF: dict[str, str] = {}
_MAX_CACHED_REFS = 65536


def _patient_ref(reference: str) -> str:
    """The normalised reference when it may name a patient (``Patient/<id>``, ``urn:...``), else ""."""
    norm = normalise_reference(reference)
    found = norm if norm.startswith(("Patient/", "urn:")) else ""
    if len(_PATIENT_REF_OF) >= _MAX_CACHED_REFS:
        _PATIENT_REF_OF.clear()
    _PATIENT_REF_OF[reference] = found
    return found


def patient_refs(resource: Mapping[str, Any]) -> list[str]:
    """Normalised top-level references that could point to a patient, in element order.

    ``Patient/<id>`` forms and ``urn:`` references are returned (a ``urn:uuid`` can only be told
    apart once the Bundle's Patient fullUrls are known); the Patient resource itself yields nothing.
    The same as normalising every reference of :func:`references` and keeping those forms (a test
    holds them together); written out flat because it runs for every resource of every source.
    """
    if resource.get("resourceType") == "Patient":
        return []
    refs: list[str] = []
    for value in resource.values():
        kind = type(value)
        if kind is str:
            continue  # most elements: ids, statuses, dates
        if kind is dict or (kind is not list and isinstance(value, dict)):
            ref = value.get("reference")
            if isinstance(ref, str):
                refs.append(ref)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    ref = item.get("reference")
                    if isinstance(ref, str):
                        refs.append(ref)
    found: list[str] = []
    known = _PATIENT_REF_OF
    for ref in refs:
        norm = known.get(ref)
        if norm is None:
            norm = _patient_ref(ref)
        if norm:
            found.append(norm)
    return found


def patient_ref(reference: str) -> str:
    """One reference as :func:`patient_refs` gives it: normalised when it may name a patient
    (``Patient/<id>``, ``urn:...``), else ""."""
    norm = _PATIENT_REF_OF.get(reference)
    return norm if norm is not None else _patient_ref(reference)


def is_patient_reference(reference: str) -> bool:
    """Whether a normalised reference is of the form ``Patient/<id>``."""
    return reference.startswith("Patient/")


@lru_cache(maxsize=1)
def _known_type_names() -> frozenset[str]:
    """Lower-case names of the FHIR resource types (module names of fhir.resources' R4B package).

    Read from the package's folder without importing it where it is a folder on disk: importing
    it imports pydantic and the models (about 80 ms, which the NDJSON split waited for).
    """
    spec = importlib.util.find_spec("fhir")  # a top-level name: finding it imports nothing
    for location in (spec and spec.submodule_search_locations) or ():
        folder = Path(location, "resources", "R4B")
        if folder.is_dir():
            return frozenset(
                entry.name[:-3] for entry in folder.iterdir() if entry.name.endswith(".py")
            )
    return _imported_type_names()


def _imported_type_names() -> frozenset[str]:
    """:func:`_known_type_names` by importing the package (where it is not a folder on disk)."""
    try:
        package = importlib_resources.files("fhir.resources.R4B")
        return frozenset(
            entry.name[:-3] for entry in package.iterdir() if entry.name.endswith(".py")
        )
    except (ModuleNotFoundError, OSError):  # pragma: no cover - fhir.resources is a dependency
        return frozenset()


# Answers of :func:`is_known_type` per string: every resource of every source asks, with a handful
# of distinct type names. Bounded, in case an input brings many made-up names.
_KNOWN_TYPE: dict[str, bool] = {}
_MAX_CACHED_TYPES = 4096


def is_known_type(resource_type: Any) -> bool:
    """Whether ``resource_type`` names a FHIR resource type (spelling checked, R4/R4B names)."""
    if type(resource_type) is str:
        known = _KNOWN_TYPE.get(resource_type)
        if known is None:
            known = _is_known_type(resource_type)
            if len(_KNOWN_TYPE) < _MAX_CACHED_TYPES:
                _KNOWN_TYPE[resource_type] = known
        return known
    return _is_known_type(resource_type)


def _is_known_type(resource_type: Any) -> bool:
    if not isinstance(resource_type, str) or not _TYPE_NAME.match(resource_type):
        return False
    names = _known_type_names()
    return not names or resource_type.lower() in names


def search_bundle_entries(bundle: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The entries of a search Bundle that hold a resource, or ``([], why)`` when it cannot be read.

    Reading past a broken entry would make absence look meaningful, so a Bundle with one is not
    used at all: its category becomes unknown, as an unreadable NDJSON line makes its own. One pass,
    plain type checks: this runs on every prefetched and fetched page at chart open.
    """
    entries = bundle.get("entry")
    if entries is None:
        entries = []
    elif type(entries) is not list:
        return [], "'entry' is not a list"
    links = bundle.get("link")
    if links is not None and type(links) is not list:
        return [], "'link' is not a list"
    readable: list[dict[str, Any]] = []
    broken = 0
    for entry in entries:
        resource = entry.get("resource") if type(entry) is dict else None
        if type(resource) is dict and type(resource.get("resourceType")) is str:
            readable.append(entry)
        else:
            broken += 1
    if broken:
        return [], f"{broken} entr{'y is' if broken == 1 else 'ies are'} not a FHIR resource"
    return readable, None
