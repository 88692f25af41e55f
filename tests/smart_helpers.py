"""Shared pieces of the SMART worksheet tests: the fake EHR's patient, the registration file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cds_helpers import base_settings, patient, sandbox_issuer, sle_condition, write_issuers
from fake_smart_ehr import CLIENT_ID, FakeSmartEhr

from fhir_trial.config import Settings

PATIENT_ID = "pat-smart-1"


def load_patient(ehr: FakeSmartEhr, patient_id: str = PATIENT_ID) -> None:
    """A woman of 36 with SLE: potentially eligible, the manual items open."""
    resource = patient(patient_id)
    resource["name"] = [{"use": "official", "family": "Wang", "given": ["Mei"]}]
    ehr.add(resource)
    ehr.add(sle_condition(patient_id=patient_id))


def smart_settings(
    tmp: Path, shared_dir: Path, ehr: FakeSmartEhr, app_base: str, **smart: Any
) -> Settings:
    """Settings whose trusted-issuers file registers the app with ``ehr``."""
    registration: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "redirect_uri": f"{app_base}/smart/callback",
        "frame_ancestors": [ehr.origin],
    }
    registration.update(smart)
    issuers = write_issuers(
        tmp / "issuers.json",
        [sandbox_issuer(shared_dir, fhir_servers=[ehr.base_url], smart=registration)],
    )
    return base_settings(
        tmp,
        cds_trusted_issuers_file=issuers,
        public_base_url=app_base,
        database_path=str(tmp / "smart.sqlite3"),
    )
