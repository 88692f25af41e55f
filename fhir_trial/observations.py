"""Reading Observation values the way the criteria need them, shared by labs, scores and serology.

Everything here works on plain FHIR JSON dicts and takes the ValueSets it needs as arguments (no
ValueSet loading, no copies): it sits on the evaluator's hot path.

- status: final/amended/corrected count, preliminary is kept aside (a person reviews it), the rest
  (registered, cancelled, entered-in-error, unknown) is ignored;
- time: effective[x], else issued, as a :class:`~fhir_trial.fhirdates.DateSpan` (partial dates stay
  intervals) and :func:`place_in_window` says inside / outside / ambiguous;
- values: :func:`quantity_of` (value, comparator, unit), :func:`read_titer` (``1:160``, ``1/160``,
  ``160``, ``>=1:160``, valueRatio, valueQuantity ``{titer}``), :func:`above_normal` (interpretation
  codes, coded positive answers, the result's own ``referenceRange.high``);
- :func:`meets_at_least` compares a value carrying a comparator (``<0.5``) with a threshold and
  answers True, False or None (cannot tell).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from fhir_trial.fhirdates import DateSpan, day_span, parse_span
from fhir_trial.record import COMPONENT_OF
from fhir_trial.terminology import UCUM, ValueSet, codings, normalise_system

__all__ = [
    "Dated",
    "Quantity",
    "Reading",
    "Resource",
    "Titer",
    "WindowSplit",
    "above_normal",
    "coded_value",
    "date_text",
    "describe_quantity",
    "interpretation_in",
    "interpretation_labels",
    "interpretations",
    "latest",
    "meets_at_least",
    "observation_status",
    "observation_time",
    "observed_on",
    "parse_number",
    "parse_titer",
    "place_in_window",
    "quantity_of",
    "read_titer",
    "reference_high",
    "split_by_window",
    "split_keeping_latest_before",
    "unrecognised_interpretations",
    "value_beside_absent_reason",
]

Resource = Mapping[str, Any]
Comparator = Literal["", "<", "<=", ">", ">="]
StatusClass = Literal["final", "preliminary", "ignored"]
Outcome = Literal["positive", "negative", "unreadable"]
Placement = Literal["inside", "before", "after", "ambiguous", "undated"]

_FINAL = frozenset({"final", "amended", "corrected"})
# observation_status of a text status, as one lookup ("ignored" for any other text).
_STATUS_CLASS: Mapping[str, StatusClass] = {
    **dict.fromkeys(_FINAL, "final"),
    "preliminary": "preliminary",
}
_COMPARATORS: Mapping[str, Comparator] = {
    "": "",
    "<": "<",
    "<=": "<=",
    "≤": "<=",
    "=<": "<=",
    ">": ">",
    ">=": ">=",
    "≥": ">=",
    "=>": ">=",
    "=": "",
}
_TITER_UNITS = frozenset({"{titer}", "titer", "{dilution}", "{titre}", "titre"})
_NUMBER = re.compile(r"^\s*(?P<cmp><=|>=|=<|=>|≤|≥|<|>|=)?\s*(?P<num>[-+]?\d+(?:\.\d+)?)\s*$")
_TITER = re.compile(
    r"^\s*(?P<cmp><=|>=|=<|=>|≤|≥|<|>|=)?\s*(?:1\s*[:/]\s*)?(?P<dil>\d+(?:\.\d+)?)"
    r"(?P<rest>\s*$|[\s,;(]+[A-Za-z(].*$)"
)
# An ICAP pattern code ("AC-4", "AC-4,5") may follow the titer; any other number there may be a
# second titer ("1:40 homogeneous, 1:640 speckled"), and the ANA titer is not simply the first one.
_ICAP_CODE = re.compile(r"AC-?\d+(?:\s*[,/]\s*\d+)*", re.IGNORECASE)


# --------------------------------------------------------------------------- status and time
def observation_status(observation: Resource) -> StatusClass:
    """``final`` for final/amended/corrected, ``preliminary``, else ``ignored``."""
    status = observation.get("status")
    if not isinstance(status, str):
        return "ignored"
    if status in _FINAL:
        return "final"
    if status == "preliminary":
        return "preliminary"
    return "ignored"


def observation_time(observation: Resource) -> DateSpan | None:
    """effective[x] (dateTime, instant, Period start), else issued; None when there is none."""
    text = _time_text(observation)
    return parse_span(text) if text is not None else None  # cached per day (fhirdates)


def _time_text(observation: Resource) -> str | None:
    period = observation.get("effectivePeriod")
    value = (
        observation.get("effectiveDateTime")
        or observation.get("effectiveInstant")
        or (period.get("start") if isinstance(period, Mapping) else None)
        or observation.get("issued")
    )
    return value if isinstance(value, str) else None


def date_text(observation: Resource) -> str:
    """The result's date as written (day precision, or the partial date itself), for reasons."""
    text = _time_text(observation)
    if not text:
        return "an unknown date"
    return text[:10]


