"""Import published VSAC expansions into the project's terminology sources (``terminology/vsac/``).

The criteria read the project's own ValueSets (``terminology/valuesets/``). Published value sets
with complete expansions (VSAC, as shipped with the eCQM content repositories) list far more codes
than hand-made lists: every SNOMED CT descendant, every ICD-10-CM code, every RxNorm product. This
module reads such expansions and writes, per VSAC value set, the codes the project uses and where
each one goes (``terminology/vsac/<OID>.json``): which project ValueSet, with the VSAC OID, version
and the public repository path and commit it came from. The carve-outs of CRITERIA.md are applied
here (drug-induced lupus is not SLE, neoplasms of uncertain behaviour are not malignancies,
puerperium is not pregnancy, ...): every rule is in :data:`PLAN`, one entry per VSAC value set.

The import runs only when asked (``fhir-trial import-vsac --from DIR``); a normal build reads the
files it wrote, so the project builds and runs without the VSAC files
(:func:`fhir_trial.study.terminology_sources.load_terminology_sources` merges them).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_trial.errors import ConfigurationError
from fhir_trial.terminology import ICD10CM, LOINC, RXNORM, SNOMED

# The public source of the expansions (the VSAC README of the fixtures names it).
SOURCE_REPOSITORY = "cqframework/ecqm-content-qicore-2024"
SOURCE_COMMIT = "9ebd48ffebf2ed2489f3904cc8393ebf8979bfc9"
SOURCE_PATH = "input/vocabulary/valueset/external/valueset-{oid}.json"
SOURCE_LICENCE = "CC0-1.0 (repository licence); codes belong to their code systems"
VSAC_URL = "http://cts.nlm.nih.gov/fhir/ValueSet/{oid}"
VSAC_DIR = "vsac"

Entry = tuple[str, str, str]  # (system, code, display)
# Decides, for one expansion entry, the project ValueSets it goes to (several at once are fine),
# or a reason it is left out (a string starting with "left out:").
Rule = Callable[[str, str, str], "list[str] | str"]


def _icd(system: str) -> bool:
    return system == ICD10CM


def _words(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# ----------------------------------------------------------------------------- conditions
def lupus(system: str, code: str, display: str) -> list[str] | str:
    """Lupus (117.12.1010): SLE; drug-induced lupus apart; generic and cutaneous LE reviewed."""
    if "drug-induced" in display.lower() or code == "M32.0":
        return ["drug-induced-lupus"]
    if code in (
        "200936003",
        "239886003",
        "239888002",
    ):  # lupus erythematosus, limited, panniculitis
        return ["lupus-unspecified-or-cutaneous"]
    return ["sle"]


def autoimmune(system: str, code: str, display: str) -> list[str] | str:
    """Autoimmune Disease (ICD-10-CM only): SLE codes, drug-induced lupus, DM/PM and SSc."""
    if code.startswith("M32.1") or code in ("M32.8", "M32.9"):
        return ["sle"]
    if code == "M32.0":
        return ["drug-induced-lupus"]
    if code.startswith(("M33", "M34")) or code == "M36.0":
        return ["skin-disease-exclusion"]
    return "left out: another autoimmune disease, not a criterion of the protocol"


def psoriatic_arthritis(system: str, code: str, display: str) -> list[str] | str:
    """Psoriatic Arthritis: psoriasis with arthropathy (exc-skin-disease)."""
    return ["skin-disease-exclusion"]


_NOT_MALIGNANT = _words(r"uncertain behavio|unspecified behavio|benign|in situ")
_NOT_MALIGNANT_ICD = re.compile(r"D(0\d|3[7-9]|4\d)")
_SECONDARY = _words(r"secondary|metasta")
_SKIN_CARVE_OUT = _words(
    r"basal cell|squamous cell carcinoma of skin|malignant neoplasm of skin|"
    r"carcinoma of skin|skin of (lip|eyelid|ear|face|scalp|neck|trunk|limb|upper|lower|other)"
)
_CERVIX = _words(r"\bcervix\b|cervix uteri|uterine cervix|endocervi|exocervi")
_BLADDER = _words(r"(?<!gall)(?<!gall )bladder")
_BREAST = _words(r"\bbreast\b|nipple|areola")
# Blood and connective-tissue cancers of these organs are not the carve-out cancers (C50, C53, C67).
_NOT_CARVE_OUT_KIND = _words(r"lymphoma|leuk|sarcoma|myeloma|melanoma")


def cancer(system: str, code: str, display: str) -> list[str] | str:
    """Cancer value sets: malignancies; the protocol carve-outs apart; non-malignant left out."""
    if _NOT_MALIGNANT.search(display) or _NOT_MALIGNANT_ICD.match(code):
        return "left out: neoplasm of uncertain or unspecified behaviour, benign or in situ"
    if _icd(system):
        if code.startswith(("C44", "C50", "C53", "C67")):
            return ["malignancy-carve-outs"]
        return ["malignancy"]
    primary_carcinoma = not _SECONDARY.search(display) and not _NOT_CARVE_OUT_KIND.search(display)
    organs = (_SKIN_CARVE_OUT, _CERVIX, _BLADDER, _BREAST)
    if primary_carcinoma and any(organ.search(display) for organ in organs):
        return ["malignancy-carve-outs"]
    return ["malignancy"]


def immunodeficiency(system: str, code: str, display: str) -> list[str] | str:
    """HIV and SCID: immunodeficiency."""
    return ["immunodeficiency"]


_IMMUNODEFICIENCY = _words(
    r"immunodeficien|immune deficien|agammaglobulin|hypogammaglobulin|wiskott|hyper-?\s?i(mmuno)?g|"
    r"hyperimmunoglobulin|di ?george|ataxia|chediak|granulomatous disease|leukocyte adhesion|"
    r"lymphocyte function antigen|nezelof|reticular dysgenesis|\bscid\b|complement|deficiency|"
    r"human immunodeficiency|\bhiv\b|\baids\b"
)
_NOT_IMMUNODEFICIENCY = _words(
    r"graft.versus.host|angioedema|c1 esterase inhibitor|hyperactivation|lymphoproliferative"
)


def immune_disorders(system: str, code: str, display: str) -> list[str] | str:
    """Disorders of the Immune System: its immunodeficiencies only (not GVHD, ALPS, D89.x)."""
    if code == "414029004":
        return "left out: 414029004 Disorder of immune function is never used (it contains SLE)"
    if _NOT_IMMUNODEFICIENCY.search(display):
        return "left out: graft-versus-host disease, ALPS, hereditary angioedema or complement overactivity"
    if _icd(system):
        if code.startswith("D84.82"):
            return ["immunosuppressed-state"]  # immunodeficiency due to drugs or external causes
        if code.startswith(("D80", "D81", "D82", "D83", "D84")):
            return ["immunodeficiency"]
        return "left out: other disorder of the immune mechanism (D89.x), not an immunodeficiency"
    if _IMMUNODEFICIENCY.search(display):
        return ["immunodeficiency"]
    return "left out: immune disorder that is not an immunodeficiency"


def epilepsy_icd(system: str, code: str, display: str) -> list[str] | str:
    """Epilepsy (ICD-10-CM): G40.x; convulsions (R56.x) are symptoms, not epilepsy."""
    if code.startswith("G40"):
        return ["epilepsy"]
    return "left out: convulsions (R56.x) are a symptom, not epilepsy"


def seizure_disorder(system: str, code: str, display: str) -> list[str] | str:
    """Seizure Disorder: epilepsy and seizure disorder (R56.x convulsions left out)."""
    if code.startswith("R56"):
        return "left out: convulsions (R56.x) are a symptom, not epilepsy"
    return ["epilepsy"]


def heart_failure(system: str, code: str, display: str) -> list[str] | str:
    """Heart Failure: heart failure (a NYHA class decides elsewhere)."""
    return ["heart-failure"]


_NOT_ACTIVE_HERPES = _words(r"history of|immune \(finding\)|vaccin")
_SEVERE_HERPES = _words(
    r"encephal|mening|myelit|ophthalm|ocular|\beye|kerat|conjunctiv|iritis|iridocycl|uveit|"
    r"scleritis|retin|cornea|hutchinson|disseminat|generali[sz]ed"
)


def herpes(system: str, code: str, display: str) -> list[str] | str:
    """Varicella Zoster / Genital Herpes: infections; severe ones (CNS, eye, disseminated) too."""
    if _NOT_ACTIVE_HERPES.search(display):
        return "left out: history of, immunity or vaccination, not an infection"
    if _SEVERE_HERPES.search(display):
        return ["herpes-varicella-infection", "severe-herpes"]
    return ["herpes-varicella-infection"]


_PREGNANT = _words(
    r"pregnan|trimester|gestation|fetus|fetal|antepartum|placent|amnio|chorio|twin|triplet|"
    r"quadruplet|quintuplet|multiple gestation|supervision|ectopic|molar|hydatidiform|miscarriage|"
    r"abortion|preterm labor|maternal care|oligohydramnios|polyhydramnios|eclampsia|hyperemesis|"
    r"antenatal|false labor|rupture of membranes"
)
_NOT_PREGNANT_NOW = _words(
    r"puerper|postpartum|after delivery|following (delivery|childbirth)|^history of"
)


def pregnancy(system: str, code: str, display: str) -> list[str] | str:
    """Pregnancy: current pregnancy; puerperium, postpartum and history are not."""
    current = _PREGNANT.search(display) or code.startswith(("Z33", "Z34", "Z3A", "O09"))
    if current and not _NOT_PREGNANT_NOW.search(display):
        return ["pregnancy-findings"]
    return "left out: puerperium, postpartum, delivery or history, not a current pregnancy"


def pregnant_state(system: str, code: str, display: str) -> list[str] | str:
    """Pregnant State: current pregnancy."""
    return ["pregnancy-findings"]


def breastfeeding(system: str, code: str, display: str) -> list[str] | str:
    """Breastfeeding: lactation; 169643005 (feeding intention) is not."""
    if code == "169643005":
        return "left out: a feeding intention, not lactation"
    return ["breastfeeding-status"]


# ----------------------------------------------------------------------------- observations
def pregnancy_test(system: str, code: str, display: str) -> list[str] | str:
    """Pregnancy Test: hCG tests of the patient (55870-0 is cord blood)."""
    if code == "55870-0":
        return "left out: cord blood, not the patient"
    return ["hcg-tests"]


def hemoglobin(system: str, code: str, display: str) -> list[str] | str:
    """Hemoglobin lab test: blood hemoglobin (not plasma free Hb, not the panel)."""
    if code in ("35183-3", "24360-0"):
        return "left out: plasma free hemoglobin or a panel code, not blood hemoglobin"
    return ["hemoglobin"]


def ejection_fraction(system: str, code: str, display: str) -> list[str] | str:
    """Ejection Fraction: LVEF by every method."""
    return ["lvef"]


def iv_route(system: str, code: str, display: str) -> list[str] | str:
    """Intravenous route."""
    return ["route-intravenous"]


# ----------------------------------------------------------------------------- medications
_LOCAL_FORM = _words(r"paste|inhal|ophthalmic|otic|topical|nasal|rectal|vaginal|cream|ointment")
_ORAL = _words(r"\boral\b")
_GLUCOCORTICOID = _words(
    r"\b(prednisone|prednisolone|methylprednisolone|dexamethasone|hydrocortisone|cortisone|"
    r"betamethasone|deflazacort)\b"
)
_PARTNER = _words(
    r"\b(azathioprine|cyclosporine|tacrolimus|mycophenol\w*|leflunomide|methotrexate|"
    r"cyclophosphamide|voclosporin)\b"
)
# Other members of ATC L04A (immunosuppressants) found in the immunosuppressant value set; CRITERIA
# counts any L04A member as the immunosuppressant of inc-prior-therapy.
_OTHER_L04A = _words(
    r"\b(sirolimus|everolimus|basiliximab|abatacept|etanercept|infliximab\S*|adalimumab\S*|"
    r"certolizumab|golimumab|tocilizumab|tofacitinib|vedolizumab|natalizumab|secukinumab|"
    r"ixekizumab|ustekinumab|anakinra)\b"
)
_RITUXIMAB = _words(r"\brituximab\S*")
_TRIAL_ALLERGEN = _words(r"\b(cyclophosphamide|fludarabine)\b")


def oral_glucocorticoid(system: str, code: str, display: str) -> list[str] | str:
    """Glucocorticoids (oral only): oral corticosteroids (an oral paste acts locally)."""
    if _LOCAL_FORM.search(display):
        return "left out: local dose form (oral paste)"
    return ["oral-corticosteroids"]


def immunosuppressive(system: str, code: str, display: str) -> list[str] | str:
    """Immunosuppressive Drugs: partners and other L04A members; rituximab; oral steroids."""
    if _LOCAL_FORM.search(display):
        return "left out: local dose form"
    if _RITUXIMAB.search(display):
        return ["sle-biologics", "b-cell-therapies"]
    if _PARTNER.search(display) or _OTHER_L04A.search(display):
        return ["immunosuppressants"]
    if _GLUCOCORTICOID.search(display):
        if _ORAL.search(display):
            return ["oral-corticosteroids"]
        return "left out: a glucocorticoid that is not taken by mouth"
    return "left out: not an immunosuppressant the protocol names (e.g. budesonide)"


def chemotherapy(system: str, code: str, display: str) -> list[str] | str:
    """Chemotherapy Agents: methotrexate and cyclophosphamide; CYC and fludarabine as allergens."""
    targets = []
    if _PARTNER.search(display):
        targets.append("immunosuppressants")
    if _TRIAL_ALLERGEN.search(display):
        targets.append("trial-medication-allergens")
    if _RITUXIMAB.search(display):
        targets += ["sle-biologics", "b-cell-therapies"]
    return targets or "left out: another chemotherapy agent, not named by the protocol"


def antibiotic(system: str, code: str, display: str) -> list[str] | str:
    """Antibiotic Medications: systemic antibacterials (inhalation products act locally)."""
    if _LOCAL_FORM.search(display):
        return "left out: inhalation product (local use)"
    return ["systemic-antibacterials"]


@dataclass(frozen=True)
class Plan:
    """One VSAC value set: its OID, the concept it serves and how its codes are placed."""

    oid: str
    rule: Rule


PLAN: tuple[Plan, ...] = (
    Plan("2.16.840.1.113883.3.464.1003.117.12.1010", lupus),
    Plan("2.16.840.1.113762.1.4.1029.311", autoimmune),
    Plan("2.16.840.1.113883.3.464.1003.113.12.1046", psoriatic_arthritis),
    Plan("2.16.840.1.113762.1.4.1111.161", cancer),
    Plan("2.16.840.1.113883.3.526.3.1010", cancer),
    Plan("2.16.840.1.113883.3.464.1003.108.12.1009", cancer),
    Plan("2.16.840.1.113762.1.4.1248.136", cancer),
    Plan("2.16.840.1.113883.3.464.1003.120.12.1003", immunodeficiency),
    Plan("2.16.840.1.113883.3.464.1003.120.12.1007", immunodeficiency),
    Plan("2.16.840.1.113883.3.464.1003.120.12.1001", immune_disorders),
    Plan("2.16.840.1.113762.1.4.1248.171", epilepsy_icd),
    Plan("2.16.840.1.113883.3.464.1003.105.12.1206", seizure_disorder),
    Plan("2.16.840.1.113883.3.526.3.376", heart_failure),
    Plan("2.16.840.1.113883.3.464.1003.110.12.1039", herpes),
    Plan("2.16.840.1.113883.3.464.1003.110.12.1049", herpes),
    Plan("2.16.840.1.113883.3.526.3.378", pregnancy),
    Plan("2.16.840.1.113883.3.3157.4055", pregnant_state),
    Plan("2.16.840.1.113762.1.4.1047.73", breastfeeding),
    Plan("2.16.840.1.113883.3.464.1003.111.12.1011", pregnancy_test),
    Plan("2.16.840.1.113762.1.4.1248.219", hemoglobin),
    Plan("2.16.840.1.113883.3.526.3.1134", ejection_fraction),
    Plan("2.16.840.1.113883.3.117.1.7.1.222", iv_route),
    Plan("2.16.840.1.113883.3.464.1003.196.12.1266", oral_glucocorticoid),
    Plan("2.16.840.1.113762.1.4.1151.32", immunosuppressive),
    Plan("2.16.840.1.113762.1.4.1151.60", chemotherapy),
    Plan("2.16.840.1.113883.3.464.1003.1190", antibiotic),
)
_KNOWN_SYSTEMS = frozenset({SNOMED, ICD10CM, LOINC, RXNORM})


def expansion_entries(valueset: Mapping[str, Any]) -> Iterator[Entry]:
    """(system, code, display) of every code in a ValueSet's expansion (nested ones too)."""
    stack = list(reversed(valueset.get("expansion", {}).get("contains", [])))
    while stack:
        entry = stack.pop()
        if entry.get("code") and not entry.get("abstract", False):
            yield str(entry["system"]), str(entry["code"]), str(entry.get("display", ""))
        stack.extend(reversed(entry.get("contains", [])))


