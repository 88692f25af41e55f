"""Settings: every window, threshold and limit in one frozen object.

The defaults are the decisions recorded in CRITERIA.md; the README documents them. Values come from
keyword arguments, else ``FHIR_TRIAL_<FIELD>`` environment variables, else the defaults below. No
window or threshold is written anywhere else in the code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fhir_trial.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Installed from the wheel, the top-level data folders (resources/, terminology/, cql/) travel
# inside the package (setup.py copies them to fhir_trial/_data); in a checkout they are read where
# they are.
_PACKAGED_DATA = Path(__file__).resolve().parent / "_data"
DATA_ROOT = _PACKAGED_DATA if (_PACKAGED_DATA / "resources").is_dir() else PROJECT_ROOT
DEFAULT_RESOURCES_DIR = DATA_ROOT / "resources"
# Longest query (after "?") of one code-filtered FHIR search: common servers and proxies accept
# URLs of 2,048 characters or more, and the base URL and path need room too.
DEFAULT_MAX_SEARCH_QUERY_CHARS = 1800


@dataclass(frozen=True)
class Settings:
    """Screening, service and client settings. Immutable; use :meth:`replace` to derive."""

    # --- screening dates -------------------------------------------------------------------------
    as_of: dt.date | None = None  # screening date; None means today
    infusion_date: dt.date | None = None  # planned infusion; None means as_of

    # --- inclusion thresholds and windows (CRITERIA.md) -------------------------------------------
    min_age: int = 18
    max_age: int = 65
    sledai_min_score: int = 8
    sledai_window_days: int = 90
    bilag_window_days: int = 90
    ana_min_titer: int = 80
    neutrophils_min_10e9_per_l: float = 1.0
    neutrophils_window_days: int = 30
    hemoglobin_min_g_per_l: float = 60.0
    hemoglobin_window_days: int = 30
    lvef_min_percent: float = 50.0
    lvef_window_days: int = 180
    prior_therapy_min_days: int = 182
    prior_therapy_max_gap_days: int = 30
    default_supply_days: int = 30

    # --- exclusion windows ---------------------------------------------------------------------------
    iv_antibiotics_window_days: int = 7
    herpes_window_days: int = 84
    pregnancy_test_window_days: int = 30
    pregnancy_max_days: int = 300  # an "active" pregnancy older than this is stale: needs-review
    recent_trial_window_days: int = 90
    b_cell_therapy_window_days: int = 30
    abnormal_labs_window_days: int = 30

    # --- FHIR client ------------------------------------------------------------------------------
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    max_retries: int = 3
    max_pages: int = 50
    max_resources: int = 20000
    search_concurrency: int = 4
    # Page size asked for on every search (_count); servers may cap it lower.
    search_page_size: int = 200
    # One screening by REST (`screen --fhir-server`) gives up after this long in total, whatever
    # the server does (hangs, answers trickled a byte at a time, endless next links) ...
    fhir_deadline_s: float = 60.0
    # ... or after this many HTTP requests.
    fhir_max_requests: int = 500
    # A code list longer than this (query characters) is split over several searches.
    max_search_query_chars: int = DEFAULT_MAX_SEARCH_QUERY_CHARS

    # --- CDS Hooks service ---------------------------------------------------------------------------
    cds_deadline_s: float = 1.5
    cds_cards_for_ineligible: bool = False
    cds_development_mode: bool = False  # turns JWT verification OFF; never the default
    cds_trusted_issuers_file: str | None = None
    cds_incomplete_card: bool = True  # show "screening could not be completed" when data failed
    cds_dev_fhir_servers: tuple[str, ...] = ()  # fhirServer bases accepted in development mode
    cds_jwt_leeway_s: float = 30.0  # clock skew tolerated on exp/iat
    cds_jwt_max_lifetime_s: float = 3600.0  # exp - iat beyond this is refused
    cds_cors_origins: tuple[str, ...] = ("*",)
    cds_discovery_requires_jwt: bool = False
    # --- registry operations and the HTTP server (fhir_api/access.py, commands/serve.py) ---------
    operations_trusted_issuers_file: str | None = None  # access-token issuers; else the CDS file
    server_threads: int = 8  # request threads per gunicorn worker
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    body_timeout_s: float = 30.0  # plus body_min_bytes_per_s: the time allowed to read a body
    body_min_bytes_per_s: int = 256 * 1024
    max_request_bytes: int = 5 * 1024 * 1024  # one patient: hook, feedback, $apply
    # $screen-population carries a registry, not a patient. NDJSON is spooled to disk (memory
    # stays flat), a Bundle is parsed in memory (about ten times its size), hence two limits.
    population_max_ndjson_bytes: int = 1024 * 1024 * 1024
    population_max_bundle_bytes: int = 64 * 1024 * 1024
    # A Bulk NDJSON line longer than this is refused (read in chunks, never held whole).
    ndjson_max_line_bytes: int = 64 * 1024 * 1024
    # gunicorn kills a worker whose request runs longer: a $screen-population upload must be
    # read and screened within it (about 30 MB/s here). Hook calls have their own deadline.
    worker_timeout_s: int = 300
    worksheet_token_ttl_s: int = 900
    secret_key: str | None = None  # signs worksheet links; random per process when unset
    database_path: str = "var/fhir-trial.sqlite3"
    public_base_url: str | None = (
        None  # the service's own external URL (JWT aud); None: from request
    )

    # --- data ---------------------------------------------------------------------------------------
    resources_dir: str = str(DEFAULT_RESOURCES_DIR)

    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # --- derived ------------------------------------------------------------------------------------
    def screening_date(self) -> dt.date:
        """The date the screening is computed for (``as_of`` or today)."""
        return self.as_of or dt.date.today()

    def infusion_day(self) -> dt.date:
        """The planned infusion date (``infusion_date`` or the screening date)."""
        return self.infusion_date or self.screening_date()

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``FHIR_TRIAL_*`` variables, then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"FHIR_TRIAL_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, type_name: str, raw: str) -> Any:
    """Parse one environment value according to the field's annotated type."""
    try:
        if "date" in type_name:
            return dt.date.fromisoformat(raw)
        if type_name.startswith("bool"):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if type_name.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        return raw
    except ValueError as exc:
        raise ConfigurationError(
            f"FHIR_TRIAL_{name.upper()}: cannot read {raw!r} as {type_name}"
        ) from exc
