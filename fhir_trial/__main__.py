"""``python -m fhir_trial`` runs the CLI."""

import sys

from fhir_trial.cli import main

sys.exit(main())
