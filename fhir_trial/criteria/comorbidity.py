"""Comorbidities: exc-immunodeficiency, exc-heart-failure, exc-cns-disease, exc-malignancy,
exc-skin-disease, exc-major-comorbidity and exc-investigator-judgement (Excl 3, 4, 5, 7-9, 10, 12, 16).

Conditions whose verificationStatus is refuted or entered-in-error are ignored everywhere. "History
of" criteria (immunodeficiency, CNS disease, malignancy) count a Condition whatever its clinical
status; "active" criteria (skin disease) need clinicalStatus active/recurrence/relapse.

- exc-immunodeficiency: immunodeficiency disorders, HIV, AIDS -> met. "Patient immunosuppressed"
  (``immunosuppressed-state``) is expected in treated lupus -> needs-review, never met: a coding
  present in both ValueSets only asks for review, but a Condition that also carries a disease coding
  outside ``immunosuppressed-state`` (HIV B20 next to "immunocompromised") is met: the disease decides.
- exc-heart-failure: the latest NYHA class finding decides (a Condition so coded, or an Observation
  whose value is one: a SNOMED CT class finding, or a LOINC answer when the Observation is a NYHA
  assessment (coded LOINC 88020-3 or naming NYHA); Observations follow the status rule: cancelled /
  entered-in-error ignored). A NYHA assessment whose class cannot be read -> needs-review.
  Class III/IV -> met; class I/II -> not-met; a latest finding that is a Condition no longer active,
  or a preliminary Observation -> needs-review; partial dates that leave unclear whether a III/IV or
  a I/II finding is the latest, or an undated III/IV finding next to a dated I/II latest one ->
  needs-review. Heart failure without a class finding -> needs-review.
- exc-cns-disease: epilepsy / seizure disorder -> met; other nervous-system disorders and
  neuropsychiatric lupus -> needs-review.
- exc-malignancy: a malignancy other than the carve-outs -> met (any clinical status: history); a
  carve-out (non-melanoma skin, cervix, superficial bladder, breast) active -> met, not active ->
  needs-review, because whether it was "cured" is for a person to say; a carve-out without
  clinicalStatus -> needs-review too (is it still active?).
- exc-skin-disease: active psoriasis, dermatomyositis, systemic sclerosis, drug-induced lupus ... -> met;
  such a Condition without clinicalStatus (and no abatement) -> needs-review, never met.
- Safety net for exc-malignancy, exc-immunodeficiency, exc-cns-disease and exc-skin-disease (for
  the last, only Conditions not recorded as inactive)
  (:mod:`fhir_trial.criteria.labels`): the shipped expansions list only the SNOMED CT descendants
  found in public code lists, so a Condition coded outside the criterion's ValueSets (or with text
  only) whose coding display or text names the disease (malignant, carcinoma, lymphoma, ...; HIV,
  immunodeficiency, ...; epilepsy) -> needs-review ("code not in the ValueSet, display suggests
  ..."), never met. Qualified mentions (benign, in situ, screening for, fear of, family history,
  ...) do not count; a personal "history of" does, as these are history criteria.
- exc-major-comorbidity and exc-investigator-judgement: always needs-review, with the active
  Conditions (for the former, those that are not lupus, coded or in words) as evidence.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_trial.criteria.context import (
    NOT_OBTAINED,
    Context,
    category_unavailable,
    condition_activity,
    condition_counts,
    condition_is_active,
    condition_onset,
    conditions_in,
    first_code,
    none_found,
    observation_counts,
    observation_time,
)
from fhir_trial.criteria.labels import (
    EPILEPSY_WORDS,
    IMMUNODEFICIENCY_WORDS,
    LUPUS_WORDS,
    MALIGNANCY_WORDS,
    NOT_SLE,
    SKIN_DISEASE_WORDS,
    condition_labels,
    first_suggesting,
    uncoded_suggestions,
)
from fhir_trial.fhirdates import DateSpan
from fhir_trial.observations import observation_status
from fhir_trial.record import NYHA_FINDINGS, Resource
from fhir_trial.report import Finding
from fhir_trial.terminology import ValueSet, codings

MAX_LISTED = 12  # how many conditions a reason names before saying "and N more"


def _ref(ctx: Context, resource: Mapping[str, Any]) -> str:
    return ctx.record.reference_to(resource)


def _status(condition: Mapping[str, Any]) -> str:
    for coding in codings(condition.get("clinicalStatus")):
        if coding.get("code"):
            return str(coding["code"])
    return "no clinical status"


def _status_and_onset(condition: Mapping[str, Any]) -> str:
    onset = condition_onset(condition)
    when = ""
    if onset is not None:
        when = (
            f", since {onset.start.isoformat()}" if onset.exact else f", since {onset.start.year}"
        )
    return f"{_status(condition)}{when}"


def _describe(condition: Mapping[str, Any]) -> str:
    return f"{first_code(condition.get('code'))} ({_status_and_onset(condition)})"


def _listing(conditions: Sequence[Mapping[str, Any]]) -> str:
    names = [_describe(c) for c in conditions[:MAX_LISTED]]
    more = len(conditions) - MAX_LISTED
    return "; ".join(names) + (f"; and {more} more" if more > 0 else "")


def _unique(conditions: Sequence[Resource]) -> list[Resource]:
    return list({id(c): c for c in conditions}.values())


def _suggestion_text(found: Sequence[tuple[Resource, str]], what: str) -> str:
    names = "; ".join(f"{label!r} ({_status_and_onset(c)})" for c, label in found[:MAX_LISTED])
    more = len(found) - MAX_LISTED
    return (
        f"code not in the ValueSet, display suggests {what}: {names}"
        + (f"; and {more} more" if more > 0 else "")
        + " (the shipped expansion lists only verified codes; a person must check the diagnosis)"
    )


# ----------------------------------------------------------------------------- exc-immunodeficiency
def immunodeficiency(ctx: Context) -> Finding:
    """exc-immunodeficiency: congenital or acquired immunodeficiency disease."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    suppressed_vs = ctx.valueset("immunosuppressed-state")
    disease_vs = ctx.valueset("immunodeficiency")
    suppressed = conditions_in(ctx, "immunosuppressed-state")
    # A coding in both ValueSets only asks for review; any other disease coding decides.
    disease = [
        c
        for c in conditions_in(ctx, "immunodeficiency")
        if _has_coding_in_only(c, disease_vs, suppressed_vs)
    ]
    if disease:
        return Finding(
            "met",
            f"immunodeficiency disease: {_listing(disease)}",
            tuple(_ref(ctx, c) for c in disease),
        )
    reasons: list[str] = []
    evidence: list[Resource] = []
    if suppressed:
        reasons.append(
            f"recorded as immunosuppressed ({_listing(suppressed)}): expected under lupus "
            "treatment and not itself an immunodeficiency disease; a person must judge"
        )
        evidence += suppressed
    uncoded = uncoded_suggestions(ctx, IMMUNODEFICIENCY_WORDS, (disease_vs, suppressed_vs))
    if uncoded:
        reasons.append(_suggestion_text(uncoded, "HIV or an immunodeficiency"))
        evidence += [c for c, _ in uncoded]
    if reasons:
        return Finding("needs-review", "; ".join(reasons), tuple(_ref(ctx, c) for c in evidence))
    return none_found(ctx, "Condition", "immunodeficiency disease")


