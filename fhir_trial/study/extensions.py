"""StructureDefinitions of the extensions the project defines, so that their URLs resolve too.

R4 has no element for: an estimated period end, the ValueSets and look-back window of a Group
characteristic, the protocol paragraph a criterion comes from, and the ingredient a drug name on
an ATC class entry names (simple extensions); and for the
verification status of each code listed in a ValueSet (a complex extension with ``status`` and
``source``, written by the terminology sources).
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_trial.study.common import (
    EXT_CODE_VERIFICATION,
    EXT_LOOKBACK,
    EXT_PERIOD_END_ESTIMATED,
    EXT_PROTOCOL_REFERENCE,
    EXT_VALUESET,
    JsonDict,
    camel_name,
    canonical_metadata,
)
from fhir_trial.terminology import EXT_INGREDIENT_NAME_OF


@dataclass(frozen=True)
class ExtensionSpec:
    """One simple extension: its URL, value type, where it is used, and what it means."""

    url: str
    value_type: str
    contexts: tuple[str, ...]
    title: str
    definition: str
    repeats: bool = False

    @property
    def id(self) -> str:
        """The StructureDefinition id: the last segment of the URL."""
        return self.url.rsplit("/", 1)[-1]


EXTENSIONS: tuple[ExtensionSpec, ...] = (
    ExtensionSpec(
        EXT_PERIOD_END_ESTIMATED,
        "boolean",
        ("Period",),
        "Period end is an estimate",
        "True when Period.end is an estimated date (e.g. a registry's estimated completion date).",
    ),
    ExtensionSpec(
        EXT_VALUESET,
        "canonical",
        ("Element",),
        "ValueSet the criterion reads",
        "A ValueSet whose codes the eligibility criterion tests (on a Group characteristic's "
        "value). Repeats when the criterion reads several ValueSets.",
        repeats=True,
    ),
    ExtensionSpec(
        EXT_LOOKBACK,
        "Duration",
        ("Group.characteristic",),
        "Look-back window of the criterion",
        "Only data recorded within this duration before the screening (or infusion) date count.",
    ),
    ExtensionSpec(
        EXT_PROTOCOL_REFERENCE,
        "string",
        ("Group.characteristic",),
        "Protocol paragraph",
        "Where the criterion is in the protocol, e.g. 'Incl 4' or 'Excl 7-9'.",
    ),
    ExtensionSpec(
        EXT_INGREDIENT_NAME_OF,
        "string",
        ("ValueSet.expansion.contains.designation",),
        "Ingredient the name names",
        "On an ingredient-name designation of a class entry (ATC J01): the ingredient (English "
        "name) this name names, e.g. 'imipenem' for 亚胺培南 (terminology/drug-names.json).",
    ),
)


def structure_definition(spec: ExtensionSpec) -> JsonDict:
    """The StructureDefinition (differential only) of one simple extension.

    ``fhirVersion`` is left out: the official R4 JSON Schema's enum stops at 4.0.0 and would reject
    4.0.1.
    """
    value_type = spec.value_type[:1].upper() + spec.value_type[1:]
    return {
        "resourceType": "StructureDefinition",
        "id": spec.id,
        **canonical_metadata("StructureDefinition", spec.id),
        "name": camel_name(spec.id),
        "title": spec.title,
        "description": spec.definition,
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": context} for context in spec.contexts],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Extension",
                    "path": "Extension",
                    "short": spec.title,
                    "definition": spec.definition,
                    "min": 0,
                    "max": "*" if spec.repeats else "1",
                },
                {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": spec.url},
                {
                    "id": "Extension.value[x]",
                    "path": "Extension.value[x]",
                    "min": 1,
                    "type": [{"code": spec.value_type}],
                    "short": f"value{value_type}",
                },
            ]
        },
    }


VERIFICATION_STATUSES = ("verified", "unverified")


def code_verification_definition() -> JsonDict:
    """The complex extension recording whether a ValueSet code was verified, and where."""
    resource_id = EXT_CODE_VERIFICATION.rsplit("/", 1)[-1]
    definition = (
        "Whether this code was seen with this meaning in a public source while the ValueSet was "
        "written (status: " + " | ".join(VERIFICATION_STATUSES) + "), and the source."
    )
    return {
        "resourceType": "StructureDefinition",
        "id": resource_id,
        **canonical_metadata("StructureDefinition", resource_id),
        "name": camel_name(resource_id),
        "title": "Code verification",
        "description": definition,
        "kind": "complex-type",
        "abstract": False,
        # On an include: the source of every concept it lists (imported VSAC parts).
        "context": [
            {"type": "element", "expression": "ValueSet.compose.include.concept"},
            {"type": "element", "expression": "ValueSet.compose.include"},
        ],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Extension",
                    "path": "Extension",
                    "short": "Code verification",
                    "definition": definition,
                    "max": "1",
                },
                {
                    "id": "Extension.extension",
                    "path": "Extension.extension",
                    "slicing": {
                        "discriminator": [{"type": "value", "path": "url"}],
                        "rules": "closed",
                    },
                },
                {
                    "id": "Extension.extension:status",
                    "path": "Extension.extension",
                    "sliceName": "status",
                    "min": 1,
                    "max": "1",
                },
                {
                    "id": "Extension.extension:status.url",
                    "path": "Extension.extension.url",
                    "fixedUri": "status",
                },
                {
                    "id": "Extension.extension:status.value[x]",
                    "path": "Extension.extension.value[x]",
                    "short": " | ".join(VERIFICATION_STATUSES),
                    "type": [{"code": "code"}],
                },
                {
                    "id": "Extension.extension:source",
                    "path": "Extension.extension",
                    "sliceName": "source",
                    "max": "1",
                },
                {
                    "id": "Extension.extension:source.url",
                    "path": "Extension.extension.url",
                    "fixedUri": "source",
                },
                {
                    "id": "Extension.extension:source.value[x]",
                    "path": "Extension.extension.value[x]",
                    "short": "Where the code was seen with this meaning",
                    "type": [{"code": "string"}],
                },
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": EXT_CODE_VERIFICATION},
                {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"},
            ]
        },
    }


def structure_definitions() -> list[JsonDict]:
    """The StructureDefinitions of every project extension."""
    return [*(structure_definition(spec) for spec in EXTENSIONS), code_verification_definition()]
