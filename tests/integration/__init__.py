"""Tests against a real FHIR server named by FHIR_TRIAL_TEST_SERVER (skipped when unset)."""
