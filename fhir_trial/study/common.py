"""What every study resource shares: version, publisher, date, and the project's extension URLs.

The release date is a constant, not "today": the built files in ``resources/`` must be the same on
every machine and every day, so that ``fhir-trial build-resources --check`` can tell stale output.
"""

from __future__ import annotations

from typing import Any

from fhir_trial.canonical import BASE, CODESYSTEM_URL, canonical

VERSION = "0.1.0"
RELEASE_DATE = "2026-11-26"
PUBLISHER = "fhir-trial project"

UCUM = "http://unitsofmeasure.org"
URI_IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"

# Extensions this project defines (R4 has no element for these facts). Documented in the README.
EXT_PERIOD_END_ESTIMATED = f"{BASE}/StructureDefinition/period-end-estimated"
EXT_VALUESET = f"{BASE}/StructureDefinition/characteristic-valueset"
EXT_LOOKBACK = f"{BASE}/StructureDefinition/characteristic-lookback"
EXT_PROTOCOL_REFERENCE = f"{BASE}/StructureDefinition/protocol-reference"
# Written by the terminology sources on each ValueSet concept: sub-extensions status and source.
EXT_CODE_VERIFICATION = f"{BASE}/StructureDefinition/code-verification"
# Cross-version extension (FHIR R5 ResearchStudy.recruitment.targetNumber used in R4).
EXT_TARGET_NUMBER = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchStudy.recruitment.targetNumber"
)

JsonDict = dict[str, Any]


def canonical_metadata(resource_type: str, resource_id: str, *, status: str = "active") -> JsonDict:
    """The metadata elements every canonical (url-bearing) resource of the project carries."""
    return {
        "url": canonical(resource_type, resource_id),
        "version": VERSION,
        "status": status,
        "experimental": False,
        "date": RELEASE_DATE,
        "publisher": PUBLISHER,
    }


def uri_identifier(resource_type: str, resource_id: str) -> JsonDict:
    """An identifier carrying the canonical URL, for R4 types that have no ``url`` element."""
    return {"system": URI_IDENTIFIER_SYSTEM, "value": canonical(resource_type, resource_id)}


def project_coding(code: str, display: str | None = None) -> JsonDict:
    """A coding from the project's own CodeSystem."""
    coding: JsonDict = {"system": CODESYSTEM_URL, "code": code}
    if display:
        coding["display"] = display
    return coding


def ucum_quantity(value: float, code: str, *, unit: str | None = None) -> JsonDict:
    """A UCUM Quantity; integral values are written as integers."""
    number: float | int = int(value) if float(value).is_integer() else value
    return {"value": number, "unit": unit or code, "system": UCUM, "code": code}


def camel_name(resource_id: str) -> str:
    """A computable name from an id: ``nct06010472-eligibility`` -> ``Nct06010472Eligibility``."""
    return "".join(part[:1].upper() + part[1:] for part in resource_id.replace("_", "-").split("-"))