def observed_on(observation: Resource) -> str:
    """:func:`date_text`, naming the parent when the result is a component of another Observation.

    ``2026-11-10 (a component of Observation/cbc-1)``: the coordinator finds the value inside
    the panel it was reported in, which is also what the evidence lists.
    """
    parent = observation.get(COMPONENT_OF)
    day = date_text(observation)
    return f"{day} (a component of {parent})" if isinstance(parent, str) else day


def place_in_window(span: DateSpan | None, start: dt.date, end: dt.date) -> Placement:
    """Where a (possibly partial) date lies against an inclusive window ``start..end``.

    ``inside``/``before``/``after`` only when the whole span is on one side; a span crossing an
    edge is ``ambiguous``; no date is ``undated``.
    """
    if span is None:
        return "undated"
    if span.start >= start and span.end <= end:
        return "inside"
    if span.end < start:
        return "before"
    if span.start > end:
        return "after"
    return "ambiguous"


# tuple.__new__(Dated, (resource, span, status)) is what Dated(resource, span, status) returns
# (a NamedTuple's __new__ does nothing else), without the Python-level call in between.
_new_tuple = tuple.__new__


class Dated(NamedTuple):
    """An Observation with its time span and status class, ready for window decisions.

    A named tuple: one is made for every result a window criterion reads.
    """

    resource: Resource
    span: DateSpan | None
    status: StatusClass

    @property
    def preliminary(self) -> bool:
        """Whether the result is preliminary."""
        return self.status == "preliminary"


@dataclass
class WindowSplit:
    """Observations sorted by where they fall against a window (ignored statuses dropped)."""

    inside: list[Dated]
    ambiguous: list[Dated]
    before: list[Dated]
    after: list[Dated]
    undated: list[Dated]
    ignored: list[Resource]


def split_by_window(
    observations: Iterable[Resource], start: dt.date | None, end: dt.date
) -> WindowSplit:
    """Split Observations by window; ``start=None`` means "any time up to ``end``"."""
    return _split(observations, start, end, True)


def split_keeping_latest_before(
    observations: Iterable[Resource], start: dt.date | None, end: dt.date
) -> WindowSplit:
    """:func:`split_by_window`, but ``before`` holds only the latest result dated before the
    window (the first of those starting on the latest day), or nothing: what a criterion that
    names "the latest earlier result" needs. Why: most of a chart's results lie before a
    window of weeks, and each would otherwise be kept to be compared once."""
    return _split(observations, start, end, False)


