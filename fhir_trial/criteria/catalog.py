"""The 29 criteria of NCT06010472: ids, kinds, protocol references and wording, in CRITERIA.md order.

This is text, not logic and not codes: the study resources (Group, PlanDefinition, CodeSystem) and
the evaluator both read it so the ids and order exist once.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_trial.report import Kind


@dataclass(frozen=True)
class CriterionSpec:
    """A criterion's identity and protocol wording."""

    id: str
    kind: Kind
    ref: str
    title: str
    protocol_text: str
    part_of: str | None = None


def _inc(cid: str, ref: str, title: str, text: str, part_of: str | None = None) -> CriterionSpec:
    return CriterionSpec(cid, "inclusion", ref, title, text, part_of)


def _exc(cid: str, ref: str, title: str, text: str) -> CriterionSpec:
    return CriterionSpec(cid, "exclusion", ref, title, text)


CRITERIA: tuple[CriterionSpec, ...] = (
    _inc(
        "inc-age",
        "Incl 1",
        "Age 18 to 65 years",
        "Age: >= 18 years old and <= 65 years old, male or female",
    ),
    _inc(
        "inc-consent",
        "Incl 1",
        "Signed informed consent",
        "Subjects voluntarily participate in this clinical study and sign the Informed Consent Form (ICF)",
    ),
    _inc(
        "inc-sle-diagnosis",
        "Incl 2",
        "Diagnosis of SLE",
        "Previous diagnosis of systemic lupus erythematosus (SLE) (according to the 1997 American Rheumatology Association criteria)",
    ),
    _inc(
        "inc-contraception",
        "Incl 3",
        "Effective contraception",
        "Females of childbearing potential must use effective contraception during study treatment and for 90 days after the last dose of study treatment; subjects must not donate eggs during the study and for at least 90 days after the last dose",
    ),
    _inc(
        "inc-sledai",
        "Incl 4",
        "SLEDAI-2K >= 8",
        "Subjects with Systemic Lupus Erythematosus Disease Activity Index (SLEDAI-2K) score >= 8 points prior to screening",
    ),
    _inc(
        "inc-bilag",
        "Incl 5",
        "BILAG-2004: >= 1 A or >= 2 B",
        "Subject has >= 1 organ system with BILAG-2004 Class A score or >= 2 organ systems with BILAG-2004 Class B score prior to screening",
    ),
    _inc(
        "inc-autoantibody",
        "Incl 6",
        "One qualifying autoantibody",
        "Subjects meet one of the following (ANA, anti-dsDNA, anti-Smith)",
    ),
    _inc(
        "inc-ana",
        "Incl 7",
        "ANA >= 1:80 by immunofluorescence",
        "Antinuclear antibody (ANA) >= 1:80, determined by immunofluorescence method",
        "inc-autoantibody",
    ),
    _inc(
        "inc-anti-dsdna",
        "Incl 8",
        "Anti-dsDNA above normal",
        "Anti-dsDNA antibodies are higher than normal level",
        "inc-autoantibody",
    ),
    _inc(
        "inc-anti-sm",
        "Incl 9",
        "Anti-Smith above normal",
        "Anti-Smith antibodies are higher than normal level",
        "inc-autoantibody",
    ),
    _inc(
        "inc-neutrophils",
        "Incl 10",
        "Neutrophils >= 1.0 x10^9/L",
        "Absolute number of neutrophils >= 1.0 x 10^9/L",
    ),
    _inc("inc-hemoglobin", "Incl 10", "Hemoglobin >= 60 g/L", "Hemoglobin >= 60 g/L"),
    _inc("inc-lvef", "Incl 11", "LVEF >= 50%", "Left ventricular ejection fraction (LVEF) >= 50%"),
    _inc(
        "inc-prior-therapy",
        "Incl 12",
        "OCS plus immunosuppressant or biologic for >= 6 months",
        "Subjects have been treated with oral corticosteroids (OCS) in combination with an immunosuppressive or biologic agent for at least 6 months prior to enrollment",
    ),
    _exc(
        "exc-drug-allergy",
        "Excl 1",
        "Allergy to trial medications or severe allergy history",
        "Known severe allergic reactions, hypersensitivity, contraindication to any medications during the trial (cyclophosphamide, fludarabine, obinutuzumab), or a history of severe allergic reactions",
    ),
    _exc(
        "exc-iv-antibiotics",
        "Excl 2",
        "Active infection on IV antibiotics",
        "Active infection receiving intravenous (IV) antibiotic treatment, or IV antibiotic treatment within one week prior to anti-CD19 CAR NK cells infusion",
    ),
    _exc(
        "exc-immunodeficiency",
        "Excl 3",
        "Immunodeficiency disease",
        "Acquired and congenital immunodeficiency diseases",
    ),
    _exc(
        "exc-heart-failure",
        "Excl 4",
        "NYHA class III or IV heart failure",
        "Grade III or IV heart failure (NYHA classification)",
    ),
    _exc(
        "exc-cns-disease",
        "Excl 5",
        "Epilepsy or other CNS disease",
        "History of epilepsy or other central nervous system (CNS) diseases",
    ),
    _exc(
        "exc-severe-herpes",
        "Excl 6",
        "Severe herpetic infection",
        "History of severe herpetic infection, such as herpetic encephalitis, ocular herpes, or diffuse herpes",
    ),
    _exc(
        "exc-malignancy",
        "Excl 7-9",
        "Other primary malignancy",
        "History of other primary malignant tumors except cured non-melanoma skin cancer by surgical excision (e.g. basal cell carcinoma) and cured primary malignant tumors such as cervical cancer, superficial bladder cancer, breast cancer",
    ),
    _exc(
        "exc-recent-herpes-zoster",
        "Excl 10",
        "Herpes or varicella-zoster in the last 12 weeks",
        "Signs of herpes or varicella-zoster virus infection (especially chickenpox, shingles) within 12 weeks prior to screening",
    ),
    _exc(
        "exc-major-comorbidity",
        "Excl 10",
        "Major comorbidity preventing administration",
        "History of any cardiac, endocrine, hematologic, hepatic, immunologic, metabolic, urologic, pulmonary, neurologic, dermatologic, psychiatric, and renal disease or other major medical condition that would prevent the administration of anti-CD19 CAR NK cells (KN5501), except for lupus (determined by the investigator)",
    ),
    _exc(
        "exc-pregnancy-lactation",
        "Excl 11",
        "Pregnant, lactating or planning pregnancy",
        "Females who are pregnant, lactating, or planning a pregnancy within six months",
    ),
    _exc(
        "exc-skin-disease",
        "Excl 12",
        "Active skin disease interfering with SLE assessment",
        "Any active skin disease that may interfere with the study assessment of SLE, including psoriasis, dermatomyositis, systemic sclerosis, non-LE cutaneous lupus manifestations or drug-induced lupus",
    ),
    _exc(
        "exc-recent-trial",
        "Excl 13",
        "Other clinical trial treatment within 3 months",
        "Subjects who have received other clinical trial treatment within 3 months",
    ),
    _exc(
        "exc-b-cell-therapy",
        "Excl 14",
        "B-cell targeted therapy within 1 month",
        "Subjects who have received B cell-targeted drug therapy within 1 month before enrollment",
    ),
    _exc(
        "exc-abnormal-labs",
        "Excl 15",
        "Clinically significant abnormal labs",
        "Any abnormal laboratory test results judged by the investigator to be clinically significant and prevent the subject from participating in the study",
    ),
    _exc(
        "exc-investigator-judgement",
        "Excl 16",
        "Investigator judgement",
        "Any situation judged by the investigators that may increase the risk of the subjects or interfere with the clinical trial outcome",
    ),
)

BY_ID: dict[str, CriterionSpec] = {spec.id: spec for spec in CRITERIA}
