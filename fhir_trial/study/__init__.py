"""NCT06010472 as FHIR R4 resources: builders for every published resource, and the writer.

ResearchStudy, the eligibility Group, PlanDefinition and the Libraries (one per CQL library), the
ValueSets and the project's CodeSystem (from ``terminology/``), the sponsor Organization and the
site Location. Every canonical URL comes from :mod:`fhir_trial.canonical`.
``fhir-trial build-resources`` writes them to ``resources/``.
"""

from fhir_trial.study.build import (
    BuildInputs,
    BuildResult,
    build_all,
    file_name,
    serialize,
    stale_files,
    write_resources,
)
from fhir_trial.study.library import library_content

__all__ = [
    "BuildInputs",
    "BuildResult",
    "build_all",
    "file_name",
    "library_content",
    "serialize",
    "stale_files",
    "write_resources",
]
