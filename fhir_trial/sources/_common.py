"""Helpers the record builders share: which patient a resource belongs to, and known types.

A resource belongs to a patient when one of its top-level references (``subject``, ``patient``,
``individual``, ``beneficiary``, Provenance ``target``, ...) points at that patient, written as
``Patient/<id>``, as an absolute URL ending in ``Patient/<id>``, or as the patient entry's
``fullUrl`` (``urn:uuid:...`` in transaction Bundles). A resource with no reference to any patient
(Medication, Organization, Practitioner, ...) is shared by every patient of the same source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from importlib import resources as importlib_resources
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


def patient_refs(resource: Mapping[str, Any]) -> Iterator[str]:
    """Normalised top-level references that could point to a patient.

    ``Patient/<id>`` forms and ``urn:`` references are returned (a ``urn:uuid`` can only be told
    apart once the Bundle's Patient fullUrls are known); the Patient resource itself yields nothing.
    """
    if resource.get("resourceType") == "Patient":
        return
    for ref in references(resource):
        norm = normalise_reference(ref)
        if norm.startswith(("Patient/", "urn:")):
            yield norm


def is_patient_reference(reference: str) -> bool:
    """Whether a normalised reference is of the form ``Patient/<id>``."""
    return reference.startswith("Patient/")


@lru_cache(maxsize=1)
def _known_type_names() -> frozenset[str]:
    """Lower-case names of the FHIR resource types (module names of fhir.resources' R4B package)."""
    try:
        package = importlib_resources.files("fhir.resources.R4B")
        return frozenset(
            entry.name[:-3] for entry in package.iterdir() if entry.name.endswith(".py")
        )
    except (ModuleNotFoundError, OSError):  # pragma: no cover - fhir.resources is a dependency
        return frozenset()


def is_known_type(resource_type: Any) -> bool:
    """Whether ``resource_type`` names a FHIR resource type (spelling checked, R4/R4B names)."""
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
