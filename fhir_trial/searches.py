"""What to ask a FHIR server for, per data category: the one definition of the service's queries.

Both ways this project reads a patient's chart use it: the REST client
(:mod:`fhir_trial.sources.fhir_client`) runs these searches itself, and the CDS Hooks service
(:mod:`fhir_trial.cds_hooks.discovery`) publishes them as prefetch templates for the EHR to run.

Data minimisation: the service asks only for what its criteria read. Observations are most of a
chart (vital signs, every lab panel ever drawn), and the criteria read a few kinds of them, so
Observations are searched by code, with the codes of the ValueSets the criteria use (taken from
:mod:`fhir_trial.terminology`, never listed here), and NYHA class findings by their value
(``value-concept``) and NYHA assessments by their code, and by their words (``code:text``) for an assessment
identified only by words (``code.text`` "NYHA class", no code). A server that refuses ``:text``
(not every server indexes code text) costs only a warning: such assessments are then not found,
a rare shape; any other failure of these searches makes the NYHA part fail, as for the others. Less protected health information leaves the EHR, and less has to be sent
and parsed. The other categories are searched whole: conditions and medications are matched
through code hierarchies (ICD-10 prefixes, ingredient vs. product codes, referenced Medications)
that a portable token search cannot express, and the rest are small.

======================  ===================  ================================================
prefetch key            resource type        filter
======================  ===================  ================================================
``patient``             ``Patient/<id>``     (a read)
``condition``           Condition            none
``observation``         Observation          ``combo-code``: serology, blood counts, LVEF,
                                             pregnancy and lactation
``observationScores``   Observation          ``combo-code``: SLEDAI-2K total, BILAG-2004 panel
                                             and organ systems (the project's own CodeSystem)
``observationNyha``     Observation          ``value-concept``: NYHA class I-IV findings
                                             (SNOMED CT) and LOINC answers
``observationNyhaParts`` Observation         ``component-value-concept``: the same, as the value
                                             of a component of an assessment panel
``observationNyha...``  Observation          ``combo-code``: NYHA assessments (LOINC 88020-3),
``...Assessment``                            whatever their value (text, another code)
``observationNyhaWords`` Observation         ``code:text``: NYHA assessments named in words
``medication...``       the four medication  none
                        resource types
``allergyIntolerance``  AllergyIntolerance   none
``researchSubject``     ResearchSubject      none (``individual=Patient/<id>``)
``consent``             Consent              none
======================  ===================  ================================================

Values inside other Observations: a criterion's result may be a component of a panel (LVEF in an
echocardiography panel, hemoglobin in a blood count), so the result searches use ``combo-code``,
the R4 search parameter that matches ``Observation.code`` or ``Observation.component.code``
(HAPI FHIR, Medplum and other servers that index the base specification's parameters support it).
A server that cannot run it is searched by ``code`` instead (see "Servers without combo-code"
below); a server that ignores it silently answers every Observation of the patient, which is more
data, never less.

URL limits: a code list is split over several searches, each query (patient, ``_count`` and
filter) at most ``Settings.max_search_query_chars`` characters long; the extra searches get keys
``observation2``, ``observation3``, ... Their results are merged (a resource found twice is kept
once) and the category is complete only when every one of its searches is: a failed one makes
it unknown. A filter is never dropped for its length: reading every Observation is not an option.
Only when the ValueSets themselves are missing (no terminology) is a category searched without a
filter: more data, never less.

Only portable search forms are used: no partial dates, no ``:in``, no ``_include``. Reference
parameters always get a type-qualified value (``patient=Patient/123``, ``individual=Patient/123``):
some servers (Medplum) do not match a bare id on a reference parameter, and every server matches
the qualified form.

Servers without ``combo-code``: :meth:`PlannedSearch.code_fallback` is the same search with
``code``; the REST client and the CDS service use it when the server refuses ``combo-code`` (HTTP
400, or a CapabilityStatement that lists Observation search parameters without it), and mark
the Observation part :data:`~fhir_trial.record.OBSERVATION_COMPONENTS` failed: values sent only
inside panels were not seen. The NYHA searches fill their own part,
:data:`~fhir_trial.record.NYHA_FINDINGS`: when they fail, only the criterion reading NYHA class
findings becomes ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import quote

from fhir_trial.config import DEFAULT_MAX_SEARCH_QUERY_CHARS
from fhir_trial.errors import ConfigurationError
from fhir_trial.record import CATEGORIES, MEDICATION_TYPES, NYHA_FINDINGS
from fhir_trial.terminology import Terminology

__all__ = [
    "MAX_PATIENT_ID_CHARS",
    "NO_WORDS_SEARCH_WARNING",
    "SEARCHES",
    "UNSUPPORTED_SEARCH_STATUSES",
    "PlannedSearch",
    "SearchSpec",
    "chunk_tokens",
    "escape_token",
    "plan_searches",
    "valueset_ids",
]

MAX_PATIENT_ID_CHARS = 64  # a FHIR id: what the patient parameter adds to a query at most
PAGE_SIZE_PARAM = "&_count=200"  # what the REST client adds to every search
# How a server says it does not support a search parameter or modifier (combo-code, code:text).
UNSUPPORTED_SEARCH_STATUSES = frozenset({400, 422, 501})


@dataclass(frozen=True)
class SearchSpec:
    """One query of a data category, before its ValueSets are expanded into codes.

    ``patient_param`` is the search parameter naming the patient (None: the Patient read).
    ``filter_param`` (``combo-code``, ``value-concept``, ...) takes the codes of ``valuesets``. ``optional``
    searches are extras whose failure the REST client only warns about (not every server supports
    ``value-concept``); the CDS Hooks service needs every key it asked for.
    """

    key: str
    category: str
    resource_type: str
    patient_param: str | None
    filter_param: str | None = None
    valuesets: tuple[str, ...] = ()
    optional: bool = False
    label: str = ""
    fills: str | None = None  # the Observation part it fills on its own (record.OBSERVATION_PARTS)
    words: tuple[str, ...] = ()  # for a ``:text`` filter: the words searched (any of them)


# How an assessment names NYHA in words (code.text or a display), as the criterion reads it
# (fhir_trial.criteria.comorbidity): searched with ``code:text``, which servers match as text
# (Medplum: case-insensitive, anywhere in the text).
NYHA_WORDS = ("nyha", "new york heart association")
NO_WORDS_SEARCH_WARNING = (
    "NYHA assessments identified only by words (no code) were not searched for: the server does "
    "not support code:text searches, or the EHR did not run that prefetch"
)


def _whole(category: str, patient_param: str = "patient") -> SearchSpec:
    return SearchSpec(category[:1].lower() + category[1:], category, category, patient_param)


SEARCHES: tuple[SearchSpec, ...] = (
    SearchSpec("patient", "Patient", "Patient", None),
    _whole("Condition"),
    SearchSpec(
        "observation",
        "Observation",
        "Observation",
        "patient",
        "combo-code",
        (
            "ana-immunofluorescence-titer",
            "ana-other-method",
            "anti-dsdna",
            "anti-sm",
            "neutrophils-absolute",
            "neutrophils-percent",
            "hemoglobin",
            "lvef",
            "pregnancy-status",
            "hcg-tests",
            "breastfeeding-status",
        ),
        label="Observation (results)",
    ),
    SearchSpec(
        "observationScores",
        "Observation",
        "Observation",
        "patient",
        "combo-code",
        ("sledai-2k-total", "bilag-2004-panel", "bilag-2004-organ-systems"),
        label="Observation (disease activity scores)",
    ),
    SearchSpec(
        "observationNyha",
        "Observation",
        "Observation",
        "patient",
        "value-concept",
        ("nyha-class-iii-iv", "nyha-class-i-ii", "nyha-answers-iii-iv", "nyha-answers-i-ii"),
        optional=True,
        label="Observation by value-concept (NYHA class)",
        fills=NYHA_FINDINGS,
    ),
    SearchSpec(
        "observationNyhaAssessment",
        "Observation",
        "Observation",
        "patient",
        "combo-code",
        ("nyha-assessment",),
        optional=True,
        label="Observation by combo-code (NYHA assessment)",
        fills=NYHA_FINDINGS,
    ),
    SearchSpec(
        "observationNyhaParts",
        "Observation",
        "Observation",
        "patient",
        "component-value-concept",
        ("nyha-class-iii-iv", "nyha-class-i-ii", "nyha-answers-iii-iv", "nyha-answers-i-ii"),
        optional=True,
        label="Observation by component-value-concept (NYHA class in a panel)",
        fills=NYHA_FINDINGS,
    ),
    SearchSpec(
        "observationNyhaWords",
        "Observation",
        "Observation",
        "patient",
        "code:text",
        optional=True,
        label="Observation by code:text (NYHA assessment named in words)",
        fills=NYHA_FINDINGS,
        words=NYHA_WORDS,
    ),
    *(_whole(mtype) for mtype in MEDICATION_TYPES),
    _whole("AllergyIntolerance"),
    _whole("ResearchSubject", "individual"),
    _whole("Consent"),
)


def escape_token(value: str) -> str:
    """FHIR search escaping of ``\\``, ``,``, ``|`` and ``$`` in one part of a token."""
    for char in ("\\", ",", "|", "$"):
        value = value.replace(char, "\\" + char)
    return value


def valueset_ids() -> list[str]:
    """Every ValueSet whose codes go into a search filter."""
    return [vid for spec in SEARCHES for vid in spec.valuesets]


@dataclass(frozen=True)
class PlannedSearch:
    """A :class:`SearchSpec` with its filter expanded (``filter_value``: ``system|code,...``)."""

    spec: SearchSpec
    filter_value: str | None = None
    label: str = ""
    part: int = 1  # which of the searches a split code list became (1: the first)

    @property
    def key(self) -> str:
        """The prefetch key: the spec's key, numbered from the second part of a split list."""
        return self.spec.key if self.part == 1 else f"{self.spec.key}{self.part}"

    @property
    def category(self) -> str:
        """The data category it fills."""
        return self.spec.category

    @property
    def resource_type(self) -> str:
        """The resource type searched (or read)."""
        return self.spec.resource_type

    @property
    def optional(self) -> bool:
        """See :class:`SearchSpec`."""
        return self.spec.optional and self.filter_value is not None

    @property
    def searches_words(self) -> bool:
        """Whether the filter is a ``:text`` search (which some servers do not support)."""
        return bool(self.spec.words) and self.filter_value is not None

    @property
    def uses_combo_code(self) -> bool:
        """Whether the filter is ``combo-code`` (which some servers do not support)."""
        return self.spec.filter_param == "combo-code" and self.filter_value is not None

    def code_fallback(self) -> PlannedSearch:
        """The same search with ``code`` instead of ``combo-code`` (no values inside panels)."""
        if not self.uses_combo_code:
            return self
        spec = replace(self.spec, filter_param="code")
        return replace(self, spec=spec, label=f"{self.label} (by code: no panel components)")

    def params(self, patient_id: str, page_size: int | None = None) -> tuple[tuple[str, str], ...]:
        """The search parameters for one patient (empty for the Patient read).

        The patient goes in type-qualified (``Patient/<id>``); ``page_size`` adds ``_count``.
        """
        if self.spec.patient_param is None:
            return ()
        params = [(self.spec.patient_param, f"Patient/{patient_id}")]
        if page_size:
            params.append(("_count", str(page_size)))
        if self.spec.filter_param and self.filter_value:
            params.append((self.spec.filter_param, self.filter_value))
        return tuple(params)

    def relative_url(self, patient_id: str, page_size: int | None = None) -> str:
        """``Patient/<id>`` or ``Type?param=value&...``; ``patient_id`` goes in unquoted.

        So ``{{context.patientId}}`` stays a usable prefetch token; callers pass FHIR ids only.
        Filter values keep ``|``, ``,``, ``:`` and ``/`` readable (as in the CDS Hooks examples).
        """
        if self.spec.patient_param is None:
            return f"{self.resource_type}/{patient_id}"
        parts = []
        for name, value in self.params(patient_id, page_size):
            shown = value if name == self.spec.patient_param else quote(value, safe="|,:/")
            parts.append(f"{name}={shown}")
        return f"{self.resource_type}?{'&'.join(parts)}"


