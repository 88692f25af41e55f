"""The card's SMART link: the app's launch URL, offered only to EHRs the app is registered with."""

from __future__ import annotations

from functools import lru_cache

from fhir_trial.cds_hooks.auth import normalise_base
from fhir_trial.config import Settings
from fhir_trial.errors import FhirTrialError
from fhir_trial.smart.config import load_registrations

__all__ = ["LAUNCH_PATH", "smart_launch_url"]

LAUNCH_PATH = "/smart/launch"


@lru_cache(maxsize=8)
def _registered_bases(trusted_issuers_file: str | None) -> frozenset[str]:
    try:
        return frozenset(load_registrations(trusted_issuers_file))
    except FhirTrialError:
        return frozenset()  # a broken registration is reported when the SMART app starts


def smart_launch_url(settings: Settings, fhir_server: str | None, base_url: str) -> str | None:
    """``[base]/smart/launch`` when the hook's FHIR server has a SMART registration, else None.

    The EHR adds ``launch`` and ``iss`` when it opens a ``smart`` link.
    """
    normal = normalise_base(fhir_server) if fhir_server else None
    if normal is None or normal not in _registered_bases(settings.cds_trusted_issuers_file):
        return None
    return f"{(settings.public_base_url or base_url).rstrip('/')}{LAUNCH_PATH}"
