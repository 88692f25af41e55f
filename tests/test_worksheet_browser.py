"""The screening worksheet behind the card's smart link, opened in a real headless Chromium.

The real app (``create_app``, JWT verification on, the sandbox as trusted issuer, the real
evaluator) runs on a werkzeug server on 127.0.0.1; the hook is called over HTTP with a
sandbox-signed JWT; the worksheet URL is taken from the card and loaded in Chromium. The assertions
read the DOM Chromium rendered, so they see what a coordinator's browser would show. Chromium
missing is a failure (``make test`` installs it), never a skip.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import BrowserPage, chromium_path, load_page, screenshot
from cds_helpers import (
    PATIENT_ID,
    SERVICE_PATH,
    base_settings,
    bearer,
    full_prefetch,
    hook_request,
    sandbox_issuer,
    sandbox_token,
    write_issuers,
)
from fake_fhir_server import serve_wsgi
from flask import Flask

from fhir_trial.app import create_app
from fhir_trial.canonical import REGISTRY_URL
from fhir_trial.cds_hooks.blueprint import cds_service
from fhir_trial.cds_hooks.worksheet import WorksheetStore
from fhir_trial.criteria.catalog import BY_ID, CRITERIA

AS_OF = "2026-11-26"
HOSTILE = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"


@dataclass
class Server:
    """The running app, its base URL and the worksheet link the hook returned."""

    app: Flask
    base: str
    card: dict[str, Any]
    worksheet_url: str
    pages: dict[str, BrowserPage] = field(default_factory=dict)

    def page(self, url: str) -> BrowserPage:
        """Load (once) ``url`` in Chromium."""
        if url not in self.pages:
            self.pages[url] = load_page(url)
        return self.pages[url]


class _Dom(HTMLParser):
    """The criterion rows, ids of elements and script/img elements of a rendered DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict[str, str]] = []
        self.ids: list[str] = []
        self.forbidden: list[str] = []
        self.urls: list[str] = []
        self._table = ""
        self._text_target: str | None = None
        self.texts: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if values.get("id"):
            self.ids.append(values["id"])
        if tag in ("script", "img", "iframe", "object", "embed", "link", "form"):
            self.forbidden.append(tag)
        self.urls += [values[k] for k in ("src", "href", "srcset", "action") if k in values]
        if tag == "table":
            self._table = values.get("id", "")
        if tag == "tr" and values.get("id", "").startswith("criterion-"):
            self.rows.append(
                {
                    "id": values["id"].removeprefix("criterion-"),
                    "table": self._table,
                    "class": values.get("class", ""),
                    "status": values.get("data-status", ""),
                }
            )
        if values.get("id") in ("verdict", "patient", "as-of", "link-problem"):
            self._text_target = values["id"]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("span", "dd", "main"):
            self._text_target = None

    def handle_data(self, data: str) -> None:
        if self._text_target:
            self.texts[self._text_target] = self.texts.get(self._text_target, "") + data


