"""``report.json``: the feasibility report model as JSON text (see :mod:`.model`)."""

from __future__ import annotations

import json
from typing import Any


def render(data: dict[str, Any]) -> str:
    """The report document, indented, ending with a newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
