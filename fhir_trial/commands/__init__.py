"""One module per ``fhir-trial`` subcommand, each exposing a click command named ``command``."""
