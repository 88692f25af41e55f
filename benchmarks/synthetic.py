"""Deterministic synthetic SLE-like patients for the benchmarks.

``synthetic_bundle(seed, size)`` returns a collection Bundle of about ``size`` resources shaped like
a real chart: mostly Observations (vital signs, panels, the lupus labs with mixed unit spellings),
a problem list with SLE and unrelated conditions, years of medication orders, some allergies. The
same seed always gives the same patient, so runs are comparable.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from fhir_trial.canonical import CODESYSTEM_URL

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
AS_OF = dt.date(2026, 11, 26)

# (system, code, display, unit, low, high) for the lab stream; lupus labs with several unit spellings.
_LABS = [
    (LOINC, "751-8", "Neutrophils [#/volume] in Blood", "10*3/uL", 0.8, 6.0),
    (LOINC, "751-8", "Neutrophils [#/volume] in Blood", "K/uL", 0.8, 6.0),
    (LOINC, "770-8", "Neutrophils/100 leukocytes in Blood", "%", 40, 75),
    (LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 8.0, 14.5),
    (LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", 80, 145),
    (LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6),
    (LOINC, "8867-4", "Heart rate", "/min", 55, 110),
    (LOINC, "8480-6", "Systolic blood pressure", "mm[Hg]", 95, 160),
    (LOINC, "29463-7", "Body weight", "kg", 45, 95),
    (LOINC, "6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", 2.0, 11.0),
    (LOINC, "777-3", "Platelets [#/volume] in Blood", "10*3/uL", 80, 400),
    (LOINC, "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 2.5, 5.0),
]
_CONDITIONS = [
    (SNOMED, "55464009", "Systemic lupus erythematosus"),
    (SNOMED, "38341003", "Hypertensive disorder"),
    (SNOMED, "40055000", "Chronic sinusitis"),
    (SNOMED, "195662009", "Acute viral pharyngitis"),
    (SNOMED, "444814009", "Viral sinusitis"),
    (SNOMED, "10509002", "Acute bronchitis"),
    (SNOMED, "271737000", "Anemia"),
    (SNOMED, "36971009", "Sinusitis"),
]
_MEDICATIONS = [
    (RXNORM, "8640", "prednisone"),
    (RXNORM, "68149", "mycophenolate mofetil"),
    (RXNORM, "5521", "hydroxychloroquine"),
    (RXNORM, "42316", "tacrolimus"),
    (RXNORM, "197361", "amlodipine 5 MG Oral Tablet"),
    (RXNORM, "310798", "hydrochlorothiazide 25 MG Oral Tablet"),
]


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def synthetic_bundle(seed: int, size: int) -> dict[str, Any]:
    """A deterministic Bundle of about ``size`` resources for one SLE-like patient."""
    rng = random.Random(seed)
    pid = f"synthetic-{seed}"
    subject = {"reference": f"Patient/{pid}"}
    birth = dt.date(1960 + rng.randrange(45), 1 + rng.randrange(12), 1 + rng.randrange(28))
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": rng.choice(["female", "female", "female", "male"]),
            "birthDate": birth.isoformat(),
        }
    ]
    n_conditions = max(5, size // 40)
    n_meds = max(6, size // 15)
    n_obs = max(10, size - n_conditions - n_meds - 4)
    for i in range(n_conditions):
        system, code, display = _CONDITIONS[0] if i == 0 else rng.choice(_CONDITIONS[1:])
        onset = AS_OF - dt.timedelta(days=rng.randrange(30, 5000))
        resources.append(
            {
                "resourceType": "Condition",
                "id": f"{pid}-c{i}",
                "clinicalStatus": _concept(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "active" if i == 0 or rng.random() < 0.3 else "resolved",
                    "status",
                ),
                "verificationStatus": _concept(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "confirmed",
                    "Confirmed",
                ),
                "code": _concept(system, code, display),
                "subject": subject,
                "onsetDateTime": onset.isoformat(),
            }
        )
    for i in range(n_meds):
        system, code, display = _MEDICATIONS[i % len(_MEDICATIONS)]
        start = AS_OF - dt.timedelta(days=rng.randrange(0, 2000))
        resources.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"{pid}-m{i}",
                "status": rng.choice(["active", "completed", "stopped"]),
                "intent": "order",
                "medicationCodeableConcept": _concept(system, code, display),
                "subject": subject,
                "authoredOn": start.isoformat(),
                "dosageInstruction": [
                    {
                        "timing": {
                            "repeat": {
                                "boundsPeriod": {
                                    "start": start.isoformat(),
                                    "end": (
                                        start + dt.timedelta(days=rng.randrange(30, 400))
                                    ).isoformat(),
                                }
                            }
                        },
                        "route": _concept(SNOMED, "26643006", "Oral route"),
                    }
                ],
            }
        )
    resources.append(
        {
            "resourceType": "Observation",
            "id": f"{pid}-sledai",
            "status": "final",
            "code": {"coding": [{"system": CODESYSTEM_URL, "code": "sledai-2k-total"}]},
            "subject": subject,
            "effectiveDateTime": (AS_OF - dt.timedelta(days=rng.randrange(1, 120))).isoformat(),
            "valueInteger": rng.randrange(2, 20),
        }
    )
    resources.append(
        {
            "resourceType": "Observation",
            "id": f"{pid}-ana",
            "status": "final",
            "code": _concept(LOINC, "5048-4", "Nuclear Ab [Titer] in Serum by Immunofluorescence"),
            "subject": subject,
            "effectiveDateTime": (AS_OF - dt.timedelta(days=rng.randrange(1, 900))).isoformat(),
            "valueString": rng.choice(["1:40", "1:80", "1:160", "1:320", "1:640"]),
        }
    )
    for i in range(n_obs):
        system, code, display, unit, low, high = rng.choice(_LABS)
        when = dt.datetime(2020, 1, 1) + dt.timedelta(minutes=rng.randrange(0, 3_600_000))
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"{pid}-o{i}",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": _concept(system, code, display),
            "subject": subject,
            "effectiveDateTime": when.isoformat() + "Z",
            "valueQuantity": {
                "value": round(rng.uniform(low, high), 2),
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }
        if rng.random() < 0.05:
            obs["interpretation"] = [
                _concept(
                    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "HH",
                    "Critical high",
                )
            ]
        resources.append(obs)
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }
