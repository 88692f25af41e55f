"""Record builders: every way of getting a :class:`~fhir_trial.record.PatientRecord`.

- :func:`record_from_bundle` / :func:`records_from_bundle`: FHIR Bundles (files, request bodies);
- :func:`records_from_ndjson`: a Bulk Data NDJSON export folder, streamed;
- :class:`FhirClient`: searches on a FHIR server (``fetch_patient_record``).
"""

from typing import TYPE_CHECKING

from fhir_trial.sources.bundle import (
    patients_in_bundle,
    read_json_file,
    record_from_bundle,
    records_from_bundle,
)
from fhir_trial.sources.ndjson import NdjsonExport, records_from_ndjson

if TYPE_CHECKING:
    from fhir_trial.sources.fhir_client import FhirClient, PatientNotFoundError

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


def __getattr__(name: str) -> object:
    # The FHIR client (and the HTTP stack under it, requests and urllib3) is imported on first use:
    # the population workers import this package for the NDJSON reader only, and each paid
    # about 75 ms for a client it never uses.
    if name in ("FhirClient", "PatientNotFoundError"):
        from fhir_trial.sources import fhir_client

        return getattr(fhir_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