def _split(
    observations: Iterable[Resource], start: dt.date | None, end: dt.date, every_before: bool
) -> WindowSplit:
    split = WindowSplit([], [], [], [], [], [])
    lower = start or dt.date.min
    inside, ambiguous, before, after = split.inside, split.ambiguous, split.before, split.after
    # The latest result before the window so far (when not every one is kept): its fields and
    # its span's start, replaced only by a later start (max() keeps the first of equals).
    latest: tuple[Resource, DateSpan, StatusClass] | None = None
    latest_start = dt.date.min
    span: DateSpan | None
    for observation in observations:
        # observation_status and observation_time written out for the usual result (a text
        # status, an effectiveDateTime): this runs for every result of every window criterion.
        # Any other shape takes the functions themselves (test_eval_fast_paths.py compares).
        status: Any = observation.get("status")
        status = (
            _STATUS_CLASS.get(status, "ignored")
            if type(status) is str
            else observation_status(observation)
        )
        if status == "ignored":
            split.ignored.append(observation)
            continue
        when = observation.get("effectiveDateTime")
        if type(when) is str and when:
            # parse_span(when) written out for a dateTime with a time (digits around its day:
            # nothing to strip), the usual result; any other text takes parse_span.
            if (
                len(when) > 10
                and when[10] == "T"
                and "0" <= when[0] <= "9"
                and "0" <= when[9] <= "9"
            ):
                span = day_span(when[:10])
            else:
                span = parse_span(when)
        else:
            span = observation_time(observation)
        # place_in_window, written out: this runs for every result of every window criterion.
        # tuple.__new__(Dated, ...) is Dated(...) without its frame.
        if span is None:
            split.undated.append(_new_tuple(Dated, (observation, span, status)))
        elif span.start >= lower and span.end <= end:
            inside.append(_new_tuple(Dated, (observation, span, status)))
        elif span.end < lower:
            if every_before:
                before.append(_new_tuple(Dated, (observation, span, status)))
            elif latest is None or span.start > latest_start:
                latest, latest_start = (observation, span, status), span.start
        elif span.start > end:
            after.append(_new_tuple(Dated, (observation, span, status)))
        else:
            ambiguous.append(_new_tuple(Dated, (observation, span, status)))
    if latest is not None:
        before.append(_new_tuple(Dated, latest))
    return split


def latest(
    candidates: Sequence[Dated], outcome: Callable[[Dated], object]
) -> tuple[Dated | None, list[Dated]]:
    """The latest candidate, and the others that might be later and would decide differently.

    Candidates are ordered by their span's start. Another candidate whose span ends on or after the
    latest one's start could in truth be later (partial dates); if its ``outcome`` differs it is a
    conflict the caller reports as needs-review.
    """
    dated = [(c.span, c) for c in candidates if c.span is not None]
    if not dated:
        return None, []
    best_span, best = max(dated, key=lambda pair: (pair[0].start, pair[0].end))
    decided = outcome(best)
    conflicts = [
        c
        for span, c in dated
        if c is not best and span.end >= best_span.start and outcome(c) != decided
    ]
    return best, conflicts


# --------------------------------------------------------------------------- numbers
def meets_at_least(value: float, comparator: str, threshold: float) -> bool | None:
    """Whether ``<comparator> value`` is >= ``threshold``: True, False, or None (cannot tell)."""
    cmp = _COMPARATORS.get(comparator, None)
    if cmp is None:
        return None
    if cmp == "":
        return value >= threshold
    if cmp == ">=":
        return True if value >= threshold else None
    if cmp == ">":
        return True if value >= threshold else None
    if cmp == "<":
        return False if value <= threshold else None
    return False if value < threshold else None  # "<="


def _exceeds(value: float, comparator: str, limit: float) -> bool | None:
    """Whether ``<comparator> value`` is strictly above ``limit``: True, False or None."""
    cmp = _COMPARATORS.get(comparator, None)
    if cmp is None:
        return None
    if cmp == "":
        return value > limit
    if cmp == ">":
        return True if value >= limit else None
    if cmp == ">=":
        return True if value > limit else None
    return False if value <= limit else None  # "<" or "<="


def parse_number(text: object) -> tuple[float, Comparator] | None:
    """A number written as text, with an optional comparator: ``"<10"`` -> (10.0, "<")."""
    if not isinstance(text, str):
        return None
    match = _NUMBER.match(text)
    if not match:
        return None
    return float(match["num"]), _COMPARATORS[match["cmp"] or ""]


def _number_text(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True)
class Quantity:
    """A numeric result: value, comparator and the unit spellings to try (UCUM code first)."""

    value: float
    comparator: Comparator
    units: tuple[str, ...]

    @property
    def unit(self) -> str:
        """The unit as the record shows it (human-readable ``unit``, else the code)."""
        return self.units[-1] if self.units else ""


