"""Record builders: every way of getting a :class:`~fhir_trial.record.PatientRecord`.

- :func:`record_from_bundle` / :func:`records_from_bundle`: FHIR Bundles (files, request bodies);
- :func:`records_from_ndjson`: a Bulk Data NDJSON export folder, streamed;
- :class:`FhirClient`: searches on a FHIR server (``fetch_patient_record``).
"""

from fhir_trial.sources.bundle import (
    patients_in_bundle,
    read_json_file,
    record_from_bundle,
    records_from_bundle,
)
from fhir_trial.sources.fhir_client import FhirClient, PatientNotFoundError
from fhir_trial.sources.ndjson import NdjsonExport, records_from_ndjson

__all__ = [
    "FhirClient",
    "NdjsonExport",
    "PatientNotFoundError",
    "patients_in_bundle",
    "read_json_file",
    "record_from_bundle",
    "records_from_bundle",
    "records_from_ndjson",
]
