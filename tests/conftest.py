"""Shared fixtures: paths to ../shared, settings, the Flask app and client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder beside the checkout (CI has it too)."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared is missing beside the checkout ({SHARED})")
    return SHARED


@pytest.fixture()
def tmp_db(tmp_path: Path) -> Iterator[str]:
    """A throwaway SQLite path."""
    yield str(tmp_path / "fhir-trial.sqlite3")


@pytest.fixture(autouse=True)
def _forget_batch_refusals() -> Iterator[None]:
    """The CDS fetch remembers servers that refused batch, per base URL; tests reuse ports."""
    from fhir_trial.cds_hooks.fetch import forget_batch_refusals

    forget_batch_refusals()
    yield
    forget_batch_refusals()
