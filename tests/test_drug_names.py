"""The names safety net (CRITERIA.md, "Real-world records"): terminology/drug-names.json, its merge
into the published drug ValueSets, and the name matcher (fhir_trial.terminology)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fhir_trial.config import Settings
from fhir_trial.criteria.labels import TRIAL_DRUG_WORDS, label_suggests
from fhir_trial.medications import _LOCAL_USE, DRUG_VALUESETS
from fhir_trial.terminology import LETTER, ValueSet, has_letter, load_terminology

ROOT = Path(__file__).resolve().parent.parent
NAMES = json.loads((ROOT / "terminology" / "drug-names.json").read_text(encoding="utf-8"))
# The study's CQL libraries (cql/NCT06010472*.cql: the literals live in the shared and area ones).
CQL = "\n".join(
    p.read_text(encoding="utf-8") for p in sorted((ROOT / "cql").glob("NCT06010472*.cql"))
)


def _vs(vs_id: str) -> ValueSet:
    return load_terminology(Settings().resources_dir).get(vs_id)


def test_every_name_has_a_language_and_a_known_source() -> None:
    for ingredient in NAMES["ingredients"]:
        assert ingredient["names"][0]["language"] == "en", ingredient["ingredient"]
        for name in ingredient["names"]:
            assert name["language"] in {"en", "de", "fr", "es", "zh"}, name
            assert name["source"] in NAMES["sources"], name


def test_the_published_valuesets_carry_the_names_with_their_language() -> None:
    published = json.loads(
        (ROOT / "resources" / "ValueSet-oral-corticosteroids.json").read_text(encoding="utf-8")
    )
    designations = [d for e in published["expansion"]["contains"] for d in e.get("designation", [])]
    assert {"language": "zh", "value": "泼尼松龙"} in [
        {"language": d.get("language"), "value": d["value"]} for d in designations
    ]


@pytest.mark.parametrize(
    ("vs_id", "text", "ingredient"),
    [
        ("oral-corticosteroids", "泼尼松片 5mg", "prednisone"),
        ("oral-corticosteroids", "醋酸泼尼松片", "prednisone"),
        ("oral-corticosteroids", "泼尼松龙片", "prednisolone"),  # not 泼尼松
        ("oral-corticosteroids", "氢化泼尼松片", "prednisolone"),  # not 泼尼松
        ("oral-corticosteroids", "甲泼尼龙片", "methylprednisolone"),
        ("oral-corticosteroids", "甲基泼尼松龙", "methylprednisolone"),  # not 泼尼松龙
        ("oral-corticosteroids", "强的松", "prednisone"),
        ("oral-corticosteroids", "Prednisolon 5 mg Tabletten", "prednisolone"),
        ("oral-corticosteroids", "Prednison 20 mg", "prednisone"),
        ("oral-corticosteroids", "Méthylprednisolone 16 mg comprimé", "methylprednisolone"),
        ("oral-corticosteroids", "methylPREDNISolone 4 MG Oral Tablet", "methylprednisolone"),
        ("oral-corticosteroids", "Metformin 500 mg", None),
        ("oral-corticosteroids", "Prednisolonacetat", None),  # a Latin name is a whole word
        ("immunosuppressants", "吗替麦考酚酯胶囊", "mycophenolate mofetil"),
        ("immunosuppressants", "霉酚酸酯分散片", "mycophenolate mofetil"),
        ("immunosuppressants", "Mycophenolat-Mofetil 500 mg", "mycophenolate mofetil"),
        ("immunosuppressants", "Mycophenolatmofetil", "mycophenolate mofetil"),
        ("immunosuppressants", "Ciclosporine 25 mg capsule", "cyclosporine"),
        ("immunosuppressants", "环孢素软胶囊", "cyclosporine"),
        ("immunosuppressants", "Cyclophosphamid 50 mg", "cyclophosphamide"),
        ("immunosuppressants", "甲氨蝶呤片", "methotrexate"),
        ("immunosuppressants", "硫唑嘌呤片", "azathioprine"),
        ("immunosuppressants", "来氟米特片", "leflunomide"),
        ("immunosuppressants", "他克莫司胶囊", "tacrolimus"),
        ("sle-biologics", "注射用贝利尤单抗", "belimumab"),
        ("sle-biologics", "Benlysta 120 mg", "belimumab"),
        ("sle-biologics", "美罗华Rituximab", "rituximab"),
        ("sle-biologics", "泰爱", "telitacicept"),
        ("b-cell-therapies", "奥妥珠单抗注射液", "obinutuzumab"),
        ("b-cell-therapies", "MabThera 500 mg", "rituximab"),
        ("hydroxychloroquine", "纷乐 硫酸羟氯喹片", "hydroxychloroquine"),
        ("antivirals-herpes", "阿昔洛韦片", "acyclovir"),
        ("antivirals-herpes", "Aciclovir 400 mg", "acyclovir"),
        ("antivirals-herpes", "伐昔洛韦", "valacyclovir"),
        ("antivirals-herpes", "泛昔洛韦", "famciclovir"),
        ("antivirals-herpes", "更昔洛韦", "ganciclovir"),
        ("antivirals-herpes", "缬更昔洛韦", "valganciclovir"),  # not 更昔洛韦
        ("systemic-antibacterials", "头孢曲松钠", "ceftriaxone"),
        ("systemic-antibacterials", "头孢他啶", "ceftazidime"),
        ("systemic-antibacterials", "哌拉西林他唑巴坦", "piperacillin"),
        ("systemic-antibacterials", "美罗培南", "meropenem"),
        ("systemic-antibacterials", "亚胺培南西司他丁", "imipenem"),
        ("systemic-antibacterials", "万古霉素", "vancomycin"),
        ("systemic-antibacterials", "左氧氟沙星", "levofloxacin"),
        ("systemic-antibacterials", "莫西沙星", "moxifloxacin"),
        ("systemic-antibacterials", "阿奇霉素", "azithromycin"),
        ("systemic-antibacterials", "利奈唑胺", "linezolid"),
        ("systemic-antibacterials", "Ceftriaxon 2 g", "ceftriaxone"),
        ("systemic-antibacterials", "美罗华", None),  # rituximab, not meropenem
    ],
)
def test_names_in_every_language_read_as_the_listed_ingredient(
    vs_id: str, text: str, ingredient: str | None
) -> None:
    assert _vs(vs_id).ingredient_named(text) == ingredient


def test_every_drug_valueset_has_names() -> None:
    for vs_id in DRUG_VALUESETS:
        assert _vs(vs_id).ingredient_names, vs_id


def test_the_allergy_words_name_every_trial_medication_name() -> None:
    """exc-drug-allergy reads names with TRIAL_DRUG_WORDS (the CQL library the same literal)."""
    trial = {"cyclophosphamide", "fludarabine", "obinutuzumab"}
    for ingredient in NAMES["ingredients"]:
        if ingredient["ingredient"] in trial:
            for name in ingredient["names"]:
                assert label_suggests(name["value"], TRIAL_DRUG_WORDS), name
    (literal,) = re.findall(r'define "Trial Drug Words": \'(.*)\'', CQL)
    assert literal.replace("\\\\", "\\") == TRIAL_DRUG_WORDS


def test_the_cql_library_uses_the_same_letters_and_local_use_words() -> None:
    (letters,) = re.findall(r"\[\\\\s\\\\S\]\*(\[A-Za-z[^\]]*\])", CQL)
    unescaped = re.sub(r"\\\\u([0-9A-Fa-f]{4})", lambda m: chr(int(m.group(1), 16)), letters)
    assert unescaped == LETTER
    words = set(re.findall(r"[a-z\\]+|[\u4e00-\u9fff]+", _LOCAL_USE.pattern)) - {"b", "w"}
    local = CQL[CQL.index('define function "Says Local Use"') :]
    local = local[: local.index("define function", 10)]
    for word in words:
        assert word.replace("\\", "\\\\") in local, word


def test_a_name_needs_a_letter() -> None:
    assert has_letter("泼尼松") and has_letter("Prednisolon") and has_letter("x1")
    assert not has_letter("12345") and not has_letter("  ") and not has_letter(None)


def test_names_go_on_the_ingredient_entry_else_on_its_atc_class_entry() -> None:
    from fhir_trial.study.terminology_sources import add_drug_names
    from fhir_trial.terminology import EXT_INGREDIENT_NAME_OF, valueset_from_resource

    valueset = {
        "resourceType": "ValueSet",
        "id": "t",
        "url": "urn:t",
        "expansion": {
            "contains": [
                {"system": "http://www.whocc.no/atc", "code": "J01", "display": "Antibacterials"},
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "2193",
                    "display": "ceftriaxone",
                },
            ]
        },
    }
    add_drug_names(valueset, NAMES)
    add_drug_names(valueset, NAMES)  # idempotent
    j01, ceftriaxone = valueset["expansion"]["contains"]
    own = [d["value"] for d in ceftriaxone["designation"]]
    assert own[0] == "ceftriaxone" and "头孢曲松" in own and len(own) == len(set(own))
    assert not any(d.get("extension") for d in ceftriaxone["designation"])
    imipenem = [d for d in j01["designation"] if d["value"] == "亚胺培南"]
    assert len(imipenem) == 1 and imipenem[0]["language"] == "zh"
    assert imipenem[0]["extension"] == [{"url": EXT_INGREDIENT_NAME_OF, "valueString": "imipenem"}]
    assert not [d for d in j01["designation"] if d["value"] == "头孢曲松"]  # has its own entry
    vs = valueset_from_resource(valueset)
    assert vs.ingredient_named("注射用亚胺培南西司他丁钠") == "imipenem"
    assert vs.ingredient_named("头孢曲松钠") == "ceftriaxone"
