"""Imported by the fork server of the NDJSON workers (see :mod:`.ndjson_pool`), by nothing else.

Importing it imports the screening code and loads the default ValueSets, so that every worker
forked from the server starts with both (a worker screening with other ValueSets loads those).
"""

from contextlib import suppress

from fhir_trial.config import Settings
from fhir_trial.errors import ConfigurationError
from fhir_trial.sources.ndjson_screen import _settle

with suppress(ConfigurationError):  # no ValueSets where expected: each worker will say so
    _settle(Settings())
