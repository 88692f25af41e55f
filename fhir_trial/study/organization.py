"""The sponsor Organization and the study site Location.

Each has the project's canonical identifier (system ``urn:ietf:rfc:3986``), the business key by
which ``fhir-trial publish`` finds it on servers that assign their own ids.
"""

from __future__ import annotations

from fhir_trial.canonical import canonical
from fhir_trial.study.common import JsonDict

ORGANIZATION_ID = "changhai-hospital"
LOCATION_ID = "changhai-hospital-shanghai"


def organization() -> JsonDict:
    """Changhai Hospital, the sponsor (and assigner of the protocol id CHEC2023-174)."""
    return {
        "resourceType": "Organization",
        "id": ORGANIZATION_ID,
        "identifier": [
            {"system": "urn:ietf:rfc:3986", "value": canonical("Organization", ORGANIZATION_ID)}
        ],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": "Changhai Hospital",
        "address": [{"city": "Shanghai", "country": "CN"}],
    }


def location() -> JsonDict:
    """The one study centre: Changhai Hospital, Shanghai, China (recruiting)."""
    return {
        "resourceType": "Location",
        "id": LOCATION_ID,
        "identifier": [
            {"system": "urn:ietf:rfc:3986", "value": canonical("Location", LOCATION_ID)}
        ],
        "status": "active",
        "name": "Changhai Hospital, Shanghai",
        "mode": "instance",
        "address": {"city": "Shanghai", "country": "CN", "text": "Shanghai, China"},
        "managingOrganization": {
            "reference": f"Organization/{ORGANIZATION_ID}",
            "display": "Changhai Hospital",
        },
    }
