"""FHIR Bulk Data Access (v2) client: export a population from a FHIR server to NDJSON on disk.

:class:`BulkClient` runs the export (kick-off, poll, download, delete; see :mod:`.client`),
:mod:`.auth` supplies the token (fixed, or SMART Backend Services), :mod:`.state` keeps what an
interrupted run needs to resume. The result is a :class:`BulkExport`: a folder the NDJSON reader
screens, the types the kick-off listed, the transaction time and the export's errors.
"""

from fhir_trial.population.bulk.client import (
    EXPORT_TYPES,
    BulkClient,
    BulkExport,
    BulkExportError,
    ErrorFile,
    ExportExpiredError,
)

__all__ = [
    "EXPORT_TYPES",
    "BulkClient",
    "BulkExport",
    "BulkExportError",
    "ErrorFile",
    "ExportExpiredError",
]