def _parse(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    return parser


def _tamper(url: str) -> str:
    head, token = url.rsplit("/", 1)
    body, signature = token.rsplit(".", 1)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{head}/{body}.{flipped}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Iterator[Server]:
    chromium_path()  # fail first, with the install hint, if there is no browser
    tmp = tmp_path_factory.mktemp("worksheet-browser")
    issuers = write_issuers(tmp / "issuers.json", [sandbox_issuer(shared_dir)])
    settings = base_settings(
        tmp,
        cds_trusted_issuers_file=issuers,
        cds_development_mode=False,
        cds_deadline_s=10.0,
    )
    app = create_app(settings)
    try:
        with serve_wsgi(app) as base:
            prefetch = full_prefetch()
            prefetch["allergyIntolerance"] = None  # the EHR could not give allergies: a warning
            token = sandbox_token(shared_dir, aud=f"{base}{SERVICE_PATH}")
            response = requests.post(
                f"{base}{SERVICE_PATH}",
                json=hook_request(prefetch),
                headers=bearer(token),
                timeout=30,
            )
            assert response.status_code == 200, response.text[:500]
            cards = response.json()["cards"]
            assert len(cards) == 1, cards
            (link,) = [x for x in cards[0]["links"] if "/worksheet/" in x["url"]]
            assert link["type"] == "absolute"  # the read-only fallback (no SMART registration)
            assert link["url"].startswith(f"{base}{SERVICE_PATH}/worksheet/")
            yield Server(app, base, cards[0], link["url"])
    finally:
        cds_service(app).close()


# ----------------------------------------------------------------------------------- the page
def test_the_card_link_renders_the_whole_report_in_chromium(server: Server) -> None:
    page = server.page(server.worksheet_url)
    dom = _parse(page.dom)
    assert "NCT06010472 screening worksheet (read-only)" in page.dom
    assert dom.texts["patient"].strip() == f"Patient/{PATIENT_ID}"
    assert dom.texts["as-of"].strip() == AS_OF
    assert dom.texts["verdict"].strip() == "Potentially eligible"

    # all 29 criteria, once each, in catalog order, inclusions and exclusions in their own table
    assert [r["id"] for r in dom.rows] == [spec.id for spec in CRITERIA]
    for row in dom.rows:
        assert row["table"] == BY_ID[row["id"]].kind, row
        assert row["status"] in ("met", "not-met", "unknown", "needs-review", "not-applicable")
    parts = [r["id"] for r in dom.rows if "part" in r["class"].split()]
    assert parts == ["inc-ana", "inc-anti-dsdna", "inc-anti-sm"]
    ids = [r["id"] for r in dom.rows]
    assert ids.index("inc-ana") == ids.index("inc-autoantibody") + 1

    # evidence, statuses in words, the warning about the allergies the EHR could not give
    assert "Condition/c1" in page.dom
    sle = next(r for r in dom.rows if r["id"] == "inc-sle-diagnosis")
    assert sle["status"] == "met" and "for" in sle["class"].split()
    assert "counts for eligibility" in page.dom and "open: data missing" in page.dom
    assert "Data problems" in page.dom and "AllergyIntolerance" in page.dom
    assert page.dom.index('id="data-problems"') < page.dom.index('id="inclusion"')

    # nothing active, nothing external, and the inline stylesheet was not refused by the CSP
    assert dom.forbidden == []
    assert dom.urls == [REGISTRY_URL]  # the one link out; no asset is loaded from anywhere
    assert not [x for x in page.console() if "Content Security Policy" in x], page.console()


def test_the_page_headers_keep_the_token_out_of_caches_and_referrers(server: Server) -> None:
    response = requests.get(server.worksheet_url, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp and "sha256-" in csp
    assert "<script" not in response.text and "<link" not in response.text


def test_a_tampered_token_shows_the_link_problem_page(server: Server) -> None:
    url = _tamper(server.worksheet_url)
    response = requests.get(url, timeout=30)
    assert response.status_code == 403
    assert response.headers["Cache-Control"] == "no-store"
    page = server.page(url)
    dom = _parse(page.dom)
    assert "link-problem" in dom.ids
    assert "invalid or has expired" in page.dom
    assert "Reopen the patient's chart" in page.dom
    assert "Traceback" not in page.dom and "criterion-" not in page.dom


def test_an_expired_token_shows_the_expired_page(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = server.app.config["FHIR_TRIAL_SETTINGS"]
    store = cds_service(server.app).worksheets
    real = time.time
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: real() - settings.worksheet_token_ttl_s - 60)
        _, token = store.save({"patient": f"Patient/{PATIENT_ID}", "criteria": []}, None)
    url = f"{server.base}{SERVICE_PATH}/worksheet/{token}"
    assert requests.get(url, timeout=30).status_code == 410
    page = server.page(url)
    assert "This worksheet link has expired" in page.dom
    assert "Reopen the patient's chart" in page.dom


def test_record_text_is_escaped_not_executed(server: Server) -> None:
    store: WorksheetStore = cds_service(server.app).worksheets
    report = {
        "study": "NCT06010472",
        "patient": f"Patient/{PATIENT_ID}",
        "asOf": AS_OF,
        "verdict": "potentially-eligible",
        "criteria": [
            {
                "id": "inc-age",
                "kind": "inclusion",
                "ref": "Incl 1",
                "status": "met",
                "reason": f"age 36 {HOSTILE}",
                "evidence": [f'Patient/{PATIENT_ID}"><script>alert(2)</script>'],
                "missing": [HOSTILE],
            }
        ],
        "warnings": [f"Observation could not be obtained: {HOSTILE}"],
    }
    _, token = store.save(report, None)
    page = server.page(f"{server.base}{SERVICE_PATH}/worksheet/{token}")
    dom = _parse(page.dom)
    assert dom.forbidden == []  # no <script>, <img> ... elements came out of the text
    assert "&lt;script&gt;document.title='owned'&lt;/script&gt;" in page.dom
    assert "<title>NCT06010472 screening worksheet</title>" in page.dom
    assert page.dom.count("&lt;img src=x onerror=alert(1)&gt;") == 3


def test_screenshot_of_the_worksheet(server: Server, tmp_path: Path) -> None:
    path = screenshot(server.worksheet_url, tmp_path / "worksheet.png", size=(1280, 2000))
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1280, 2000)


def test_a_storage_failure_is_an_html_503_not_a_trace(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cds_service(server.app).worksheets

    def broken(token: str) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "lookup", broken)
    response = requests.get(server.worksheet_url, timeout=30)
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert "could not be opened right now" in response.text
    assert "Traceback" not in response.text and "disk I/O" not in response.text