def _quantity(q: object) -> Quantity | None:
    if not isinstance(q, Mapping):
        return None
    value = q.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    comparator = _COMPARATORS.get(str(q.get("comparator") or ""))
    if comparator is None:
        return None
    units: list[str] = []
    code = q.get("code")
    if isinstance(code, str) and code and normalise_system(q.get("system")) in ("", UCUM):
        units.append(code)
    unit = q.get("unit")
    if isinstance(unit, str) and unit and unit not in units:
        units.append(unit)
    return Quantity(float(value), comparator, tuple(units))


def quantity_of(observation: Resource) -> Quantity | None:
    """valueQuantity (or valueInteger, unitless) as a :class:`Quantity`; None otherwise."""
    found = _quantity(observation.get("valueQuantity"))
    if found is not None:
        return found
    integer = observation.get("valueInteger")
    if isinstance(integer, int) and not isinstance(integer, bool):
        return Quantity(float(integer), "", ())
    return None


def describe_quantity(quantity: Quantity) -> str:
    """``"<0.5 10*9/L"`` as written in the record."""
    return f"{quantity.comparator}{_number_text(quantity.value)} {quantity.unit}".strip()


# --------------------------------------------------------------------------- codes
def interpretations(observation: Resource) -> list[Mapping[str, Any]]:
    """Observation.interpretation as a list of CodeableConcepts (malformed entries dropped)."""
    value = observation.get("interpretation")
    if type(value) is not list:  # the usual list skips the Mapping ABC check
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, list):
            return []
    return [
        c
        for c in value
        if (type(c) is dict or isinstance(c, Mapping)) and isinstance(c.get("coding", []), list)
    ]


def interpretation_in(observation: Resource, valueset: ValueSet) -> Mapping[str, Any] | None:
    """The first interpretation coding that is in the ValueSet, else None."""
    for concept in interpretations(observation):
        coding = valueset.matching_coding(concept)
        if coding is not None:
            return coding
    return None


def interpretation_labels(observation: Resource) -> list[str]:
    """The interpretation codes as written (``["H"]``), for reasons."""
    labels: list[str] = []
    for concept in interpretations(observation):
        labels.extend(_concept_labels(concept))
    return labels


def _concept_labels(concept: Mapping[str, Any]) -> list[str]:
    """An interpretation's codes as written, else its text (a text-only flag still says something)."""
    labels = [
        str(coding["code"])
        for coding in codings(concept)
        if isinstance(coding, Mapping) and coding.get("code")
    ]
    if not labels and concept.get("text"):
        labels.append(str(concept["text"]))
    return labels


def coded_value(observation: Resource) -> Mapping[str, Any] | None:
    """valueCodeableConcept, if the result is coded."""
    value = observation.get("valueCodeableConcept")
    if isinstance(value, Mapping) and isinstance(value.get("coding", []), list):
        return value
    return None


def _concept_label(concept: Mapping[str, Any]) -> str:
    for coding in codings(concept):
        label = coding.get("display") or coding.get("code")
        if label:
            return str(label)
    return str(concept.get("text") or "a coded answer")


def _range_highs(observation: Resource) -> Iterator[Quantity]:
    """The readable ``referenceRange.high`` quantities of the result, in order."""
    ranges = observation.get("referenceRange")
    for entry in ranges if isinstance(ranges, list) else []:
        if isinstance(entry, Mapping):
            high = _quantity(entry.get("high"))
            if high is not None:
                yield high


def reference_high(observation: Resource) -> tuple[float, str] | None:
    """The result's own ``referenceRange.high`` (value, unit); None when it has none."""
    high = next(_range_highs(observation), None)
    return (high.value, high.unit) if high is not None else None


