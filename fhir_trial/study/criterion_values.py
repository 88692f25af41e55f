"""What each criterion tests, in FHIR terms: the ValueSets it reads, the value and the look-back.

This table holds ValueSet ids and thresholds only, never codes: the codes are in the ValueSets, and
every threshold and window is read from :class:`fhir_trial.config.Settings` (the one place they live).
The eligibility Group turns each entry into a ``characteristic``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fhir_trial.config import Settings
from fhir_trial.study.common import JsonDict, ucum_quantity

ValueBuilder = Callable[[Settings], tuple[str, JsonDict | bool]]


@dataclass(frozen=True)
class CriterionValue:
    """How one criterion is expressed as a Group characteristic."""

    valuesets: tuple[str, ...]
    value: ValueBuilder
    lookback_days: Callable[[Settings], int] | None = None


def _concept(text: str) -> ValueBuilder:
    return lambda _s: ("valueCodeableConcept", {"text": text})


def _attested(_s: Settings) -> tuple[str, bool]:
    return "valueBoolean", True


def _at_least(
    value: Callable[[Settings], float], code: str, unit: str | None = None
) -> ValueBuilder:
    def build(settings: Settings) -> tuple[str, JsonDict]:
        quantity = ucum_quantity(value(settings), code, unit=unit)
        return "valueQuantity", {"comparator": ">=", **quantity}

    return build


def _age_range(settings: Settings) -> tuple[str, JsonDict]:
    low = ucum_quantity(settings.min_age, "a", unit="years")
    high = ucum_quantity(settings.max_age, "a", unit="years")
    return "valueRange", {"low": low, "high": high}


CRITERION_VALUES: dict[str, CriterionValue] = {
    "inc-age": CriterionValue((), _age_range),
    "inc-consent": CriterionValue(
        ("research-consent-scope",), _concept("active research Consent naming this study")
    ),
    "inc-sle-diagnosis": CriterionValue(
        ("sle", "lupus-unspecified-or-cutaneous", "drug-induced-lupus"),
        _concept("systemic lupus erythematosus (drug-induced lupus subtracted)"),
    ),
    "inc-contraception": CriterionValue((), _attested),
    "inc-sledai": CriterionValue(
        ("sledai-2k-total",),
        _at_least(lambda s: s.sledai_min_score, "{score}", "score"),
        lambda s: s.sledai_window_days,
    ),
    "inc-bilag": CriterionValue(
        ("bilag-2004-panel", "bilag-2004-organ-systems", "bilag-2004-grades"),
        _concept(">= 1 organ system with grade A or >= 2 organ systems with grade B"),
        lambda s: s.bilag_window_days,
    ),
    "inc-autoantibody": CriterionValue(
        (), _concept("inc-ana or inc-anti-dsdna or inc-anti-sm met")
    ),
    "inc-ana": CriterionValue(
        ("ana-immunofluorescence-titer", "ana-other-method", "positive-result-answers"),
        _at_least(lambda s: s.ana_min_titer, "{titer}", "titer (1:N)"),
    ),
    "inc-anti-dsdna": CriterionValue(
        (
            "anti-dsdna",
            "interpretation-above-normal",
            "interpretation-not-above-normal",
            "positive-result-answers",
        ),
        _concept("above the normal range of the reporting laboratory"),
    ),
    "inc-anti-sm": CriterionValue(
        (
            "anti-sm",
            "interpretation-above-normal",
            "interpretation-not-above-normal",
            "positive-result-answers",
        ),
        _concept("above the normal range of the reporting laboratory"),
    ),
    "inc-neutrophils": CriterionValue(
        ("neutrophils-absolute",),
        _at_least(lambda s: s.neutrophils_min_10e9_per_l, "10*9/L"),
        lambda s: s.neutrophils_window_days,
    ),
    "inc-hemoglobin": CriterionValue(
        ("hemoglobin",),
        _at_least(lambda s: s.hemoglobin_min_g_per_l, "g/L"),
        lambda s: s.hemoglobin_window_days,
    ),
    "inc-lvef": CriterionValue(
        ("lvef",), _at_least(lambda s: s.lvef_min_percent, "%"), lambda s: s.lvef_window_days
    ),
    "inc-prior-therapy": CriterionValue(
        (
            "oral-corticosteroids",
            "route-oral",
            "route-local",
            "immunosuppressants",
            "sle-biologics",
            "hydroxychloroquine",
        ),
        _at_least(lambda s: s.prior_therapy_min_days, "d", "days of overlapping exposure"),
    ),
    "exc-drug-allergy": CriterionValue(
        ("trial-medication-allergens", "anaphylaxis-reactions"),
        _concept("allergy to a trial medication, or a severe allergic reaction"),
    ),
    "exc-iv-antibiotics": CriterionValue(
        ("systemic-antibacterials", "route-intravenous", "route-local", "active-infections"),
        _concept("intravenous systemic antibacterial for an active infection"),
        lambda s: s.iv_antibiotics_window_days,
    ),
    "exc-immunodeficiency": CriterionValue(
        ("immunodeficiency", "immunosuppressed-state"),
        _concept("acquired or congenital immunodeficiency disorder"),
    ),
    "exc-heart-failure": CriterionValue(
        ("nyha-class-iii-iv", "heart-failure"), _concept("NYHA class III or IV")
    ),
    "exc-cns-disease": CriterionValue(
        ("epilepsy", "cns-disorders"), _concept("epilepsy or another CNS disease")
    ),
    "exc-severe-herpes": CriterionValue(
        ("severe-herpes",), _concept("herpetic encephalitis, ocular or disseminated herpes")
    ),
    "exc-malignancy": CriterionValue(
        ("malignancy", "malignancy-carve-outs"),
        _concept("primary malignancy other than the cured carve-outs"),
    ),
    "exc-recent-herpes-zoster": CriterionValue(
        ("herpes-varicella-infection", "antivirals-herpes"),
        _concept("herpes simplex, herpes zoster or varicella infection"),
        lambda s: s.herpes_window_days,
    ),
    "exc-major-comorbidity": CriterionValue((), _attested),
    "exc-pregnancy-lactation": CriterionValue(
        (
            "pregnancy-status",
            "pregnant-answers",
            "not-pregnant-answers",
            "pregnancy-findings",
            "hcg-tests",
            "breastfeeding-status",
            "yes-answers",
            "no-answers",
        ),
        _concept("pregnant, breastfeeding, or planning a pregnancy within six months"),
        lambda s: s.pregnancy_test_window_days,
    ),
    "exc-skin-disease": CriterionValue(
        ("skin-disease-exclusion", "drug-induced-lupus"),
        _concept("active skin disease that interferes with the SLE assessment"),
    ),
    "exc-recent-trial": CriterionValue(
        (), _concept("on study in another clinical trial"), lambda s: s.recent_trial_window_days
    ),
    "exc-b-cell-therapy": CriterionValue(
        ("b-cell-therapies",),
        _concept("B-cell targeted therapy"),
        lambda s: s.b_cell_therapy_window_days,
    ),
    "exc-abnormal-labs": CriterionValue(
        ("interpretation-critical",),
        _concept("clinically significant abnormal laboratory result"),
        lambda s: s.abnormal_labs_window_days,
    ),
    "exc-investigator-judgement": CriterionValue((), _attested),
}
