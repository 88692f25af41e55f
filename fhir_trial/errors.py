"""One exception tree for the whole project.

    FhirTrialError                  base; carries a one-line user message
    ├── ConfigurationError          bad settings or environment
    ├── InputError                  what the user gave us is unusable (exit code 2)
    │   ├── NotJsonError
    │   ├── NotFhirError
    │   ├── PatientSelectionError   no Patient, or several and none chosen
    │   └── PatientNotFoundError    the FHIR server has no such Patient
    ├── ResourceValidationError     a FHIR resource failed validation; carries OperationOutcome issues
    └── FhirServerError             talking to a FHIR server failed; carries url and status
        ├── ServerUnreachableError  connection refused, DNS, timeout (exit code 3)
        │   └── ScreeningLimitError the overall time or request limit of a screening was hit
        ├── AuthenticationError     401 / 403 (exit code 4)
        ├── ServerResponseError     4xx/5xx other than auth; carries the OperationOutcome if any
        └── NotFhirResponseError    the answer was not FHIR JSON

Each carries what a caller needs to explain the failure without a traceback: ``message`` (one
line, no PHI, no tokens) and, where there is one, the FHIR OperationOutcome the server returned.
"""

from __future__ import annotations

from typing import Any


class FhirTrialError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(FhirTrialError):
    """Settings or environment variables that cannot be used."""

    exit_code = 2


class InputError(FhirTrialError):
    """Input supplied by the user (a file, a request body) that cannot be used."""

    exit_code = 2


class NotJsonError(InputError):
    """The input is not JSON."""


class NotFhirError(InputError):
    """The input is JSON but not a FHIR resource of the expected kind."""


class PatientSelectionError(InputError):
    """A Bundle has no Patient, or several and the caller did not say which."""

    def __init__(self, message: str, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


class PatientNotFoundError(InputError):
    """The FHIR server has no Patient with the id asked for (HTTP 404/410 on the read)."""


class ResourceValidationError(FhirTrialError):
    """A FHIR resource failed validation; ``issues`` are OperationOutcome.issue entries."""

    exit_code = 2

    def __init__(self, message: str, issues: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.issues = issues


class FhirServerError(FhirTrialError):
    """Talking to a FHIR server failed."""

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.outcome = outcome


class ServerUnreachableError(FhirServerError):
    """No HTTP answer: connection refused, name not resolved, or timed out."""

    exit_code = 3


class ScreeningLimitError(ServerUnreachableError):
    """The overall deadline (or request limit) of one screening was reached; names the limit."""


class AuthenticationError(FhirServerError):
    """The server refused our credentials (401) or our access (403)."""

    exit_code = 4


class ServerResponseError(FhirServerError):
    """The server answered with an error status other than 401/403."""


class NotFhirResponseError(FhirServerError):
    """The server answered, but not with FHIR JSON."""
