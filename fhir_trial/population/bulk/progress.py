"""The progress bar of a Bulk Data export on stderr (tqdm), fed by :class:`~fhir_trial.population.bulk.client.BulkClient`.

While the server works, the bar shows its ``X-Progress`` text (and fills when that text holds a
percentage, as many servers write it: ``"45% complete"``); while files download it counts bytes
and names the file. It only draws on a terminal; elsewhere it writes a line per phase.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


def percent_of(text: str) -> float | None:
    """The percentage an ``X-Progress`` text holds (``"45% complete"`` -> 45.0), if any."""
    match = _PERCENT.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 100.0 else None


class TqdmProgress:
    """A :class:`~fhir_trial.population.bulk.client.Progress` drawing tqdm bars on ``stream``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._mode = ""
        self._last = ""

    def _open(self, mode: str, **kwargs: Any) -> Any:
        if self._mode != mode:
            self.close()
            from tqdm import tqdm

            self._bar = tqdm(file=self.stream, leave=False, dynamic_ncols=True, **kwargs)
            self._mode = mode
        return self._bar

    def status(self, text: str) -> None:
        """Show the server's progress text."""
        if not self.tty:
            if text != self._last:
                print(f"bulk export: {text}", file=self.stream)
                self._last = text
            return
        bar = self._open("status", total=100, desc="export", bar_format="{desc}: {bar} {postfix}")
        pct = percent_of(text)
        if pct is not None:
            bar.n = pct
        bar.set_postfix_str(text[:60])

    def download(self, name: str, index: int, total: int) -> None:
        """A file starts downloading."""
        if not self.tty:
            print(f"bulk export: downloading {index}/{total} {name}", file=self.stream)
            return
        bar = self._open("download", unit="B", unit_scale=True, desc="download")
        bar.set_description_str(f"download {index}/{total} {name}")

    def advance(self, nbytes: int) -> None:
        """Bytes written to disk."""
        if self._bar is not None and self._mode == "download":
            self._bar.update(nbytes)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._mode = ""
