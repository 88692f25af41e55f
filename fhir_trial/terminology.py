"""ValueSet loading and code matching: the only place codes come from.

The project's ValueSets (``resources/ValueSet-*.json``) ship their expansions, so no terminology
server is needed at run time. ICD-10, ICD-10-CM and ATC are hierarchical by code prefix: a record
code matches a ValueSet that lists any of its ancestors (``M32.14`` matches ``M32.1``; ``J01CA04``
matches ``J01``). SNOMED CT and the rest match exactly what the expansion lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhir_trial.errors import ConfigurationError

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"

# Spellings of the same code systems seen in real data, mapped to the FHIR canonical URI.
_SYSTEM_ALIASES: Mapping[str, str] = {
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "http://snomed.info/sct/": SNOMED,
    "https://snomed.info/sct": SNOMED,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "https://loinc.org": LOINC,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "http://www.nlm.nih.gov/research/umls/rxnorm/": RXNORM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "http://hl7.org/fhir/sid/icd-10-cm/": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.3": ICD10,
    "urn:oid:2.16.840.1.113883.6.73": ATC,
    "http://www.whocc.no/atc/": ATC,
}
PREFIX_SYSTEMS = frozenset({ICD10, ICD10CM, ATC})

Code = tuple[str, str]  # (system, code)


def normalise_system(system: object) -> str:
    """Return the canonical FHIR URI for a code system spelling ('' when absent or not text)."""
    if not system or type(system) is not str:
        return ""
    return _SYSTEM_ALIASES.get(system, system)


def code_text(code: object) -> str | None:
    """A coding's code as matchable text, or None when it has none.

    Strings are stripped. Whole numbers are written out: some exports send SNOMED CT or RxNorm
    codes as JSON numbers, and ``55464009`` means the same code either way. Anything else (an
    object, a list, a fraction, a boolean) is a malformed coding that matches nothing.
    """
    if type(code) is str:
        return code.strip() or None
    if type(code) is int:  # not bool: True is not a code
        return str(code)
    return None


def lookup_keys(system: object, code: object) -> list[Code]:
    """Keys under which a record code can be found: itself, plus its ancestors in prefix systems.

    ``M32.14`` gives ``M32.14``, ``M32.1`` and ``M32``; ``J01CA04`` gives ``J01CA04`` ... ``J``.
    A code that is not text (see :func:`code_text`) has no keys.
    """
    # The usual case (a string) inline: this runs for every coding of every resource.
    text = code.strip() if type(code) is str else code_text(code)
    if not text:
        return []
    sys = normalise_system(system)
    keys = [(sys, text)]
    if sys in PREFIX_SYSTEMS:
        bare = text.replace(".", "")
        for length in range(len(bare) - 1, 0, -1):
            head = bare[:length]
            if sys != ATC and length > 3:
                head = f"{head[:3]}.{head[3:]}"
            keys.append((sys, head))
    return keys


def codings(concept: object) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept (empty for None or a concept with text only)."""
    if not isinstance(concept, Mapping):
        return []  # absent, or malformed data (a string where a CodeableConcept belongs)
    found = concept.get("coding")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, Mapping)]


@dataclass(frozen=True)
class ValueSet:
    """A ValueSet's shipped expansion, ready for membership tests."""

    id: str
    url: str
    title: str
    codes: frozenset[Code]
    displays: Mapping[Code, str]

    def contains(self, system: object, code: object) -> bool:
        """Whether a code (or, in a prefix system, one of its ancestors) is in the expansion."""
        text = code.strip() if type(code) is str else code_text(code)
        if not text:
            return False
        canonical = normalise_system(system)
        if canonical not in PREFIX_SYSTEMS:  # the usual case: one exact key, no list to build
            return (canonical, text) in self.codes
        return not self.codes.isdisjoint(lookup_keys(canonical, code))

    def contains_any(self, keys: frozenset[Code]) -> bool:
        """Whether any of these lookup keys (see :func:`lookup_keys`) is in the expansion."""
        return not self.codes.isdisjoint(keys)

    def matching_coding(self, concept: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The first coding of a CodeableConcept that is a member, else None."""
        for coding in codings(concept):
            if self.contains(coding.get("system"), coding.get("code")):
                return coding
        return None

    def matches(self, concept: Mapping[str, Any] | None) -> bool:
        """Whether any coding of a CodeableConcept is a member."""
        return self.matching_coding(concept) is not None

    def __iter__(self) -> Iterator[Code]:
        return iter(sorted(self.codes))


class Terminology:
    """All ValueSets of a resources directory, by id and by canonical URL."""

    def __init__(self, valuesets: Iterable[ValueSet]) -> None:
        self._by_key: dict[str, ValueSet] = {}
        for vs in valuesets:
            self._by_key[vs.id] = vs
            self._by_key[vs.url] = vs

    def get(self, id_or_url: str) -> ValueSet:
        """The ValueSet with this id or canonical URL; ConfigurationError if there is none."""
        try:
            return self._by_key[id_or_url]
        except KeyError:
            raise ConfigurationError(f"ValueSet {id_or_url!r} is not in the resources") from None

    __getitem__ = get

    def ids(self) -> list[str]:
        """The ids of all loaded ValueSets."""
        return sorted({vs.id for vs in self._by_key.values()})


def valueset_from_resource(resource: Mapping[str, Any]) -> ValueSet:
    """Read the shipped expansion of a ValueSet resource."""
    codes: set[Code] = set()
    displays: dict[Code, str] = {}

    def walk(entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            if entry.get("code") and not entry.get("abstract", False):
                key = (normalise_system(entry.get("system")), str(entry["code"]))
                codes.add(key)
                if entry.get("display"):
                    displays[key] = str(entry["display"])
            walk(entry.get("contains", []))

    walk(resource.get("expansion", {}).get("contains", []))
    return ValueSet(
        id=str(resource.get("id", "")),
        url=str(resource.get("url", "")),
        title=str(resource.get("title") or resource.get("name") or resource.get("id", "")),
        codes=frozenset(codes),
        displays=displays,
    )


@lru_cache(maxsize=8)
def load_terminology(resources_dir: str) -> Terminology:
    """Load every ``ValueSet-*.json`` in a directory (cached per directory)."""
    directory = Path(resources_dir)
    files = sorted(directory.glob("ValueSet-*.json"))
    if not files:
        raise ConfigurationError(f"no ValueSet-*.json files in {directory}")
    valuesets = []
    for path in files:
        try:
            valuesets.append(valueset_from_resource(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {path.name}: {exc}") from exc
    return Terminology(valuesets)
