"""ValueSet loading and code matching: the only place codes come from.

The project's ValueSets (``resources/ValueSet-*.json``) ship their expansions, so no terminology
server is needed at run time. ICD-10, ICD-10-CM and ATC are hierarchical by code prefix: a record
code matches a ValueSet that lists any of its ancestors (``M32.14`` matches ``M32.1``; ``J01CA04``
matches ``J01``). SNOMED CT and the rest match exactly what the expansion lists.

RxNorm products by ingredient name. A ValueSet lists ingredients and some product codes, but no list
of products is complete and there is no RxNorm service at run time. RxNorm product names (SCD/SBD
displays: "Methotrexate 2.5 MG Oral Tablet", "hyaluronidase / rituximab ...") spell out their
ingredients, so an RxNorm coding whose code is not listed counts as a listed ingredient when its
display names it (:meth:`ValueSet.coding_ingredient`).

Drug names (:meth:`ValueSet.named_by`). The names are the ValueSet's own: designations with use
``ingredient-name`` (project CodeSystem) on its entries, merged from ``terminology/drug-names.json``
at build time: the ingredient's name first, then its synonyms, other languages (German, French,
Spanish INN forms; Chinese generic names) and brands. A designation carrying the
``ingredient-name-of`` extension (on an ATC class entry such as J01) names the ingredient given
there. Matching folds case and accents ("Méthotrexate" is "methotrexate"). Latin names match as
whole words, so prednisolone is not found inside methylprednisolone; Chinese has no word
boundaries, so Chinese names match anywhere, the longest name first at each place (泼尼松龙,
prednisolone, is not read as 泼尼松, prednisone). Medication records use this for any code system
(fhir_trial.medications); criteria label such a match so that a person can check it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from fhir_trial.canonical import BASE, CODESYSTEM_URL
from fhir_trial.errors import ConfigurationError

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
EDQM = "http://standardterms.edqm.eu"

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
    # EDQM Standard Terms by their OID, as European IGs send routes and dose forms (Swiss CH Core
    # and CH EMED examples, IHE Medication Prescription and Dispense, HL7 Europe's EDQM CodeSystem).
    "urn:oid:0.4.0.127.0.16.1.1.2.1": EDQM,
    # DSTU2/STU3 spellings of the HL7 interpretation code systems (renamed in R4), still emitted
    # by exporters converting older feeds.
    "http://hl7.org/fhir/v2/0078": "http://terminology.hl7.org/CodeSystem/v2-0078",
    "http://hl7.org/fhir/v3/ObservationInterpretation": (
        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    ),
}
PREFIX_SYSTEMS = frozenset({ICD10, ICD10CM, ATC})

# National editions of ICD-10 share WHO ICD-10's categories (three characters) and mostly its
# four-character subcategories, adding digits or letters below them: their codes are read as WHO
# ICD-10 and so match by category prefix (a German M32.1 or a Japanese M321 matches WHO M32.1).
# ICD-10-CM keeps its own canonical URI, since the project lists its codes separately.
# Sources: terminology/VERIFICATION.md ("ICD-10 editions").
# ICD-10-GM 2004-2020, one OID per yearly version in the DIMDI/BfArM arc 1.2.276.0.76.5.
_ICD10_GM_OID_ARCS: tuple[int, ...] = (302, 304, 311, 318, 330, 356, 384, 388, 409, 413, 417)
_ICD10_GM_OID_ARCS += (424, 430, 463, 471, 477, 486)
_ICD10_EDITIONS: Mapping[str, str] = {
    # WHO ICD-10 and its HL7 OID arc (2.16.840.1.113883.6.3.x are language/national variants).
    "urn:oid:2.16.840.1.113883.6.3": ICD10,
    "http://hl7.org/fhir/sid/icd-10-cm": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    # ICD-10-GM (Germany): HL7 Germany basis profile URI, its older DIMDI spelling, and the
    # per-year OIDs of the DIMDI/BfArM classification arc (ICD-10-GM 2004-2020).
    "http://fhir.de/CodeSystem/bfarm/icd-10-gm": ICD10,
    "http://fhir.de/CodeSystem/dimdi/icd-10-gm": ICD10,
    **{f"urn:oid:1.2.276.0.76.5.{arc}": ICD10 for arc in _ICD10_GM_OID_ARCS},
    # ICD-10-CA (Canada, CIHI): HL7 terminology URI and OID.
    "http://hl7.org/fhir/sid/icd-10-ca": ICD10,
    "urn:oid:2.16.840.1.113883.6.94": ICD10,
    # Japan: MHLW ICD-10 (2013) and the JP Core ICD-10 CodeSystem.
    "http://www.mhlw.go.jp/toukei/sippei/2013/ICD10-JP": ICD10,
    "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full": ICD10,
}
# Any other system URI or OID that names an ICD-10 edition (ICD-10-AM, the Chinese national
# clinical edition, a hospital's own "icd10" URI, ...). Procedure classifications (ICD-10-PCS)
# and ICD-O are not diagnoses (http://www.cms.gov/Medicare/Coding/ICD10 is ICD-10-PCS); ICD-10-CM
# spellings keep their own canonical URI.
_ICD10_NAMED = re.compile(r"icd[-_ ]?10(?![0-9])", re.IGNORECASE)
_NOT_ICD10_DIAGNOSES = re.compile(
    r"pcs|icd[-_ ]?o\b|procedure|\bachi\b|\bops\b|cms\.gov/medicare/coding/icd10", re.IGNORECASE
)
_ICD10CM_NAMED = re.compile(r"icd[-_ ]?10[-_ ]?cm(?![a-z])", re.IGNORECASE)
_ICD10_OID_ARC = "urn:oid:2.16.840.1.113883.6.3."
# Marks written after an ICD-10 code: dagger and asterisk (etiology/manifestation: M32.1†,
# M32.1+, N08.5*), the ICD-10-GM secondary-code mark "!" and the Diagnosesicherheit letters are
# not part of the code (the letters come in an extension, handled with the Condition).
_ICD_MARKS = "†‡+*!#"

Code = tuple[str, str]  # (system, code)

# Designation use marking a ValueSet entry's ingredient name(s), matched in RxNorm product names.
INGREDIENT_NAME_USE = "ingredient-name"
# On an ingredient-name designation of a class entry (ATC J01): the ingredient the name names.
EXT_INGREDIENT_NAME_OF = f"{BASE}/StructureDefinition/ingredient-name-of"
# Letters of the scripts drug names come in (Latin with accents, Greek, Cyrillic, kana, CJK,
# Hangul). A display or text with none of them (a bare number, punctuation) names no drug. The
# same class is in cql/NCT06010472Common.cql ("Has Letter"): keep both to the regex syntax they
# share.
LETTER = "[A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]"
_LETTER = re.compile(LETTER)
# Characters that may not touch a Latin name (so that it matches as a whole word): Latin letters
# (after accents are folded), digits, Greek and Cyrillic. CJK characters may: "美罗华Rituximab".
_LATIN_EDGE = "0-9A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"
_CJK = re.compile("[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")
# Product names remembered per ValueSet (a long-running service sees an open-ended set of them).
_MAX_CACHED_DISPLAYS = 4096


# Spellings already normalised (aliases first); grows with the systems records bring, up to a bound.
_NORMALISED: dict[str, str] = dict(_SYSTEM_ALIASES)
_MAX_NORMALISED = 4096


def fold(text: str) -> str:
    """Text made ready for name matching: compatibility forms and accents folded, lower case,
    runs of whitespace as one space ("Méthotrexate" -> "methotrexate", full-width letters too)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.casefold().split())