def import_valueset(valueset: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """The project's record of one VSAC value set: its source and the codes placed per target."""
    targets: dict[str, list[list[str]]] = {}
    left_out: Counter[str] = Counter()
    for system, code, display in expansion_entries(valueset):
        if system not in _KNOWN_SYSTEMS:
            raise ConfigurationError(f"VSAC {plan.oid}: unexpected code system {system}")
        placed = plan.rule(system, code, display)
        if isinstance(placed, str):
            left_out[placed.removeprefix("left out: ")] += 1
            continue
        for target in placed:
            targets.setdefault(target, []).append([system, code, display])
    return {
        "oid": plan.oid,
        "url": VSAC_URL.format(oid=plan.oid),
        "title": str(valueset.get("title") or valueset.get("name") or plan.oid),
        "version": str(valueset.get("version", "")),
        "publisher": str(valueset.get("publisher", "")),
        "source": {
            "repository": SOURCE_REPOSITORY,
            "path": SOURCE_PATH.format(oid=plan.oid),
            "commit": SOURCE_COMMIT,
            "licence": SOURCE_LICENCE,
        },
        "placement": (plan.rule.__doc__ or "").strip(),
        "targets": {
            key: sorted(value, key=lambda e: (e[0], e[1])) for key, value in targets.items()
        },
        "leftOut": dict(sorted(left_out.items())),
    }


def import_vsac(source_dir: Path, terminology_dir: Path) -> list[Path]:
    """Read every VSAC file of :data:`PLAN` from ``source_dir``; write ``terminology/vsac/``."""
    out_dir = terminology_dir / VSAC_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in PLAN:
        path = source_dir / f"valueset-{plan.oid}.json"
        try:
            valueset = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read VSAC value set {path}: {exc}") from exc
        record = import_valueset(valueset, plan)
        target = out_dir / f"{plan.oid}.json"
        target.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written
