"""The OperationDefinition of the custom ``$screen-population`` operation, published with the study.

The operation itself is served by :mod:`fhir_trial.fhir_api.population_operation`; this module
only describes it, so the resource builder can publish it without importing the web layer.
"""

from __future__ import annotations

from typing import Any

from fhir_trial.canonical import canonical
from fhir_trial.report import STATUSES

SCREEN_POPULATION_DEFINITION = canonical("OperationDefinition", "ResearchStudy-screen-population")

POPULATION_DOC = (
    "Custom operation (its OperationDefinition is not published on this server). POST a Bundle "
    "(application/fhir+json) or Bulk NDJSON (application/fhir+ndjson, types mixed in one "
    "stream); query: asOf, infusionDate, missing (data categories), guidance=true. Answer: a "
    "Parameters with one 'patient' per patient (verdict, status per criterion) and the "
    "feasibility counts (per criterion: removes, remaining, patients per status)."
)


def screen_population_operation_definition() -> dict[str, Any]:
    """The OperationDefinition of ``$screen-population`` (for publishing with the study)."""

    def param(
        name: str, use: str, type_: str | None, doc: str, *, min_: int = 0, max_: str = "1"
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "use": use, "min": min_, "max": max_}
        if type_:
            out["type"] = type_
        out["documentation"] = doc
        return out

    return {
        "resourceType": "OperationDefinition",
        "id": "ResearchStudy-screen-population",
        "url": SCREEN_POPULATION_DEFINITION,
        "name": "ScreenPopulation",
        "title": "Screen a population against the study's eligibility criteria",
        "status": "active",
        "kind": "operation",
        "description": POPULATION_DOC,
        "code": "screen-population",
        "resource": ["ResearchStudy"],
        "system": False,
        "type": False,
        "instance": True,
        "parameter": [
            param("asOf", "in", "date", "Screening date (default: today)"),
            param("infusionDate", "in", "date", "Planned infusion date (default: asOf)"),
            param("missing", "in", "string", "Data categories known not to be in the data"),
            param("guidance", "in", "boolean", "Add each patient's GuidanceResponse"),
            param("patient", "out", None, "One per patient", max_="*")
            | {
                "part": [
                    param("subject", "out", "Reference", "The Patient", min_=1),
                    param("verdict", "out", "code", "The verdict", min_=1),
                    param("researchSubjectStatus", "out", "code", "Proposed status", min_=1),
                    param(
                        "deceased",
                        "out",
                        "string",
                        "Deceased on the screening date: the death date as recorded, or 'true'",
                    ),
                    param("reason", "out", "string", "Why the verdict is not the criteria's alone"),
                    param("criterion", "out", None, "One per criterion", max_="*")
                    | {
                        "part": [
                            param("id", "out", "code", "Criterion id", min_=1),
                            param("status", "out", "code", "Criterion status", min_=1),
                        ]
                    },
                    param("warning", "out", "string", "Data problems", max_="*"),
                    param("guidanceResponse", "out", "GuidanceResponse", "With guidance=true"),
                ]
            },
            param("asOf", "out", "date", "The screening date used", min_=1),
            param("patients", "out", "integer", "Patients screened", min_=1),
            param(
                "deceased",
                "out",
                "integer",
                "Patients deceased on the screening date (the funnel's first step)",
                min_=1,
            ),
            param("living", "out", "integer", "Patients the criteria are counted over", min_=1),
            param("verdict", "out", None, "Patients per verdict", max_="*")
            | {
                "part": [
                    param("code", "out", "code", "The verdict", min_=1),
                    param("count", "out", "integer", "Patients", min_=1),
                ]
            },
            param("feasibility", "out", None, "One per criterion", max_="*")
            | {
                "part": [
                    param("id", "out", "code", "Criterion id", min_=1),
                    param("kind", "out", "code", "inclusion or exclusion", min_=1),
                    param("ref", "out", "string", "Protocol reference", min_=1),
                    param("partOf", "out", "code", "The criterion this one explains"),
                    param("removes", "out", "integer", "Patients it rules out"),
                    param("remaining", "out", "integer", "Patients left after it (funnel)"),
                    *(
                        param(status, "out", "integer", f"Patients {status}", min_=1)
                        for status in STATUSES
                    ),
                ]
            },
        ],
    }


# --------------------------------------------------------------------------- request bodies
