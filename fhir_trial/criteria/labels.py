"""Display safety net: Conditions whose words name a disease the screening cannot read as a code.

The shipped expansions list only the codes verified in public sources (no terminology server), and
some records carry no code at all (``code.text`` only) or a local code. A Condition coded in none
of a criterion's ValueSets whose coding display or code text names the disease is therefore never
read as absence: the criteria that use this net (exc-malignancy, exc-immunodeficiency,
exc-cns-disease, and exc-skin-disease for Conditions that may be active) send it to needs-review
("code not in the ValueSet, display suggests ..."), never to met. Qualified mentions (benign, in situ, screening for, fear of, family history, negative,
...) do not count; a personal "history of" does, as these are history criteria. inc-sle-diagnosis
uses it the other way round: lupus recorded only in words is needs-review, not the not-met of
absence rule 3 (its own qualifiers also leave out drug-induced lupus), and exc-major-comorbidity
does not list such a Condition among the conditions "other than lupus".

Patterns run on the lowercased label with runs of whitespace collapsed (:func:`label_text`); no
leading word boundary where a prefix is common (adenocarcinoma, osteosarcoma).
The CQL libraries (cql/NCT06010472Common.cql "Label Suggests", the words in the area libraries) use
the same patterns, so keep them to the regex syntax Python and JavaScript share.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fhir_trial.criteria.context import Context, condition_counts
from fhir_trial.record import Resource
from fhir_trial.terminology import ValueSet, codings

MALIGNANCY_WORDS = (
    r"(\bmalignan|carcinoma|lymphoma|leuka?emi|melanoma|sarcoma|myeloma|\bcancer|\bneoplasm"
    r"|\bmetasta)"
)
IMMUNODEFICIENCY_WORDS = (
    r"(\bhiv\b|human immunodeficiency virus|immunodeficien|immune deficiency|agammaglobulin"
    r"|hypogammaglobulin)"
)
EPILEPSY_WORDS = r"(epilep|seizure disorder)"
# exc-skin-disease: the diseases the protocol names (psoriasis, dermatomyositis, systemic
# sclerosis, drug-induced lupus); "scleroderma" is the common name of systemic sclerosis.
SKIN_DISEASE_WORDS = (
    r"(psoria|dermatomyositis|systemic sclerosis|scleroderma|drug[- ]induced lupus)"
)
# exc-drug-allergy: the trial medications by name, generic or brand (Cytoxan/Endoxan,
# Fludara, Gazyva), as free-text allergy entries and local allergen codes name them, in English,
# German (Cyclophosphamid, Fludarabin), Spanish (ciclofosfamida) and Chinese (环磷酰胺, 氟达拉滨,
# 奥妥珠单抗, brand 佳罗华; no word boundaries in Chinese). Every name terminology/drug-names.json
# gives these three drugs must match (tests/test_drug_names.py checks it).
TRIAL_DRUG_WORDS = (
    r"(\b(cyclophosphamid|cytoxan|endoxan|ciclofosfamida|fludara|obinutuzumab|gazyva)"
    r"|环磷酰胺|氟达拉滨|奥妥珠单抗|佳罗华)"
)
# Mentions that do not state the disease in the patient (a neoplasm of uncertain or unspecified
# behaviour is not a malignancy: ICD-10 D37-D48).
NOT_A_DIAGNOSIS = (
    r"\b(in situ|benign|family history|screening|fear of|risk of|at risk|exposure to|exposed to"
    r"|contact with|prophylaxis|pre-exposure|negative|ruled out|rule out|no evidence|not detected"
    r"|premalignant|pre-malignant|non-malignant|nonmalignant|non-epileptic|nonepileptic"
    r"|uncertain behaviou?r|unspecified behaviou?r)\b"
)
# Lupus for inc-sle-diagnosis. "Lupus" followed by anticoagulant or inhibitor (a laboratory
# finding of antiphospholipid antibodies), pernio (sarcoidosis), vulgaris (cutaneous tuberculosis)
# or "-like" names no lupus erythematosus; another "lupus" in the same label still counts
# ("SLE with lupus anticoagulant"). "SLE" is the usual abbreviation.
LUPUS_WORDS = r"(\blupus\b(?![- ](anticoagulant|inhibitor|pernio|vulgaris|like\b))|\bsle\b)"
# Drug-induced lupus is not SLE (it is an exclusion, exc-skin-disease): a label naming it does not
# suggest the target diagnosis, any more than the qualified mentions above.
NOT_SLE = r"(" + NOT_A_DIAGNOSIS + r"|\bdrug[- ]induced\b)"


def label_text(label: str) -> str:
    """A coding display or code text made ready for the safety-net patterns.

    "AIDS" is spelt out before lowercasing (lowercase "aids" is also hearing or walking aids), and
    "triple-negative" (a breast cancer type) loses the "negative" that otherwise qualifies a mention.
    """
    text = re.sub(r"\bAIDS\b", "acquired immunodeficiency syndrome", label).lower()
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"triple[- ]negative", "triple", text)


def naming_label(concept: Any, words: str, qualifiers: str = NOT_A_DIAGNOSIS) -> str | None:
    """The first coding display or text of a CodeableConcept that names ``words`` (unqualified)."""
    return first_suggesting(concept_labels(concept), words, qualifiers)


def concept_labels(concept: Any) -> tuple[str, ...]:
    """The labels :func:`naming_label` reads, in its order (coding displays, then the text),
    each text once: whatever the words, the first label naming them is the same."""
    labels = [c.get("display") for c in codings(concept)]
    if type(concept) is dict or isinstance(concept, Mapping):  # type() first: no ABC call
        labels.append(concept.get("text"))
    return tuple(dict.fromkeys(label for label in labels if isinstance(label, str)))


def first_suggesting(
    labels: Sequence[str], words: str, qualifiers: str = NOT_A_DIAGNOSIS
) -> str | None:
    """The first of ``labels`` that names ``words`` without a qualifier, else None."""
    for label in labels:
        if label_suggests(label, words, qualifiers):
            return label
    return None


def condition_labels(ctx: Context) -> list[tuple[Resource, tuple[str, ...]]]:
    """Every Condition of the record with its :func:`concept_labels`, once per evaluation: six
    safety nets read the same Conditions' labels (do not mutate)."""
    return ctx.remember(
        "condition labels",
        lambda: [(c, concept_labels(c.get("code"))) for c in ctx.record.resources("Condition")],
    )


@functools.lru_cache(maxsize=8192)
def label_suggests(label: str, words: str, qualifiers: str = NOT_A_DIAGNOSIS) -> bool:
    """Whether one label names the disease in ``words`` without a qualifier in ``qualifiers``."""
    # Cached: the same displays recur across a registry's patients, and every Condition is
    # checked by several criteria.
    text = label_text(label)
    return bool(re.search(words, text)) and not re.search(qualifiers, text)


def uncoded_suggestions(
    ctx: Context,
    words: str,
    valuesets: Sequence[ValueSet],
    qualifiers: str = NOT_A_DIAGNOSIS,
) -> list[tuple[Resource, str]]:
    """Counting Conditions coded in none of ``valuesets`` whose label names the disease.

    Each comes with the label that names it. Refuted and entered-in-error Conditions are left out
    (they are ignored everywhere); a Condition with no coding at all (text only) is in none of the
    ValueSets, so its text is read like any display.
    """
    found = []
    for condition, labels in condition_labels(ctx):
        # The label first: most labels name no such disease.
        label = first_suggesting(labels, words, qualifiers)
        if label is None or not condition_counts(condition):
            continue
        if not any(vs.matches(condition.get("code")) for vs in valuesets):
            found.append((condition, label))
    return found
