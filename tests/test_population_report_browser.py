"""The HTML feasibility report in a real headless Chromium: it renders offline, fetches nothing,
and shows its charts. Each run saves a screenshot under tests/artifacts/ (ignored by git).

Playwright's Python package drives the system's Chromium (``executable_path``, found as the
worksheet test finds it: :func:`browser.chromium_path`); Playwright downloads no browser here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser import chromium_path

from fhir_trial.cli import main

pytest.importorskip("playwright", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import sync_playwright

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SYNTHEA = Path("fixtures/synthea/bulk-ndjson-10-patients")


def render_in_chromium(page_path: Path, screenshot: Path) -> dict[str, Any]:
    """Open the page from disk; return the requests it made, its charts and console errors."""
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(page_path.as_uri(), wait_until="load")
            charts = page.evaluate(
                """() => Array.from(document.querySelectorAll('.chart svg, .chart img, canvas'))
                       .map(e => { const r = e.getBoundingClientRect();
                                   return [r.width, r.height]; })"""
            )
            headings = page.evaluate(
                "() => Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
            )
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"requests": requests, "charts": charts, "errors": errors, "headings": headings}


def check(page: dict[str, Any], page_path: Path, screenshot: Path) -> None:
    assert page["requests"] == [page_path.as_uri()], "the page fetched something"
    assert page["errors"] == []
    assert len(page["charts"]) >= 3
    assert all(width > 100 and height > 100 for width, height in page["charts"])
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    for heading in ("Attrition funnel", "Each criterion on its own", "Criteria impact"):
        assert any(heading in h for h in page["headings"]), heading


def test_demo_report_renders_offline_with_charts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    args = ["screen-population", "--demo", "--report", str(out), "--no-progress"]
    assert main([*args, "--set", "max_age=120"]) == 0
    capsys.readouterr()
    screenshot = ARTIFACTS / "report-demo.png"
    page = render_in_chromium(out / "report.html", screenshot)
    check(page, out / "report.html", screenshot)
    assert any("What-if" in h for h in page["headings"])


def test_synthea_bulk_report_renders_offline_with_charts(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synthea"
    args = ["screen-population", "--ndjson", str(shared_dir / SYNTHEA), "--as-of", "2024-08-06"]
    assert main([*args, "--report", str(out), "--no-progress", "--min-count", "3"]) == 0
    capsys.readouterr()
    screenshot = ARTIFACTS / "report-synthea-bulk.png"
    page = render_in_chromium(out / "report.html", screenshot)
    check(page, out / "report.html", screenshot)
    assert any("Missing data" in h for h in page["headings"])