def _tokens(terminology: Terminology, valuesets: Iterable[str]) -> list[str]:
    tokens: list[str] = []
    seen: set[str] = set()
    for valueset_id in valuesets:
        for system, code in sorted(terminology.get(valueset_id)):
            token = f"{escape_token(system)}|{escape_token(code)}" if system else escape_token(code)
            if token not in seen:
                seen.add(token)
                tokens.append(token)
    return tokens


def _encoded(value: str) -> str:
    """A filter value at its longest in a URL: fully percent-encoded, as HTTP clients send
    query parameters (``|``, ``,``, ``:`` and ``/`` take three characters each)."""
    return quote(value, safe="")


def query_overhead(spec: SearchSpec) -> int:
    """Characters of a query that are not the filter's codes: patient, ``_count``, names."""
    patient = len(spec.patient_param or "") + 1 + len("Patient/") + MAX_PATIENT_ID_CHARS
    return patient + len(PAGE_SIZE_PARAM) + 1 + len(spec.filter_param or "") + 1


def chunk_tokens(tokens: Iterable[str], budget: int) -> list[list[str]]:
    """Split tokens into comma-joined runs of at most ``budget`` URL-encoded characters.

    A single token longer than the budget still gets a run of its own (it cannot be shortened,
    and leaving it out would make the search incomplete).
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for token in tokens:
        length = len(_encoded(token))
        extra = length if not current else length + 3  # the comma, encoded
        if current and size + extra > budget:
            chunks.append(current)
            current, size, extra = [], 0, length
        current.append(token)
        size += extra
    if current:
        chunks.append(current)
    return chunks


@lru_cache(maxsize=16)
def plan_searches(
    terminology: Terminology | None, max_query_chars: int = DEFAULT_MAX_SEARCH_QUERY_CHARS
) -> tuple[PlannedSearch, ...]:
    """Every search, filters expanded, in :data:`fhir_trial.record.CATEGORIES` order.

    A filter whose codes make a query longer than ``max_query_chars`` is split over several
    searches (see the module docstring). A category with a filter whose ValueSets are not
    loaded (``terminology`` None or lacking one) becomes one unfiltered search. Cached per
    terminology object (load_terminology returns one per resources directory).
    """
    planned: dict[str, list[PlannedSearch]] = {category: [] for category in CATEGORIES}
    unfiltered: set[str] = set()
    for spec in SEARCHES:
        if spec.filter_param is None:
            planned[spec.category].append(PlannedSearch(spec, label=spec.label or spec.category))
            continue
        if spec.words:
            words = ",".join(escape_token(word) for word in spec.words)
            planned[spec.category].append(PlannedSearch(spec, words, spec.label))
            continue
        try:
            tokens = _tokens(terminology, spec.valuesets) if terminology is not None else []
        except ConfigurationError:
            tokens = []
        if not tokens:
            unfiltered.add(spec.category)
            continue
        label = spec.label or spec.category
        chunks = chunk_tokens(tokens, max(1, max_query_chars - query_overhead(spec)))
        for part, chunk in enumerate(chunks, start=1):
            shown = label if len(chunks) == 1 else f"{label}, part {part} of {len(chunks)}"
            planned[spec.category].append(PlannedSearch(spec, ",".join(chunk), shown, part))
    result: list[PlannedSearch] = []
    for category in CATEGORIES:
        searches = planned[category]
        if category in unfiltered:
            first = next(spec for spec in SEARCHES if spec.category == category)
            searches = [PlannedSearch(first, None, f"{category} (all)")]
        result.extend(searches)
    return tuple(result)
