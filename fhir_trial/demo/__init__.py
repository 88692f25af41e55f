"""Demo patients shipped with the project: what ``make demo`` screens with no server.

Five hand-written Bundles, each a situation a coordinator meets: an active refractory SLE patient,
one over the age limit, one given rituximab two weeks ago, one whose labs are not done yet, and one
with drug-induced lupus only. Their dates are written for screening on :data:`DEMO_AS_OF`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_AS_OF = dt.date(2026, 11, 26)


def demo_bundle_paths() -> list[Path]:
    """The demo Bundle files, in name order."""
    return sorted(DEMO_DIR.glob("*.json"))
