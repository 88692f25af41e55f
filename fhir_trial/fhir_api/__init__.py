"""The ``/fhir`` HTTP endpoint: the study's resources, read-only (see :mod:`.blueprint`)."""
