"""The definitional Group of NCT06010472's eligibility: one characteristic per criterion.

Each characteristic carries the criterion id (``code``, from the project's CodeSystem, with the
protocol wording as ``code.text``), the tested value (a range, a threshold quantity, a concept or an
attestation), the ValueSets the criterion reads (``characteristic-valueset`` extensions on the value)
and, where there is one, the look-back window (``characteristic-lookback``). Exclusions have
``exclude: true``. Before the criteria, one characteristic excludes patients deceased on the
screening date (SNOMED CT 419099009 Dead, ``valueBoolean`` true, ``exclude`` true).
"""

from __future__ import annotations

from collections.abc import Collection

from fhir_trial.canonical import STUDY_ID, valueset_url
from fhir_trial.config import Settings
from fhir_trial.criteria.catalog import CRITERIA, CriterionSpec
from fhir_trial.deceased import DEAD_CODING
from fhir_trial.study.common import (
    EXT_LOOKBACK,
    EXT_PROTOCOL_REFERENCE,
    EXT_VALUESET,
    JsonDict,
    project_coding,
    ucum_quantity,
    uri_identifier,
)
from fhir_trial.study.criterion_values import CRITERION_VALUES
from fhir_trial.study.research_study import ELIGIBILITY_ID


def characteristic(
    spec: CriterionSpec, settings: Settings, available_valuesets: Collection[str]
) -> JsonDict:
    """The Group characteristic of one criterion."""
    definition = CRITERION_VALUES[spec.id]
    value_key, value = definition.value(settings)
    valuesets = [vs for vs in definition.valuesets if vs in available_valuesets]
    if isinstance(value, dict) and valuesets:
        value = {
            **value,
            "extension": [
                {"url": EXT_VALUESET, "valueCanonical": valueset_url(vs)} for vs in valuesets
            ],
        }
    extensions: list[JsonDict] = [{"url": EXT_PROTOCOL_REFERENCE, "valueString": spec.ref}]
    if definition.lookback_days is not None:
        days = definition.lookback_days(settings)
        extensions.append(
            {"url": EXT_LOOKBACK, "valueDuration": ucum_quantity(days, "d", unit="days")}
        )
    return {
        "extension": extensions,
        "code": {"coding": [project_coding(spec.id, spec.title)], "text": spec.protocol_text},
        value_key: value,
        "exclude": spec.kind == "exclusion",
    }


def deceased_characteristic() -> JsonDict:
    """Patients deceased on the screening date are excluded, whatever the criteria say."""
    return {
        "code": {
            "coding": [dict(DEAD_CODING)],
            "text": (
                "Deceased on or before the screening date (Patient.deceasedBoolean true, or a "
                "Patient.deceasedDateTime whose earliest possible day is on or before it)"
            ),
        },
        "valueBoolean": True,
        "exclude": True,
    }


def eligibility_group(settings: Settings, available_valuesets: Collection[str]) -> JsonDict:
    """The Group; ValueSets not in ``available_valuesets`` are left out of the extensions."""
    return {
        "resourceType": "Group",
        "id": ELIGIBILITY_ID,
        "identifier": [uri_identifier("Group", ELIGIBILITY_ID)],
        "active": True,
        "type": "person",
        "actual": False,
        "name": f"{STUDY_ID} eligibility criteria",
        "characteristic": [
            deceased_characteristic(),
            *(characteristic(spec, settings, available_valuesets) for spec in CRITERIA),
        ],
    }