def _has_coding_in_only(condition: Mapping[str, Any], member: ValueSet, but_not: ValueSet) -> bool:
    """Whether one coding of the Condition is in ``member`` and not in ``but_not``."""
    return any(
        member.contains(c.get("system"), c.get("code"))
        and not but_not.contains(c.get("system"), c.get("code"))
        for c in codings(condition.get("code"))
    )


# ----------------------------------------------------------------------------- exc-heart-failure
NyhaFinding = tuple[DateSpan | None, str, Resource]


def _span_text(span: DateSpan | None) -> str:
    """A finding's date for reasons; a partial date shows the days it may mean."""
    if span is None:
        return "undated"
    if span.exact:
        return span.start.isoformat()
    return f"dated between {span.start.isoformat()} and {span.end.isoformat()}"


UnreadNyha = tuple[DateSpan | None, Resource]
_NYHA_WORDS = re.compile(r"\bnyha\b|new york heart association", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _label_names_nyha(label: str) -> bool:
    # Cached: every Observation of a chart is asked, and the same few labels recur.
    return _NYHA_WORDS.search(label) is not None


def _may_name_nyha(label: str) -> bool:
    """False for a label that cannot name NYHA: both phrases of _NYHA_WORDS hold a "y", and
    the only characters re.IGNORECASE matches with "y" are "y" and "Y" (tests check it over
    all of Unicode). Two character searches cost less than hashing a fresh label for the cache,
    and most result names (Hemoglobin, Creatinine, ...) hold no "y"."""
    return "y" in label or "Y" in label


def _names_nyha(observation: Mapping[str, Any]) -> bool:
    """Whether an Observation's code names NYHA in its text or a display."""
    code = observation.get("code")
    if type(code) is dict:  # plain JSON, the usual case: no Mapping checks or generators
        text = code.get("text")
        # _may_name_nyha(label) written out below: a call per label costs more than its test.
        if type(text) is str and ("y" in text or "Y" in text) and _label_names_nyha(text):
            return True
        found = code.get("coding")
        if type(found) is list:
            for coding in found:
                if type(coding) is not dict:
                    break  # damaged: the careful path below
                display = coding.get("display")
                # A display equal to the text (the usual coding) was answered just above.
                if (
                    type(display) is str
                    and display != text
                    and ("y" in display or "Y" in display)
                    and _label_names_nyha(display)
                ):
                    return True
            else:
                return False
    if not isinstance(code, Mapping):
        return False
    labels = [code.get("text")] + [c.get("display") for c in codings(code)]
    return any(isinstance(label, str) and _label_names_nyha(label) for label in labels)


def _nyha_candidates(
    results: list[Resource], coded_assessments: set[int], labels: set[Any] | None = None
) -> list[Resource]:
    """The results :func:`heart_failure` must look at, in record order: those with a
    valueCodeableConcept, the coded NYHA assessments, and those naming NYHA in words.

    ``labels``: all the labels of ``results``, as PatientRecord.observation_labels gives them
    (None: not known, or a result whose shape is not plain; then each result is read).

    Why: a chart holds hundreds of results and almost none of them is either; sifting them in
    one comprehension costs a fraction of the full loop body per result. Why the same: for any
    other result both branches of that loop are false (no value, not an assessment), so it
    adds nothing to the findings (tests/test_eval_fast_paths.py runs the loop on all results).
    """
    if not coded_assessments:
        if labels is not None:
            # What _valued_unless_named answers, its labels already gathered (when one names
            # NYHA it answers None: the results naming it are found below).
            if not any(map(_label_may_name_nyha, labels)):
                return [o for o in results if o.get("valueCodeableConcept")]
        else:
            found = _valued_unless_named(results)
            if found is not None:
                return found
    return [
        o
        for o in results
        if o.get("valueCodeableConcept") or id(o) in coded_assessments or _names_nyha(o)
    ]


def _valued_unless_named(results: list[Resource]) -> list[Resource] | None:
    """The results with a valueCodeableConcept, in record order, when no result's name (code
    text or a coding display) names NYHA; None when one may, or when a result is not plain JSON
    (then :func:`_nyha_candidates` reads each one).

    Why: a chart's hundreds of results carry a dozen distinct names (Hemoglobin, Body
    weight, ...), and each distinct one is asked once; the results are walked once, each read
    whole while it is at hand (the results were just parsed: several passes over them, each
    reading one element, cost more than one). Why the same: :func:`_names_nyha` is true exactly
    when one of its result's labels names NYHA, and these are all the labels of all the results.
    Only plain dicts are read (results, codes, codings: a dict subclass may answer get()
    otherwise; codings that are not a list of dicts, or a label that is not hashable, give
    None): any other shape takes the rule.
    """
    labels: set[Any] = set()
    add = labels.add
    valued: list[Resource] = []
    try:
        for result in results:
            if type(result) is not dict:
                return None
            code = result.get("code")
            if type(code) is not dict:
                return None  # absent or damaged codes: the rule reads them
            add(code.get("text"))
            for coding in code.get("coding", ()):
                if type(coding) is not dict:
                    return None
                add(coding.get("display"))
            if result.get("valueCodeableConcept"):
                valued.append(result)
    except TypeError:  # a coding list that is no list, a label that cannot be hashed
        return None
    if any(map(_label_may_name_nyha, labels)):
        return None
    return valued


def _label_may_name_nyha(label: Any) -> bool:
    """Whether one label (code.text or a display, as written) names NYHA."""
    # _may_name_nyha written out (see _names_nyha), then the cached pattern.
    return isinstance(label, str) and ("y" in label or "Y" in label) and _label_names_nyha(label)


@dataclass(frozen=True)
class _NyhaClasses:
    """The values meaning NYHA classes of one severity: SNOMED CT class findings, which say what
    they are anywhere, and LOINC answers, which count only as the value of a NYHA assessment
    (LOINC's answer "Class III" is shared by the answer lists of other scales)."""

    findings: ValueSet
    answers: ValueSet

    def matches(self, concept: Mapping[str, Any] | None) -> bool:
        """Whether a value (or a Condition code) is a class of this severity, in either form."""
        return self.findings.matches(concept) or self.answers.matches(concept)


def _unread_value(observation: Mapping[str, Any]) -> str:
    """The value of a NYHA assessment whose class the project cannot read, as written."""
    concept = observation.get("valueCodeableConcept")
    if isinstance(concept, Mapping):
        for coding in codings(concept):
            label = coding.get("display") or coding.get("code")
            if label:
                return repr(str(label))
        if concept.get("text"):
            return repr(str(concept["text"]))
    text = observation.get("valueString")
    return repr(text) if isinstance(text, str) else "no value"


def _unread_listing(unread: Sequence[UnreadNyha]) -> str:
    return ", ".join(f"{_unread_value(u[1])} ({_span_text(u[0])})" for u in unread)


def _key_start(finding: NyhaFinding) -> dt.date:
    """A finding's earliest possible day (undated: the oldest possible)."""
    return finding[0].start if finding[0] is not None else dt.date.min


def _latest_nyha(
    ctx: Context,
    findings: Sequence[NyhaFinding],
    milder: _NyhaClasses,
    unread: Sequence[UnreadNyha] = (),
) -> Finding:
    """The latest NYHA class finding decides; partial dates that leave it unclear need review.

    The latest is the finding whose date starts last (undated ones count as oldest); another
    finding of the other severity whose date may be as late (a partial date reaching past the
    latest one's start) makes the order unclear -> needs-review, as for latest lab results. A
    dated latest finding beside an undated one of the other severity -> needs-review too.
    """

    def concept(finding: NyhaFinding) -> Any:
        return finding[2].get("code" if finding[1] == "Condition" else "valueCodeableConcept")

    def key(finding: NyhaFinding) -> tuple[int, int]:
        span = finding[0]
        return (span.start.toordinal(), span.end.toordinal()) if span is not None else (0, 0)

    newest = max(findings, key=key)
    when, kind, latest = newest
    day = _span_text(when)
    evidence = tuple(_ref(ctx, f[2]) for f in findings)
    is_milder = milder.matches(concept(newest))
    label = first_code(concept(newest))
    unclear = [
        f
        for f in findings
        if f[2] is not latest
        and key(f)[1] >= key(newest)[0]
        and milder.matches(concept(f)) != is_milder
    ]
    if unclear:
        others = ", ".join(f"{first_code(concept(f))} ({_span_text(f[0])})" for f in unclear)
        return Finding(
            "needs-review",
            f"the dates (same day, or partial) leave unclear which NYHA class finding is the "
            f"latest: {label} ({day}) or {others}",
            evidence,
        )
    # An undated finding sorts as the oldest, but nothing says it is older than the dated latest
    # one: a dated class I/II finding must not rule the exclusion out beside an undated III/IV,
    # nor a dated III/IV exclude the patient beside an undated I/II (it may be the improvement).
    undated_other = [
        f for f in findings if f[0] is None and milder.matches(concept(f)) != is_milder
    ]
    if when is not None and undated_other:
        names = ", ".join(
            f"{first_code(concept(f))} ({_ref(ctx, f[2])}, undated)" for f in undated_other
        )
        other_class = "III/IV" if is_milder else "I/II"
        return Finding(
            "needs-review",
            f"the latest dated NYHA class finding is {label} ({day}), but a class {other_class} "
            f"finding has no date: {names}; whether it came before or after needs a person",
            evidence,
        )
    # A NYHA assessment whose class cannot be read (text, an unknown code) that may be as late as the
    # latest coded finding may be the class that decides: a person reads it.
    later_unread = [u for u in unread if u[0] is None or u[0].end >= _key_start(newest)]
    if later_unread:
        return Finding(
            "needs-review",
            f"the latest coded NYHA class finding is {label} ({day}), but a NYHA assessment that "
            f"may be as recent cannot be read: {_unread_listing(later_unread)}",
            evidence + tuple(_ref(ctx, u[1]) for u in later_unread),
        )
    if kind == "Observation" and not observation_counts(latest):
        return Finding(
            "needs-review",
            f"latest NYHA class finding {label} ({day}) has status {latest.get('status')}, "
            "not final: only final, amended or corrected results decide",
            evidence,
        )
    if is_milder:
        return Finding(
            "not-met",
            f"latest NYHA class finding is {label} ({day}), not class III/IV",
            evidence,
        )
    if kind == "Condition" and not condition_is_active(latest):
        return Finding(
            "needs-review",
            f"latest NYHA class finding {label} ({day}) is recorded as {_status(latest)}: "
            "is the heart failure still class III/IV?",
            evidence,
        )
    verb = "recorded" if kind == "Condition" else "observed"
    return Finding("met", f"NYHA {label} {verb} {day} (latest class finding)", evidence)


def heart_failure(ctx: Context) -> Finding:
    """exc-heart-failure: latest NYHA class III/IV finding, else heart failure without a class."""
    nyha = ctx.valueset("nyha-class-iii-iv")
    milder = ctx.valueset("nyha-class-i-ii")  # a later class I/II finding supersedes III/IV
    severe_answers = _NyhaClasses(nyha, ctx.valueset("nyha-answers-iii-iv"))
    milder_answers = _NyhaClasses(milder, ctx.valueset("nyha-answers-i-ii"))
    # NYHA assessments: coded as one (LOINC 88020-3, found through the record's code index, panel
    # components included), or naming NYHA in words (read on every Observation, cached per label).
    coded_assessments = {
        id(o) for o in ctx.record.with_code("Observation", ctx.valueset("nyha-assessment"))
    }
    findings: list[tuple[DateSpan | None, str, Resource]] = []
    # NYHA assessments whose value is no class the project reads (text, another code): the class
    # may be III/IV, so they are never passed over as "no qualifying record".
    unread: list[UnreadNyha] = []
    if ctx.record.usable("Condition"):
        for valueset in (nyha, milder):
            for condition in ctx.record.with_code("Condition", valueset):
                if condition_counts(condition):
                    findings.append((condition_onset(condition), "Condition", condition))
    if ctx.record.usable("Observation"):
        # A class finding may be a component of an assessment panel: it counts as a result.
        # The record's labels spare reading every result's names (see _nyha_candidates).
        results = ctx.record.observation_results()
        labels = ctx.record.observation_labels()
        for observation in _nyha_candidates(results, coded_assessments, labels):
            value = observation.get("valueCodeableConcept")
            # Observation status rule: final/amended/corrected count, preliminary needs review,
            # anything else (cancelled, entered-in-error, registered, unknown) is ignored.
            if (
                value
                and observation_status(observation) != "ignored"  # final or preliminary
                and (nyha.matches(value) or milder.matches(value))
            ):
                findings.append((observation_time(observation), "Observation", observation))
            elif (
                (id(observation) in coded_assessments or _names_nyha(observation))
                and observation_status(observation) != "ignored"  # damaged status: not a crash
                and not (
                    isinstance(value, Mapping) and (nyha.matches(value) or milder.matches(value))
                )
            ):
                if isinstance(value, Mapping) and (
                    severe_answers.matches(value) or milder_answers.matches(value)
                ):
                    findings.append((observation_time(observation), "Observation", observation))
                else:
                    unread.append((observation_time(observation), observation))
    # A finding dated wholly after the screening date is a data error, never the latest finding.
    findings = [f for f in findings if f[0] is None or f[0].start <= ctx.as_of]
    unread = [u for u in unread if u[0] is None or u[0].start <= ctx.as_of]
    nyha_part = ctx.record.failed.get(NYHA_FINDINGS)
    if findings:
        finding = _latest_nyha(ctx, findings, milder_answers, unread)
        # A later class III/IV finding may be among the NYHA findings that were not read: the
        # NYHA search, or a whole category (Conditions or Observations) that failed to load.
        lost = [
            (f"the search for NYHA class findings failed ({nyha_part})", "Observation")
            if category == NYHA_FINDINGS
            else (f"{category} resources could not be obtained ({why})", category)
            for category in (NYHA_FINDINGS, "Condition", "Observation")
            if (why := ctx.record.failed.get(category)) is not None
        ]
        if finding.status == "not-met" and lost:
            return Finding(
                "unknown",
                f"{finding.reason}, but {'; '.join(what for what, _ in lost)}: "
                f"a later class III/IV finding may exist, {NOT_OBTAINED}",
                finding.evidence,
                missing=tuple(f"NYHA class findings ({where})" for _, where in lost),
            )
        if finding.status == "met" and lost:
            # A later class I/II finding (which supersedes III/IV) may be in the data that was
            # not read: excluding the patient would rest on data that failed to load.
            return Finding(
                "needs-review",
                f"{finding.reason}, but {'; '.join(what for what, _ in lost)}: a later class "
                "I/II finding may exist there, so a person must check before excluding",
                finding.evidence,
                missing=tuple(f"NYHA class findings ({where})" for _, where in lost),
            )
        return finding

    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    if unread:
        return Finding(
            "needs-review",
            f"a NYHA assessment whose class cannot be read (not a known NYHA class code): "
            f"{_unread_listing(unread)}; class III/IV excludes",
            tuple(_ref(ctx, u[1]) for u in unread),
        )
    failing = conditions_in(ctx, "heart-failure")
    if failing:
        return Finding(
            "needs-review",
            f"heart failure without a NYHA class finding: {_listing(failing)}; the class decides",
            tuple(_ref(ctx, c) for c in failing),
        )
    unavailable = category_unavailable(ctx, "Observation")
    if unavailable:
        return Finding(
            "unknown",
            "no heart failure Condition, but " + unavailable.reason,
            missing=unavailable.missing,
        )
    if nyha_part is not None:
        return Finding(
            "unknown",
            "no heart failure Condition, but the search for NYHA class findings (Observation) "
            f"failed ({nyha_part}), {NOT_OBTAINED}",
            missing=("NYHA class findings (Observation)",),
        )
    return Finding(
        "not-met",
        "no qualifying record (heart failure or NYHA class III/IV) in "
        f"{ctx.record.count('Condition')} retrieved Condition and "
        f"{ctx.record.count('Observation')} retrieved Observation resources",
    )


# ----------------------------------------------------------------------------- exc-cns-disease
def cns_disease(ctx: Context) -> Finding:
    """exc-cns-disease: epilepsy -> met; other CNS disease or neuropsychiatric lupus -> review."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    epilepsy = conditions_in(ctx, "epilepsy")
    if epilepsy:
        return Finding(
            "met",
            f"history of epilepsy: {_listing(epilepsy)}",
            tuple(_ref(ctx, c) for c in epilepsy),
        )
    reasons: list[str] = []
    evidence: list[Resource] = []
    other = conditions_in(ctx, "cns-disorders")
    if other:
        reasons.append(
            f"central nervous system disease other than epilepsy: {_listing(other)}; whether it "
            "excludes the patient is for the investigator"
        )
        evidence += other
    uncoded = uncoded_suggestions(
        ctx, EPILEPSY_WORDS, (ctx.valueset("epilepsy"), ctx.valueset("cns-disorders"))
    )
    if uncoded:
        reasons.append(_suggestion_text(uncoded, "epilepsy"))
        evidence += [c for c, _ in uncoded]
    if reasons:
        return Finding("needs-review", "; ".join(reasons), tuple(_ref(ctx, c) for c in evidence))
    return none_found(ctx, "Condition", "epilepsy or other CNS disease")


# ----------------------------------------------------------------------------- exc-malignancy
def malignancy(ctx: Context) -> Finding:
    """exc-malignancy: other primary malignancy; carve-outs only when still active."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    malignancy_vs = ctx.valueset("malignancy")
    carve_out_vs = ctx.valueset("malignancy-carve-outs")
    found = _unique(conditions_in(ctx, "malignancy") + conditions_in(ctx, "malignancy-carve-outs"))
    met: list[Resource] = []
    ended: list[Resource] = []
    unrecorded: list[Resource] = []
    for condition in found:
        activity = condition_activity(condition)
        if not carve_out_vs.matches(condition.get("code")) or activity == "active":
            met.append(condition)
        else:
            (unrecorded if activity == "unrecorded" else ended).append(condition)
    if met:
        return Finding(
            "met",
            f"malignancy: {_listing(met)} (any malignancy other than a cured carve-out counts; "
            "carve-outs count while active)",
            tuple(_ref(ctx, c) for c in met),
        )
    reasons: list[str] = []
    if ended:
        reasons.append(
            f"malignancy of a carve-out type no longer active: {_listing(ended)}; whether it was "
            "cured (e.g. by surgical excision) needs a person"
        )
    if unrecorded:
        reasons.append(
            f"malignancy of a carve-out type whose clinical status is not recorded: "
            f"{_listing(unrecorded)}; whether it is still active (met) or was cured needs a person"
        )
    uncoded = uncoded_suggestions(ctx, MALIGNANCY_WORDS, (malignancy_vs, carve_out_vs))
    if uncoded:
        reasons.append(_suggestion_text(uncoded, "a malignancy"))
    if reasons:
        evidence = ended + unrecorded + [c for c, _ in uncoded]
        return Finding("needs-review", "; ".join(reasons), tuple(_ref(ctx, c) for c in evidence))
    return none_found(ctx, "Condition", "malignant neoplasm")


# ----------------------------------------------------------------------------- exc-skin-disease
def skin_disease(ctx: Context) -> Finding:
    """exc-skin-disease: active skin disease that may interfere with SLE assessment."""
    unavailable = category_unavailable(ctx, "Condition")
    if unavailable:
        return unavailable
    skin_vs, drug_induced_vs = (
        ctx.valueset("skin-disease-exclusion"),
        ctx.valueset("drug-induced-lupus"),
    )
    found = _unique(
        conditions_in(ctx, "skin-disease-exclusion") + conditions_in(ctx, "drug-induced-lupus")
    )
    active = [c for c in found if condition_is_active(c)]
    if active:
        return Finding(
            "met",
            f"active skin disease that may interfere with SLE assessment: {_listing(active)}",
            tuple(_ref(ctx, c) for c in active),
        )
    reasons: list[str] = []
    evidence: list[Resource] = []
    unrecorded = [c for c in found if condition_activity(c) == "unrecorded"]
    if unrecorded:
        reasons.append(
            f"skin disease that may interfere with SLE assessment, clinical status not recorded: "
            f"{_listing(unrecorded)}; whether it is active now needs a person"
        )
        evidence += unrecorded
    # Psoriasis written only in words (or under a local code) is not absence; one recorded as no
    # longer active is as irrelevant as a coded one would be.
    uncoded = [
        (c, label)
        for c, label in uncoded_suggestions(ctx, SKIN_DISEASE_WORDS, (skin_vs, drug_induced_vs))
        if condition_activity(c) != "inactive"
    ]
    if uncoded:
        reasons.append(_suggestion_text(uncoded, "a skin disease named by the protocol"))
        evidence += [c for c, _ in uncoded]
    if reasons:
        return Finding("needs-review", "; ".join(reasons), tuple(_ref(ctx, c) for c in evidence))
    finding = none_found(
        ctx,
        "Condition",
        "active psoriasis, dermatomyositis, systemic sclerosis, drug-induced lupus or similar",
    )
    if found:
        return Finding(
            "not-met",
            f"{finding.reason}; not active: {_listing(found)}",
            tuple(_ref(ctx, c) for c in found),
        )
    return finding


# ----------------------------------------------------------------------------- judgement items
def _active_conditions(ctx: Context, exclude_lupus: bool) -> list[Resource]:
    lupus_ids: set[int] = set()
    if exclude_lupus:
        for vs_id in ("sle", "lupus-unspecified-or-cutaneous"):
            lupus_ids.update(id(c) for c in ctx.record.with_code("Condition", ctx.valueset(vs_id)))
        # Lupus written only in words is still the lupus the protocol excepts, not a comorbidity.
        lupus_ids.update(
            id(c)
            for c, labels in condition_labels(ctx)
            if first_suggesting(labels, LUPUS_WORDS, NOT_SLE) is not None
        )
    return [
        c
        for c in ctx.record.resources("Condition")
        if condition_counts(c) and condition_activity(c) != "inactive" and id(c) not in lupus_ids
    ]


def _judgement(ctx: Context, what: str, exclude_lupus: bool) -> Finding:
    if not ctx.record.usable("Condition"):
        why = ctx.record.failed.get("Condition", "not requested")
        return Finding(
            "needs-review",
            f"{what}; the Condition list could not be obtained ({why}), so no conditions are listed",
            missing=("Condition resources (the problem list) to support the review",),
        )
    active = _active_conditions(ctx, exclude_lupus)
    other = " other than lupus" if exclude_lupus else ""
    if not active:
        return Finding("needs-review", f"{what}; no active conditions{other} recorded")
    noun = "condition" if len(active) == 1 else "conditions"
    return Finding(
        "needs-review",
        f"{what}; {len(active)} active {noun}{other} to consider: {_listing(active)}",
        tuple(_ref(ctx, c) for c in active),
    )


def major_comorbidity(ctx: Context) -> Finding:
    """exc-major-comorbidity: always needs-review; active non-lupus Conditions as evidence."""
    return _judgement(
        ctx,
        "whether a comorbidity would prevent administration of KN5501 is for the investigator",
        exclude_lupus=True,
    )


def investigator_judgement(ctx: Context) -> Finding:
    """exc-investigator-judgement: always needs-review; active Conditions as evidence."""
    return _judgement(
        ctx,
        "any situation that may increase the risk or interfere with the trial is for the "
        "investigator to judge",
        exclude_lupus=False,
    )


CRITERIA_FUNCTIONS: dict[str, Callable[[Context], Finding]] = {
    "exc-immunodeficiency": immunodeficiency,
    "exc-heart-failure": heart_failure,
    "exc-cns-disease": cns_disease,
    "exc-malignancy": malignancy,
    "exc-skin-disease": skin_disease,
    "exc-major-comorbidity": major_comorbidity,
    "exc-investigator-judgement": investigator_judgement,
}