def value_beside_absent_reason(observation: Resource) -> str | None:
    """Why a value sent together with a dataAbsentReason cannot be used; None otherwise.

    FHIR allows a value or a dataAbsentReason, never both (obs-6). Interfaces that send both
    often fill the value with a placeholder (0, "<1:40") while saying no result was obtained: the
    value must not decide a criterion either way.
    """
    reason = observation.get("dataAbsentReason")
    if not isinstance(reason, Mapping) or not any(k.startswith("value") for k in observation):
        return None
    labels = _concept_labels(reason) if isinstance(reason.get("coding", []), list) else []
    said = f" {labels[0]!r}" if labels else ""
    return f"a value sent together with dataAbsentReason{said} (no result was obtained)"


def _reference_highs(observation: Resource) -> set[float]:
    """Every distinct ``referenceRange.high`` value of the result."""
    return {high.value for high in _range_highs(observation)}


# --------------------------------------------------------------------------- readings
@dataclass(frozen=True)
class Reading:
    """What one result says for a criterion: positive, negative or unreadable, in words."""

    outcome: Outcome
    detail: str


def above_normal(
    observation: Resource,
    above_normal_interpretations: ValueSet,
    positive_answers: ValueSet,
    negative_answers: ValueSet | None = None,
    normal_interpretations: ValueSet | None = None,
) -> Reading:
    """Whether a result is above normal by its interpretation, coded answer or reference range.

    In order: an interpretation in ``above_normal_interpretations`` (H, HH, A, AA, POS) or a coded
    value in ``positive_answers`` -> positive; a coded value in ``negative_answers`` -> negative; a
    numeric value against the result's own
    ``referenceRange.high`` (never a fixed cut-off: assays differ) -> positive/negative; an
    interpretation in ``normal_interpretations`` (N, L, NEG, ND, NR) -> negative; anything else ->
    unreadable. A result is never negative while it carries an interpretation that is in neither
    set (IND, E, DET, ``>``, text only, a code without a system): a flag nobody can read is not
    evidence of normal (CRITERIA.md: results that cannot be read -> needs-review). Without
    ``normal_interpretations`` no interpretation reads as normal. A value beside a
    dataAbsentReason is unreadable (see :func:`value_beside_absent_reason`).
    """
    absent = value_beside_absent_reason(observation)
    if absent is not None:
        return Reading("unreadable", absent)
    reading = _above_normal(
        observation,
        above_normal_interpretations,
        positive_answers,
        negative_answers,
        normal_interpretations,
    )
    if reading.outcome != "negative":
        return reading
    unknown = unrecognised_interpretations(
        observation, above_normal_interpretations, normal_interpretations
    )
    if unknown:
        return Reading(
            "unreadable",
            f"{reading.detail}, but flagged {_flag_list(unknown)}, an interpretation not known to "
            "mean normal",
        )
    return reading


def _flag_list(labels: Sequence[str]) -> str:
    return "/".join(repr(label) for label in labels)


def unrecognised_interpretations(observation: Resource, *valuesets: ValueSet | None) -> list[str]:
    """Labels of the interpretations that are in none of ``valuesets`` (empty entries skipped)."""
    labels: list[str] = []
    for concept in interpretations(observation):
        if any(vs is not None and vs.matches(concept) for vs in valuesets):
            continue
        # Say why a familiar-looking code was not read: without its system, "H" is not a code.
        systemless = {
            str(c.get("code"))
            for c in codings(concept)
            if isinstance(c, Mapping) and c.get("code") and not c.get("system")
        }
        labels.extend(
            f"{label} (no code system)" if label in systemless else label
            for label in _concept_labels(concept)
        )
    return labels