def _name_key(name: str) -> str:
    """A name as a lookup key: folded, words separated by one space (a hyphen counts as one)."""
    return " ".join(re.split(r"[\s\-]+", fold(name))).strip()


def has_letter(text: object) -> bool:
    """Whether a display or text could name a drug: it holds a letter (see :data:`LETTER`)."""
    return type(text) is str and _LETTER.search(text) is not None


_WORD = re.compile(f"[{_LATIN_EDGE}]+")


@dataclass(frozen=True)
class NameIndex:
    """Finds names in a label: Latin names as whole words (a dictionary of word sequences, so a
    long list costs no more than a short one), names with Chinese or Japanese characters as
    substrings. The leftmost name wins, and at one place the longest (泼尼松龙 before 泼尼松,
    "rituximab-abbs" before "rituximab")."""

    words: Mapping[tuple[str, ...], str]  # name as folded words -> its key
    longest: int  # most words in one Latin name
    cjk: tuple[str, ...]  # CJK names (folded), longest first

    @classmethod
    def of(cls, keys: Iterable[str]) -> NameIndex:
        """The index of these name keys (:func:`_name_key` forms)."""
        words: dict[tuple[str, ...], str] = {}
        cjk: list[str] = []
        for key in keys:
            if _CJK.search(key):
                cjk.append(key)
            elif parts := tuple(_WORD.findall(key)):
                words.setdefault(parts, key)
        longest = max((len(w) for w in words), default=0)
        return cls(words, longest, tuple(sorted(set(cjk), key=lambda n: (-len(n), n))))

    def find(self, folded: str) -> str | None:
        """The key of the leftmost (then longest) name in a folded label, else None."""
        best: tuple[int, int, str] | None = None  # (position, -length, key)
        if self.cjk and _CJK.search(folded):
            for name in self.cjk:
                at = folded.find(name)
                if at >= 0 and (best is None or (at, -len(name)) < best[:2]):
                    best = (at, -len(name), name)
        if self.words:
            tokens = list(_WORD.finditer(folded))
            for i, token in enumerate(tokens):
                if best is not None and token.start() >= best[0]:
                    break
                for n in range(min(self.longest, len(tokens) - i), 0, -1):
                    key = self.words.get(tuple(t.group(0) for t in tokens[i : i + n]))
                    if key is not None:
                        return key
        return best[2] if best is not None else None


