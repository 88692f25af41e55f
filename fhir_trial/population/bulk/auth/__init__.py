"""Credentials for a Bulk Data export: a fixed bearer token, or SMART Backend Services.

Both give the client a :class:`TokenProvider`: ``token()`` is the access token to send now (None:
send no Authorization header), ``invalidate()`` drops it after a 401 and says whether a fresh one
can be tried (a fixed token cannot be renewed; Backend Services asks the token endpoint again).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["StaticToken", "TokenProvider"]


class TokenProvider(Protocol):
    """Where the client gets the bearer token for the FHIR server."""

    def token(self) -> str | None:
        """The access token to send now (renewed first if it is about to expire)."""
        ...

    def invalidate(self) -> bool:
        """Forget the current token after a 401; True when a new one can be obtained."""
        ...


class StaticToken:
    """A bearer token given on the command line (``--token`` / ``FHIR_TRIAL_TOKEN``), or none."""

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def token(self) -> str | None:
        """The token as given."""
        return self._value

    def invalidate(self) -> bool:
        """A fixed token cannot be renewed."""
        return False

    def __repr__(self) -> str:  # never shows the token
        return f"StaticToken({'***' if self._value else None})"