def _above_normal(
    observation: Resource,
    above_normal_interpretations: ValueSet,
    positive_answers: ValueSet,
    negative_answers: ValueSet | None,
    normal_interpretations: ValueSet | None,
) -> Reading:
    coding = interpretation_in(observation, above_normal_interpretations)
    if coding is not None:
        return Reading("positive", f"interpretation {coding.get('code')}")
    concept = coded_value(observation)
    if concept is not None and positive_answers.matches(concept):
        return Reading("positive", f"result {_concept_label(concept)}")
    if concept is not None and negative_answers is not None and negative_answers.matches(concept):
        return Reading("negative", f"result {_concept_label(concept)}")
    number = quantity_of(observation)
    if number is None:
        parsed = parse_number(observation.get("valueString"))
        if parsed is not None:
            number = Quantity(parsed[0], parsed[1], ())
    high = reference_high(observation)
    if number is not None and high is not None:
        shown = describe_quantity(number)
        limits = _reference_highs(observation)
        if len(limits) > 1:
            # Which range is the normal one (borderline, age band, ...) cannot be told.
            listed = ", ".join(_number_text(v) for v in sorted(limits))
            return Reading(
                "unreadable",
                f"result {shown} has several reference ranges with different upper limits "
                f"({listed})",
            )
        if number.unit and high[1] and number.unit != high[1]:
            return Reading(
                "unreadable",
                f"result {shown} and its reference range ({high[1]}) use different units",
            )
        above = _exceeds(number.value, number.comparator, high[0])
        limit = f"reference range high {_number_text(high[0])}"
        if above is True:
            return Reading("positive", f"result {shown} above its {limit}")
        if above is False:
            return Reading("negative", f"result {shown} within its {limit}")
        return Reading("unreadable", f"result {shown} cannot be compared with its {limit}")
    labels = interpretation_labels(observation)
    if labels:
        unknown = unrecognised_interpretations(observation, normal_interpretations)
        if unknown:
            return Reading(
                "unreadable",
                f"interpretation {_flag_list(unknown)} is not a recognised normal or above-normal "
                "flag",
            )
        return Reading("negative", f"interpretation {'/'.join(labels)} (not above normal)")
    if concept is not None:
        return Reading(
            "unreadable", f"coded result {_concept_label(concept)!r} is not a positive answer"
        )
    if number is not None:
        return Reading(
            "unreadable",
            f"result {describe_quantity(number)} has no reference range or interpretation "
            "(no fixed cut-off is used across assays)",
        )
    text = observation.get("valueString")
    if isinstance(text, str) and text.strip():
        return Reading("unreadable", f"free-text result {text.strip()!r}")
    return Reading("unreadable", "no value")


@dataclass(frozen=True)
class Titer:
    """A dilution titer: ``1:160`` is dilution 160; a comparator keeps ``>=1:160`` honest."""

    dilution: float
    comparator: Comparator

    def __str__(self) -> str:
        return f"{self.comparator}1:{_number_text(self.dilution)}"


def parse_titer(text: object) -> Titer | None:
    """Read ``"1:160"``, ``"1/160"``, ``"160"``, ``">=1:160"``, ``"<1:40"``, ``"1:160 speckled"``."""
    if not isinstance(text, str):
        return None
    match = _TITER.match(text)
    if not match or re.search(r"\d", _ICAP_CODE.sub("", match["rest"])):
        return None
    dilution = float(match["dil"])
    if dilution < 1:  # a titer is 1:N with N >= 1
        return None
    return Titer(dilution, _COMPARATORS[match["cmp"] or ""])


def read_titer(observation: Resource) -> Titer | None:
    """The titer of a result from valueRatio, valueString, valueQuantity ``{titer}`` or valueInteger."""
    ratio = observation.get("valueRatio")
    if isinstance(ratio, Mapping):
        numerator = _quantity(ratio.get("numerator"))
        denominator = _quantity(ratio.get("denominator"))
        # 160/1 is not a titer: a dilution below 1:1 is a ratio written the wrong way round.
        if (
            numerator is not None
            and denominator is not None
            and numerator.value > 0
            and denominator.value >= numerator.value
        ):
            comparator = numerator.comparator or denominator.comparator
            return Titer(denominator.value / numerator.value, comparator)
        return None
    if "valueString" in observation:
        return parse_titer(observation.get("valueString"))
    quantity = _quantity(observation.get("valueQuantity"))
    if quantity is not None:
        if any(u.lower() in _TITER_UNITS for u in quantity.units) and quantity.value >= 1:
            return Titer(quantity.value, quantity.comparator)
        return None
    integer = observation.get("valueInteger")
    if isinstance(integer, int) and not isinstance(integer, bool) and integer >= 1:
        return Titer(float(integer), "")
    return None
