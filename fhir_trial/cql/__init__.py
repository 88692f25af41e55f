"""The CQL form of the eligibility logic: translation to ELM (build) and the reference engine client (engine)."""
