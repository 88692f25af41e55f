"""The small state file a Bulk Data download folder keeps, so an interrupted run can resume.

``DIR/bulk-state.json`` holds what is needed to pick an export up again without the terminal that
started it: the FHIR base URL, the kick-off URL and the types it asked for, the status URL the
server gave, the completion manifest once there is one, and every file already downloaded (name,
URL, size, SHA-256). It never holds a token or a key: resuming asks for the credentials again.

The file is rewritten atomically (a temporary file then :func:`os.replace`) after every step, so
Ctrl-C or a crash leaves either the previous state or the next one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fhir_trial.errors import InputError

STATE_FILE = "bulk-state.json"
STATE_VERSION = 1

# Phases of an export, in order; ``cancelled`` and ``expired`` end it without data.
PHASES = ("kicked-off", "complete", "downloaded", "deleted", "cancelled", "expired")


@dataclass
class DoneFile:
    """One file already on disk: where it came from, and how to tell it is whole."""

    name: str
    url: str
    kind: str  # "output" or "error"
    type: str
    size: int
    sha256: str


@dataclass
class ExportState:
    """What a download folder knows about its export (see the module docstring)."""

    base_url: str
    kickoff_url: str
    requested_types: list[str]
    status_url: str = ""
    phase: str = "kicked-off"
    manifest: dict[str, Any] | None = None
    files: dict[str, DoneFile] = field(default_factory=dict)  # by file URL
    version: int = STATE_VERSION

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> None:
        """Write ``folder/bulk-state.json`` atomically."""
        data = asdict(self)
        path = folder / STATE_FILE
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: Path) -> ExportState:
        """Read the state of a download folder; :class:`InputError` when there is none."""
        path = folder / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"{folder} holds no Bulk Data export state ({STATE_FILE}); "
                "give the folder a previous --fhir-server run downloaded into"
            ) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(f"{path} is not a fhir-trial export state (version {STATE_VERSION})")
        files = {
            url: DoneFile(**entry)
            for url, entry in (data.get("files") or {}).items()
            if isinstance(entry, dict)
        }
        return cls(
            base_url=str(data["base_url"]),
            kickoff_url=str(data["kickoff_url"]),
            requested_types=[str(t) for t in data.get("requested_types") or []],
            status_url=str(data.get("status_url") or ""),
            phase=str(data.get("phase") or "kicked-off"),
            manifest=data.get("manifest"),
            files=files,
        )

    @staticmethod
    def exists(folder: Path) -> bool:
        """Whether ``folder`` holds an export state."""
        return (folder / STATE_FILE).is_file()

    # ------------------------------------------------------------------ files
    def is_done(self, url: str, folder: Path) -> bool:
        """A file counts as downloaded when recorded and still on disk, same size and hash."""
        done = self.files.get(url)
        if done is None:
            return False
        path = folder / done.name
        try:
            if path.stat().st_size != done.size:
                return False
        except OSError:
            return False
        return file_sha256(path) == done.sha256


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
