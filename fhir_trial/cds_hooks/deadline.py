"""The hook's time budget: :class:`fhir_trial.deadline.Deadline` (kept here for old imports)."""

from fhir_trial.deadline import Deadline, DeadlineExceeded

__all__ = ["Deadline", "DeadlineExceeded"]
