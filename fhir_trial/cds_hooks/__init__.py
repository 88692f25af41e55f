"""CDS Hooks 2.0 service for NCT06010472: ``patient-view`` enrollment suggestion.

``create_cds_blueprint(settings)`` gives the Flask blueprint (discovery, hook, feedback, worksheet);
see :mod:`.blueprint` for the routes and :mod:`.auth` for how CDS clients are trusted.

The names below are imported when first used, not with the package: the SMART app imports
:mod:`.auth` (trusted issuers), and the service imports the SMART app's links, so loading the
blueprint with the package would make the two packages import each other.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HOOK", "SERVICE_ID", "cds_service", "create_cds_blueprint"]

_HOME = {
    "HOOK": "discovery",
    "SERVICE_ID": "discovery",
    "cds_service": "blueprint",
    "create_cds_blueprint": "blueprint",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