def normalise_system(system: object) -> str:
    """Return the canonical FHIR URI for a code system spelling ('' when absent or not text).

    Every ICD-10 edition other than ICD-10-CM reads as WHO ICD-10 (see ``_ICD10_EDITIONS``).
    """
    if not system or type(system) is not str:
        return ""
    known = _NORMALISED.get(system)  # one dict lookup for every spelling seen before
    if known is None:
        known = _other_system(system)
        if len(_NORMALISED) < _MAX_NORMALISED:  # records may bring open-ended local systems
            _NORMALISED[system] = known
    return known


def _other_system(system: str) -> str:
    """An ICD-10 edition's canonical URI for a spelling not in the alias table, else itself."""
    edition = _ICD10_EDITIONS.get(system) or _ICD10_EDITIONS.get(system.rstrip("/"))
    if edition is not None:
        return edition
    if system.startswith(_ICD10_OID_ARC):
        return ICD10
    if _ICD10_NAMED.search(system) and not _NOT_ICD10_DIAGNOSES.search(system):
        return ICD10CM if _ICD10CM_NAMED.search(system) else ICD10
    return system


def icd10_code_forms(text: str) -> list[str]:
    """The ICD-10 codes written in a code string, without dagger/asterisk or edition marks.

    ``M32.1†`` and ``M32.1+`` give ``M32.1``; ``M32.1† N08.5*`` gives both codes (a dagger code
    and its manifestation code written together); a plain code gives itself.
    """
    found = []
    for token in text.replace("†", "† ").split():
        cleaned = token.strip(_ICD_MARKS + "-").rstrip(".").upper()
        if cleaned and cleaned not in found:
            found.append(cleaned)
    return found


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
    An ICD-10 code written without its dot also gives its dotted form (``D090`` gives ``D09.0``,
    ``D09`` ...), so it matches a ValueSet that lists the code itself, not only its parents.
    A code that is not text (see :func:`code_text`) has no keys.
    """
    # The usual case (a string) inline: this runs for every coding of every resource.
    text = code.strip() if type(code) is str else code_text(code)
    if not text:
        return []
    sys = normalise_system(system)
    keys = [(sys, text)]
    if sys in PREFIX_SYSTEMS:
        forms = [text.upper()] if sys == ATC else icd10_code_forms(text)
        for form in forms:
            _add_prefix_keys(keys, sys, form)
    return keys


# lookup_keys of each (system, code) pair met while indexing records: a patient's resources repeat
# a few dozen codes thousands of times. Bounded: emptied when full (open-ended local codes).
_KEYS_OF: dict[tuple[str | None, str], tuple[Code, ...]] = {}
_MAX_CACHED_KEYS = 65536


def record_code_keys(system: object, code: object) -> tuple[Code, ...]:
    """:func:`lookup_keys` as a tuple, remembered for text codes (the record index's hot path)."""
    if type(code) is not str or not (system is None or type(system) is str):
        return tuple(lookup_keys(system, code))
    pair = (system, code)
    keys = _KEYS_OF.get(pair)
    if keys is None:
        keys = tuple(lookup_keys(system, code))
        if len(_KEYS_OF) >= _MAX_CACHED_KEYS:
            _KEYS_OF.clear()
        _KEYS_OF[pair] = keys
    return keys


def _add_prefix_keys(keys: list[Code], sys: str, text: str) -> None:
    """Append a prefix-system code (if new) and all its ancestors to ``keys``."""
    if (sys, text) not in keys:
        keys.append((sys, text))
    bare = text.replace(".", "")
    if sys != ATC and len(bare) > 3:
        dotted = f"{bare[:3]}.{bare[3:]}"
        if dotted != text:  # written without (or with a misplaced) dot
            keys.append((sys, dotted))
    for length in range(len(bare) - 1, 0, -1):
        head = bare[:length]
        if sys != ATC and length > 3:
            head = f"{head[:3]}.{head[3:]}"
        keys.append((sys, head))


def name_candidate(coding: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, display) of an RxNorm coding that may match by ingredient name, else None.

    It needs a code as well as a display: the CQL side can only add codes to an expansion.
    """
    if normalise_system(coding.get("system")) != RXNORM:
        return None
    code = code_text(coding.get("code"))
    display = coding.get("display")
    if code is None or type(display) is not str:
        return None
    return code, display


def codings(concept: object) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept (empty for None or a concept with text only)."""
    if type(concept) is dict:  # parsed JSON, the usual case: no ABC checks
        found = concept.get("coding")
        if type(found) is list:
            return [c for c in found if type(c) is dict or isinstance(c, Mapping)]
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
    # Ingredient name (any case; folded when read) -> the listed ingredient's own name
    # ("ciclosporin" -> "cyclosporine", "泼尼松" -> "prednisone").
    ingredient_names: Mapping[str, str] = field(default_factory=dict)
    _name_pattern: NameIndex | None = field(default=None, init=False, repr=False, compare=False)
    _by_display: dict[str, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    _folded: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ingredient_names:
            # Longest first, so that "rituximab-abbs" wins over "rituximab" and 泼尼松龙 over 泼尼松.
            folded = {_name_key(name): own for name, own in self.ingredient_names.items()}
            object.__setattr__(self, "_folded", folded)
            object.__setattr__(self, "_name_pattern", NameIndex.of(folded))

    def ingredient_named(self, display: object) -> str | None:
        """The listed ingredient that a name or product name names, else None (see the module
        docstring: whole Latin words in any case and accent, Chinese names anywhere)."""
        if self._name_pattern is None or type(display) is not str:
            return None
        if display in self._by_display:
            return self._by_display[display]
        found = self._name_pattern.find(fold(display))
        ingredient = self._folded.get(found) if found is not None else None
        if len(self._by_display) < _MAX_CACHED_DISPLAYS:
            self._by_display[display] = ingredient
        return ingredient

    def named_by(self, names: Iterable[object]) -> tuple[str, str] | None:
        """(the name, the listed ingredient it names) for the first of ``names`` naming one."""
        if self._name_pattern is None:
            return None
        for name in names:
            ingredient = self.ingredient_named(name)
            if ingredient is not None:
                return str(name), ingredient
        return None

    def coding_ingredient(self, coding: Mapping[str, Any]) -> str | None:
        """For an RxNorm coding that is not listed, the listed ingredient its display names.

        None for a listed coding (it matches by code), a coding of another system, or one without
        a code or a display (see :func:`name_candidate`).
        """
        if self._name_pattern is None:
            return None
        candidate = name_candidate(coding)
        return self.candidate_ingredient(*candidate) if candidate else None

    def candidate_ingredient(self, code: str, display: str) -> str | None:
        """:meth:`coding_ingredient` for a :func:`name_candidate` found beforehand."""
        if self._name_pattern is None or (RXNORM, code) in self.codes:
            return None
        return self.ingredient_named(display)

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
        """The first coding of a CodeableConcept that is a member, else None.

        A member by code comes first; else an RxNorm product named after a listed ingredient
        (see :meth:`coding_ingredient`).
        """
        found = codings(concept)
        for coding in found:
            if self.contains(coding.get("system"), coding.get("code")):
                return coding
        if self._name_pattern is not None:
            for coding in found:
                if self.coding_ingredient(coding):
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
    names: dict[str, str] = {}

    def walk(entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            if entry.get("code") and not entry.get("abstract", False):
                key = (normalise_system(entry.get("system")), str(entry["code"]))
                codes.add(key)
                if entry.get("display"):
                    displays[key] = str(entry["display"])
                # The first name is the ingredient's own; the others are its synonyms, unless a
                # name says which ingredient it names (on a class entry). Most entries have no
                # designation: not asked (the worker's fork server loads every ValueSet).
                recorded = ingredient_names(entry) if entry.get("designation") else []
                for name, own in recorded:
                    names.setdefault(name.lower(), own or recorded[0][0])
            inner = entry.get("contains")
            if inner:
                walk(inner)

    walk(resource.get("expansion", {}).get("contains", []))
    return ValueSet(
        id=str(resource.get("id", "")),
        url=str(resource.get("url", "")),
        title=str(resource.get("title") or resource.get("name") or resource.get("id", "")),
        codes=frozenset(codes),
        displays=displays,
        ingredient_names=names,
    )


def ingredient_names(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ingredient names an expansion entry records (designations with use ingredient-name),
    each with the ingredient it names when the designation says so (``ingredient-name-of``), else
    ''."""
    found: list[tuple[str, str]] = []
    for designation in entry.get("designation", []) or []:
        if not isinstance(designation, Mapping):
            continue
        use = designation.get("use")
        value = designation.get("value")
        if (
            isinstance(use, Mapping)
            and use.get("system") == CODESYSTEM_URL
            and use.get("code") == INGREDIENT_NAME_USE
            and isinstance(value, str)
            and value.split()
        ):
            of = next(
                (
                    str(ext.get("valueString"))
                    for ext in designation.get("extension", []) or []
                    if isinstance(ext, Mapping)
                    and ext.get("url") == EXT_INGREDIENT_NAME_OF
                    and isinstance(ext.get("valueString"), str)
                ),
                "",
            )
            found.append((" ".join(value.split()), of))
    return found


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
            valuesets.append(valueset_from_resource(orjson.loads(path.read_bytes())))
        except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise ConfigurationError(f"cannot read {path.name}: {exc}") from exc
    return Terminology(valuesets)
