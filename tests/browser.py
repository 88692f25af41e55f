"""Drive a real headless Chromium from the tests (subprocess, no extra Python packages).

``make test`` installs Debian's ``chromium`` when it is missing. The browser runs with a throwaway
profile, no sandbox (CI runs as root), no GPU and every background service off, so it talks to
nothing but the URL it is given. Console messages are captured from stderr (``--enable-logging``)
so a test can see, for example, Content-Security-Policy refusals.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["BrowserPage", "chromium_path", "load_page", "screenshot"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--enable-logging=stderr",
    "--v=0",
)
TIMEOUT_S = 90.0


@dataclass(frozen=True)
class BrowserPage:
    """What Chromium made of a URL: the serialised DOM after load, and its console/log output."""

    dom: str
    log: str

    def console(self) -> list[str]:
        """The page's console messages (``CONSOLE`` lines of the browser log)."""
        return [line for line in self.log.splitlines() if "CONSOLE" in line]


def chromium_path() -> str:
    """The Chromium executable (``FHIR_TRIAL_CHROMIUM`` overrides); FAILS the test if there is none."""
    override = os.environ.get("FHIR_TRIAL_CHROMIUM")
    if override:
        return override
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Chromium is not installed: `make test` installs it (apt-get install chromium), or set "
        "FHIR_TRIAL_CHROMIUM to a Chromium/Chrome executable",
        pytrace=False,
    )


def _run(extra: list[str], url: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="fhir-trial-chromium-") as profile:
        args = [chromium_path(), *_FLAGS, f"--user-data-dir={profile}", *extra, url]
        try:
            done = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"Chromium did not finish loading {url} within {timeout_s:.0f} s")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        pytest.fail(f"Chromium exited with {done.returncode} on {url}:\n{tail}")
    return done


def load_page(url: str, timeout_s: float = TIMEOUT_S) -> BrowserPage:
    """Load ``url`` in headless Chromium and return the DOM as rendered (``--dump-dom``)."""
    done = _run(["--dump-dom"], url, timeout_s)
    return BrowserPage(dom=done.stdout, log=done.stderr)


def screenshot(
    url: str, path: Path, size: tuple[int, int] = (1280, 2000), timeout_s: float = TIMEOUT_S
) -> Path:
    """Save a PNG of ``url`` as Chromium renders it at ``size``; return the path."""
    _run([f"--screenshot={path}", f"--window-size={size[0]},{size[1]}"], url, timeout_s)
    if not path.is_file() or path.stat().st_size == 0:
        pytest.fail(f"Chromium wrote no screenshot for {url}")
    return path
