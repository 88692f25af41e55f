"""The SMART worksheet in a real headless Chromium (Playwright driving Debian's chromium).

The whole coordinator workflow, embedded in the EHR's frame as an EHR shows it: the CDS hook
returns a card whose ``smart`` link is the app's launch URL; the fake EHR's chart page frames that
URL with ``launch`` and ``iss``; the app discovers the EHR's authorization server, goes through the
authorize redirect (PKCE S256) and the token call, and shows the patient's worksheet; the
coordinator answers the open items by keyboard and mouse and records a decision; the app is
restarted (a new app object on the same SQLite file); the decision is still there; the
coordinator confirms and the app writes the ResearchSubject and the QuestionnaireResponse to the
EHR. Screenshots of each page are saved under ``tests/screenshots/`` (gitignored) for review.

The app is served as ``http://localhost:N`` (a secure context for Chromium, so its ``Secure``
cookies work without TLS) and the EHR as ``http://127.0.0.1:M``: two sites, so the frame is a
third-party context and the session cookie must be ``SameSite=None; Secure; Partitioned``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from browser import chromium_path
from cds_helpers import SERVICE_PATH, bearer, full_prefetch, hook_request, sandbox_token
from fake_fhir_server import serve_wsgi
from fake_smart_ehr import FHIR_USER, FakeSmartEhr
from flask import Response
from playwright.sync_api import Frame, Page, sync_playwright
from smart_helpers import PATIENT_ID, load_patient, smart_settings

from fhir_trial.app import create_app
from fhir_trial.config import Settings

SCREENSHOTS = Path(__file__).parent / "screenshots"


class Swappable:
    """A WSGI app whose target can be replaced while it is served (an app restart)."""

    def __init__(self) -> None:
        self.app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@dataclass
class World:
    """The running EHR and app."""

    ehr: FakeSmartEhr
    app_base: str
    settings: Settings
    wsgi: Swappable


@pytest.fixture
def world(tmp_path: Path, shared_dir: Path) -> Iterator[World]:
    chromium_path()  # fail first, with the install hint, if there is no browser
    wsgi = Swappable()
    with serve_wsgi(wsgi) as served:
        app_base = served.replace("127.0.0.1", "localhost")
        with FakeSmartEhr(
            patient_id=PATIENT_ID, redirect_uris=(f"{app_base}/smart/callback",)
        ) as ehr:
            load_patient(ehr)

            @ehr.app.get("/ehr/chart")
            def chart() -> Response:  # the EHR's chart page, framing the card's SMART link
                from flask import request

                src = request.args["app"]
                page = (
                    "<!doctype html><title>EHR chart</title><h1>Chart of Mei Wang</h1>"
                    f'<iframe id="app" title="Screening worksheet" src="{src}" '
                    'style="width:1250px;height:1900px;border:1px solid #888"></iframe>'
                )
                return Response(page, mimetype="text/html")

            settings = smart_settings(tmp_path, shared_dir, ehr, app_base)
            wsgi.app = create_app(settings)
            yield World(ehr, app_base, settings, wsgi)


def _card_smart_link(world: World, shared_dir: Path) -> dict[str, Any]:
    prefetch = full_prefetch(PATIENT_ID)
    body = hook_request(prefetch, fhirServer=world.ehr.base_url)
    body["context"]["patientId"] = PATIENT_ID
    token = sandbox_token(shared_dir, aud=f"{world.app_base}{SERVICE_PATH}")
    answer = requests.post(
        f"{world.app_base}{SERVICE_PATH}", json=body, headers=bearer(token), timeout=30
    )
    assert answer.status_code == 200, answer.text[:500]
    (card,) = answer.json()["cards"]
    kinds = {link["type"]: link for link in card["links"] if "registry" not in link["label"]}
    smart = next(link for link in card["links"] if link["type"] == "smart")
    assert smart["url"] == f"{world.app_base}/smart/launch"
    fallback = [link for link in card["links"] if "/worksheet/" in link["url"]]
    assert fallback and fallback[0]["type"] == "absolute"
    assert kinds
    return smart


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _frame(page: Page) -> Frame:
    frame = None
    for candidate in page.frames:
        if "/smart/" in candidate.url:
            frame = candidate
    assert frame is not None, [f.url for f in page.frames]
    return frame


def test_the_coordinator_workflow_in_chromium_embedded_in_the_ehr(
    world: World, shared_dir: Path
) -> None:
    smart = _card_smart_link(world, shared_dir)
    launch_url = f"{smart['url']}?{urlencode({'iss': world.ehr.base_url, 'launch': 'ctx-42'})}"
    chart = f"{world.ehr.origin}/ehr/chart?{urlencode({'app': launch_url})}"
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=["--no-sandbox", "--host-resolver-rules=MAP localhost 127.0.0.1"],
        )
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 2000})
            page.on("console", lambda message: console.append(message.text))
            page.goto(chart)
            page.wait_for_function(
                "() => [...document.querySelectorAll('iframe')].length === 1", timeout=30_000
            )
            frame = page.frame_locator("iframe#app")
            frame.locator("#worksheet-form").wait_for(timeout=60_000)
            worksheet = _frame(page)
            assert worksheet.url == f"{world.app_base}/smart/worksheet"  # no code, no token

            # --- the page: study, patient by name, age and sex, verdict, open items first
            assert frame.locator("h1").inner_text() == "NCT06010472 screening worksheet"
            assert frame.locator("#patient").inner_text() == "Mei Wang"
            assert frame.locator("#age-sex").inner_text() == "36 years, female"
            assert frame.locator("#verdict").inner_text() == "Potentially eligible"
            statuses = frame.locator("#inclusion tbody tr").evaluate_all(
                "rows => rows.filter(r => !r.classList.contains('part')).map(r => r.dataset.status)"
            )
            open_count = sum(1 for s in statuses if s in ("unknown", "needs-review"))
            assert all(s in ("unknown", "needs-review") for s in statuses[:open_count])
            assert "Condition/c1" in frame.locator("#criterion-inc-sle-diagnosis").inner_text()
            # every form control has a label
            unlabeled = frame.locator("input:not([type=hidden]), textarea").evaluate_all(
                "els => els.filter(e => !(e.labels && e.labels.length)).map(e => e.name)"
            )
            assert unlabeled == []
            _shot(page, "1-worksheet")

            # --- answering: the consent by keyboard, the rest by mouse
            consent = frame.locator("#answer-inc-consent-met")
            consent.focus()
            page.keyboard.press("Space")
            assert consent.is_checked()
            frame.locator("#comment-inc-consent").fill("Consent form signed 2026-11-20")
            names = frame.locator("input[type=radio][value=met]").evaluate_all(
                "els => els.map(e => e.name)"
            )
            for name in names:
                cid = name.removeprefix("answer-")
                if cid == "inc-consent":
                    continue
                choice = "met" if cid.startswith("inc-") else "not-met"
                frame.locator(f"#answer-{cid}-{choice}").check()
            frame.locator("#decision-refer").check()
            frame.locator("#decision-comment").fill("Refer to the study team, Dr Wang")
            frame.locator("#record").click()
            frame.locator("#recorded").wait_for(timeout=60_000)
            assert frame.locator("#verdict").inner_text() == "Eligible"
            assert frame.locator("#decided-by").inner_text() == FHIR_USER
            answered = frame.locator("#answer-inc-consent").inner_text()
            assert "Consent form signed 2026-11-20" in answered and FHIR_USER in answered
            _shot(page, "2-decision-recorded")

            # --- stored before the page confirmed
            conn = sqlite3.connect(world.settings.database_path)
            rows = conn.execute(
                "SELECT decision, author, write_state, verdict FROM smart_decision"
            ).fetchall()
            conn.close()
            assert rows == [("refer", FHIR_USER, "recorded", "eligible")]
            assert world.ehr.resources("ResearchSubject") == []

            # --- a restart of the app in between loses nothing
            world.wsgi.app = create_app(world.settings)
            reopened = _frame(page)
            reopened.goto(reopened.url)
            frame.locator("#recorded").wait_for(timeout=60_000)
            assert "Refer to the study team" in frame.locator("#recorded").inner_text()

            # --- the confirmation step writes to the EHR, once, and shows its answer
            frame.locator("#confirm-write").click()
            frame.locator("#written").wait_for(timeout=60_000)
            shown = frame.locator("#written").inner_text()
            assert "ResearchSubject created: HTTP 201" in shown
            assert "QuestionnaireResponse created: HTTP 201" in shown
            _shot(page, "3-written-to-the-ehr")
        finally:
            browser.close()

    (subject,) = world.ehr.resources("ResearchSubject")
    assert subject["status"] == "candidate"
    assert subject["individual"] == {"reference": f"Patient/{PATIENT_ID}"}
    assert subject["study"]["identifier"]["value"] == "NCT06010472"
    (response,) = world.ehr.resources("QuestionnaireResponse")
    assert response["author"] == {"reference": FHIR_USER}
    assert response["subject"] == {"reference": f"Patient/{PATIENT_ID}"}
    consent = next(i for i in response["item"] if i["linkId"] == "inc-consent")
    assert consent["item"][0]["answer"] == [{"valueBoolean": True}]
    assert consent["item"][1]["answer"] == [{"valueString": "Consent form signed 2026-11-20"}]
    decision = next(i for i in response["item"] if i["linkId"] == "decision")
    assert decision["answer"][0]["valueCoding"]["code"] == "candidate"
    assert not [m for m in console if "Content Security Policy" in m], console
    asked = world.ehr.authorize_requests[0]
    assert asked["launch"] == "ctx-42" and asked["code_challenge_method"] == "S256"
