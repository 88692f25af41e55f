"""HTTP for the SMART worksheet app.

Routes (all under ``/smart``):

    GET  /smart/launch                     EHR launch (``iss`` + ``launch``) or standalone (``iss``)
    GET  /smart/callback                   the authorization server's redirect (``code``, ``state``)
    GET  /smart/worksheet                  the worksheet of the launch's patient, with the answer form
    POST /smart/worksheet                  record the answers and decision (stored, then confirmed)
    GET  /smart/decisions/<id>             a recorded decision and its write state
    POST /smart/decisions/<id>/write       the confirmation step: write to the EHR (once)

Security: the session is an opaque random id in a cookie (``Secure; HttpOnly; SameSite=None;
Partitioned``, so the app works inside the EHR's frame); tokens stay server-side. Every POST form
carries the session's CSRF token. Every answer sends a Content-Security-Policy without scripts
(the one inline stylesheet is allowed by hash), ``form-action 'self'`` and ``frame-ancestors``
from the registrations, ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer``. The
redirect URI is fixed by configuration; ``iss`` must be an allowlisted FHIR base; ``state`` is
single use and bound to the browser that started the launch.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any

import requests
from flask import Blueprint, Flask, Response, current_app, request

from fhir_trial.answers import AnswerError, answerable_ids, apply_answers
from fhir_trial.cds_hooks.auth import normalise_base
from fhir_trial.cds_hooks.store import Database
from fhir_trial.cds_hooks.worksheet import private_page_headers, stylesheet_hash
from fhir_trial.config import Settings
from fhir_trial.errors import FhirTrialError
from fhir_trial.evaluate import evaluate
from fhir_trial.http_watchdog import guard_session
from fhir_trial.record import PatientRecord
from fhir_trial.report import Answer, EligibilityReport
from fhir_trial.smart.config import Registration, load_registrations
from fhir_trial.smart.oauth import (
    LaunchError,
    SmartConfiguration,
    authorize_url,
    discover,
    exchange_code,
)
from fhir_trial.smart.page import patient_summary, render_decision, render_problem, render_worksheet
from fhir_trial.smart.store import LAUNCH_TTL_S, SESSION_TTL_S, Decision, Session, SmartStore
from fhir_trial.smart.writes import write_decision
from fhir_trial.sources.fhir_client import FhirClient
from fhir_trial.study.questionnaire import DECISIONS, questionnaire_response

__all__ = ["SESSION_COOKIE", "SmartApp", "create_smart_blueprint", "smart_app"]

log = logging.getLogger(__name__)

PREFIX = "/smart"
SESSION_COOKIE = "fhir_trial_smart"
LAUNCH_COOKIE = "fhir_trial_smart_launch"
_KEY = "fhir_trial.smart_app"
_MAX_COMMENT = 2000
Evaluator = Callable[[PatientRecord, Settings], EligibilityReport]
_WRITE_STATES = {
    "recorded": "recorded, not yet written to the EHR",
    "writing": "being written to the EHR",
    "written": "written to the EHR",
    "failed": "writing to the EHR failed: kept for retry",
}


class SmartApp:
    """The app's state: registrations, the SQLite store, an HTTP session for the EHR."""

    def __init__(self, settings: Settings, evaluator: Evaluator | None = None) -> None:
        self.settings = settings
        self.evaluator: Evaluator = evaluator or evaluate
        self.registrations: dict[str, Registration] = load_registrations(
            settings.cds_trusted_issuers_file
        )
        self.store = SmartStore(Database(settings.database_path))
        self.http = requests.Session()
        guard_session(self.http)  # the EHR calls are bounded in total, not only per read

    def registration(self, iss: str | None) -> Registration | None:
        """The registration of an allowlisted FHIR base, or None."""
        normal = normalise_base(iss) if iss else None
        return self.registrations.get(normal) if normal else None

    def frame_ancestors(self) -> str:
        """The CSP ``frame-ancestors`` sources: the EHRs that may embed the app."""
        origins = sorted({o for r in self.registrations.values() for o in r.frame_ancestors})
        return " ".join(origins) if origins else "'none'"

    def redirect_uri(self, registration: Registration) -> str:
        """The fixed callback URL (configuration, else the service's public base URL)."""
        if registration.redirect_uri:
            return registration.redirect_uri
        base = self.settings.public_base_url or request.host_url
        return f"{base.rstrip('/')}{PREFIX}/callback"


def smart_app(app: Flask | None = None) -> SmartApp:
    """The :class:`SmartApp` registered on an app (the current app by default)."""
    target = app or current_app
    found: SmartApp = target.extensions[_KEY]
    return found


def redirect(location: str, status: int) -> Response:
    """A bare redirect (no body naming the target)."""
    response = Response("", status)
    response.headers["Location"] = location
    return response


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def create_smart_blueprint(settings: Settings, evaluator: Evaluator | None = None) -> Blueprint:
    """The SMART worksheet blueprint (``evaluator`` replaces the real one in tests)."""
    state = SmartApp(settings, evaluator)
    bp = Blueprint("smart", __name__, url_prefix=PREFIX)

    @bp.record_once
    def _remember(setup: Any) -> None:
        setup.app.extensions[_KEY] = state

    @bp.after_request
    def _headers(response: Response) -> Response:
        return private_page_headers(
            response,
            f"default-src 'none'; style-src '{stylesheet_hash()}'; img-src 'none'; "
            f"base-uri 'none'; form-action 'self'; frame-ancestors {state.frame_ancestors()}",
        )

    def problem(status: int, heading: str, message: str, advice: str = "") -> Response:
        advice = advice or "Open the worksheet again from the patient's chart in the EHR."
        return Response(render_problem(heading, message, advice), status, mimetype="text/html")

    def set_cookie(response: Response, name: str, value: str, max_age: float) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(max_age),
            path=PREFIX,
            secure=True,
            httponly=True,
            samesite="None",
            partitioned=True,
        )

    def current_session() -> Session | None:
        try:
            return state.store.session(request.cookies.get(SESSION_COOKIE))
        except sqlite3.Error as exc:
            log.error("smart session could not be read (%s)", type(exc).__name__)
            return None

    def no_session() -> Response:
        return problem(
            401,
            "The worksheet needs a launch from the EHR",
            "No current launch was found in this browser (it may have expired).",
        )

    def csrf_ok(session: Session) -> bool:
        sent = request.form.get("csrf", "")
        return bool(sent) and secrets.compare_digest(sent, session.csrf)

    def posting_session(route: str) -> Session | Response:
        """The session of a POST whose form carries its CSRF token, else the refusal page."""
        session = current_session()
        if session is None:
            return no_session()
        if not csrf_ok(session):
            log.info("smart %s: POST without a valid CSRF token", route)
            return problem(
                403,
                "The form could not be accepted",
                "The form was not sent from this worksheet (security check).",
            )
        return session

    # ------------------------------------------------------------------------------ launch
    @bp.get("/launch")
    def launch() -> Response:
        iss = request.args.get("iss", "")
        launch_id = request.args.get("launch")
        registration = state.registration(iss)
        if registration is None:
            log.info("smart launch refused: iss not on the allowlist")
            return problem(
                400,
                "This EHR is not registered for the worksheet",
                "The launch named a FHIR server that is not on the screening service's allowlist.",
                "Ask the service's administrators to register this EHR (its FHIR base URL).",
            )
        if launch_id is not None and (not launch_id or len(launch_id) > 2048):
            return problem(
                400, "The launch is malformed", "The EHR sent an empty or overlong launch id."
            )
        try:
            config = discover(state.http, registration.fhir_base)
        except LaunchError as exc:
            log.warning("smart launch failed: %s", exc.reason)
            return problem(exc.status, "The EHR's sign-in could not be reached", exc.reason)
        binding = secrets.token_urlsafe(24)
        redirect_uri = state.redirect_uri(registration)
        pending = state.store.start_launch(
            registration.fhir_base,
            launch_id,
            {
                "authorization_endpoint": config.authorization_endpoint,
                "token_endpoint": config.token_endpoint,
                "issuer": config.issuer,
                "jwks_uri": config.jwks_uri,
                "redirect_uri": redirect_uri,
            },
            binding,
        )
        target = authorize_url(
            config,
            registration,
            redirect_uri=redirect_uri,
            state=pending.state,
            verifier=pending.verifier,
            nonce=pending.nonce,
            launch=launch_id,
        )
        response = redirect(target, 302)
        set_cookie(response, LAUNCH_COOKIE, binding, LAUNCH_TTL_S)
        return response

    @bp.get("/callback")
    def callback() -> Response:
        state_param = request.args.get("state", "")
        if request.args.get("error"):
            log.info("smart authorization refused by the EHR")
            return problem(
                400,
                "The EHR did not authorise the worksheet",
                "The EHR's authorization server answered with an error instead of a code.",
            )
        code = request.args.get("code", "")
        pending = (
            state.store.take_launch(state_param, request.cookies.get(LAUNCH_COOKIE))
            if state_param
            else None
        )
        if pending is None or not code:
            log.info("smart callback refused: unknown, expired or foreign state")
            return problem(
                400,
                "This sign-in cannot be completed",
                "The sign-in answer does not belong to a launch started in this browser, or it "
                "has expired or was already used.",
            )
        registration = state.registration(pending.fhir_base)
        if registration is None:
            return problem(
                400,
                "This EHR is no longer registered",
                "The launch's FHIR server left the allowlist.",
            )
        cfg = pending.authorize_config
        config = SmartConfiguration(
            authorization_endpoint=str(cfg["authorization_endpoint"]),
            token_endpoint=str(cfg["token_endpoint"]),
            issuer=cfg.get("issuer"),
            jwks_uri=cfg.get("jwks_uri"),
        )
        try:
            token = exchange_code(
                state.http,
                config,
                registration,
                code=code,
                redirect_uri=str(cfg["redirect_uri"]),
                verifier=pending.verifier,
                nonce=pending.nonce,
            )
        except LaunchError as exc:
            log.warning("smart token exchange failed: %s", exc.reason)
            return problem(exc.status, "The EHR did not give the worksheet access", exc.reason)
        if not token.patient:
            return problem(
                400,
                "No patient was chosen",
                "The EHR's answer named no patient; the worksheet works on one patient's chart.",
            )
        session_id = state.store.create_session(
            fhir_base=registration.fhir_base,
            patient=token.patient,
            fhir_user=token.fhir_user,
            access_token=token.access_token,
            token_expires=token.expires_at,
            scope=token.scope,
        )
        response = redirect(f"{PREFIX}/worksheet", 303)
        set_cookie(response, SESSION_COOKIE, session_id, SESSION_TTL_S)
        response.delete_cookie(LAUNCH_COOKIE, path=PREFIX, secure=True, samesite="None")
        return response

    # ------------------------------------------------------------------------------ worksheet
    def screen(session: Session) -> tuple[EligibilityReport, dict[str, str]] | Response:
        try:
            with FhirClient(
                session.fhir_base, token=session.access_token, settings=settings
            ) as client:
                record = client.fetch_patient_record(session.patient)
        except (FhirTrialError, requests.RequestException, ValueError) as exc:
            log.warning("smart worksheet: the record could not be read (%s)", type(exc).__name__)
            return problem(
                502,
                "The patient's record could not be read",
                "The EHR's FHIR server did not give the patient's data; nothing was concluded.",
                "Try again in a moment, or open the worksheet again from the patient's chart.",
            )
        report = state.evaluator(record, settings)
        summary = patient_summary(record.patient, report.patient, report.as_of)
        return report, summary

    def decision_links(session: Session) -> list[dict[str, str]]:
        return [
            {
                "url": f"{PREFIX}/decisions/{d.id}",
                "label": DECISIONS[d.decision][2],
                "when": d.decided_at,
                "author": d.author or "an unidentified user",
                "state": _WRITE_STATES.get(d.write_state, d.write_state),
            }
            for d in state.store.decisions_for(session.fhir_base, f"Patient/{session.patient}")
        ]

    @bp.get("/worksheet")
    def worksheet() -> Response:
        session = current_session()
        if session is None:
            return no_session()
        screened = screen(session)
        if isinstance(screened, Response):
            return screened
        report, summary = screened
        page = render_worksheet(
            report.to_json(),
            summary,
            answerable_ids(report),
            action=f"{PREFIX}/worksheet",
            csrf=session.csrf,
            form_key=secrets.token_urlsafe(16),
            decisions=decision_links(session),
        )
        return Response(page, 200, mimetype="text/html")

    @bp.post("/worksheet")
    def record() -> Response:
        session = posting_session("worksheet")
        if isinstance(session, Response):
            return session
        decision = request.form.get("decision", "")
        form_key = request.form.get("form_key", "")
        if decision not in DECISIONS or not form_key or len(form_key) > 100:
            return problem(
                400,
                "Choose a decision",
                "The decision (refer, not eligible, needs more data) is required.",
                "Go back, choose a decision and record it again; your answers are still on the page.",
            )
        screened = screen(session)
        if isinstance(screened, Response):
            return screened
        report, summary = screened
        open_now = set(answerable_ids(report))
        when = _now()
        answers: list[Answer] = []
        for key, value in request.form.items():
            if not key.startswith("answer-") or value == "":
                continue
            cid = key.removeprefix("answer-")
            if cid not in open_now or value not in ("met", "not-met"):
                return problem(
                    409,
                    "The record changed since the worksheet was shown",
                    f"{cid} can no longer be answered: the record now decides it.",
                    "Open the worksheet again and review the answers.",
                )
            comment = request.form.get(f"comment-{cid}", "").strip()[:_MAX_COMMENT]
            answers.append(Answer(cid, value, comment, session.fhir_user, when))  # type: ignore[arg-type]
        try:
            answered = apply_answers(report, answers)
        except AnswerError as exc:
            return problem(409, "An answer could not be applied", str(exc))
        try:
            decision_id = state.store.record_decision(
                form_key=form_key,
                fhir_base=session.fhir_base,
                patient=report.patient,
                decision=decision,
                comment=request.form.get("decision_comment", "").strip()[:_MAX_COMMENT],
                answers=[a.to_json() for a in answers],
                author=session.fhir_user,
                decided_at=when,
                verdict=answered.verdict,
                report={"report": answered.to_json(), "patient": summary},
            )
        except sqlite3.Error as exc:
            log.error("smart decision could not be stored (%s)", type(exc).__name__)
            return problem(
                503,
                "The decision could not be stored",
                "Nothing was recorded. Go back and record it again in a moment.",
            )
        return redirect(f"{PREFIX}/decisions/{decision_id}", 303)

    # ------------------------------------------------------------------------------ decisions
    def owned_decision(session: Session, decision_id: str) -> Decision | None:
        found = state.store.decision(decision_id)
        if found is None or found.fhir_base != session.fhir_base:
            return None
        if found.patient != f"Patient/{session.patient}":
            return None
        return found

    def no_such_decision() -> Response:
        return problem(
            404,
            "No such decision for this patient",
            "The decision was not found for the patient of this launch.",
        )

    @bp.get("/decisions/<decision_id>")
    def show_decision(decision_id: str) -> Response:
        session = current_session()
        if session is None:
            return no_session()
        found = owned_decision(session, decision_id)
        if found is None:
            return no_such_decision()
        stored = found.report
        result = found.write_result or {}
        write = {
            "state": found.write_state,
            "steps": result.get("steps", []),
            "error": found.write_error,
            "relaunch": bool(result.get("relaunch")),
            "cannot_write": bool(result.get("cannotWrite")),
            "can_try": found.write_state in ("recorded", "failed")
            and not result.get("cannotWrite"),
            "action": f"{PREFIX}/decisions/{found.id}/write",
            "server": found.fhir_base,
            "subject_status": DECISIONS[found.decision][0],
        }
        decision = {
            "label": DECISIONS[found.decision][2],
            "when": found.decided_at,
            "author": found.author,
            "comment": found.comment,
            "answer_count": len(found.answers),
        }
        page = render_decision(
            stored["report"],
            stored["patient"],
            decision,
            write,
            csrf=session.csrf,
            back=f"{PREFIX}/worksheet",
        )
        return Response(page, 200, mimetype="text/html")

    @bp.post("/decisions/<decision_id>/write")
    def write(decision_id: str) -> Response:
        session = posting_session("decision write")
        if isinstance(session, Response):
            return session
        found = owned_decision(session, decision_id)
        if found is None:
            return no_such_decision()
        back = redirect(f"{PREFIX}/decisions/{found.id}", 303)
        if session.token_expired:
            if found.write_state in ("recorded", "failed"):
                state.store.finish_write(
                    found.id,
                    "failed",
                    {"steps": (found.write_result or {}).get("steps", []), "relaunch": True},
                    "the launch's access to the EHR has expired: nothing was written",
                )
            return back
        if not state.store.claim_write(found.id):
            latest = state.store.decision(found.id)
            if latest is not None and latest.write_state in ("recorded", "failed"):
                # Refused because another decision for this patient is being written right now:
                # nothing was sent; the coordinator retries once that one is done.
                state.store.finish_write(
                    found.id,
                    "failed",
                    latest.write_result,
                    "another decision for this patient was being written to the EHR at that "
                    "moment: nothing was sent; retry in a moment",
                )
            return back  # already written, or being written by an earlier click
        response = questionnaire_response(
            patient=found.patient,
            answers=[Answer(**a) for a in found.answers],
            decision=found.decision,
            comment=found.comment,
            author=found.author,
            authored=found.decided_at,
            identifier=f"urn:uuid:{found.id}",
        )
        try:
            outcome = write_decision(
                state.http,
                session.fhir_base,
                session.access_token,
                patient=found.patient,
                subject_status=DECISIONS[found.decision][0],
                identifier=f"urn:uuid:{found.id}",
                response=response,
            )
        except Exception as exc:  # the claim must never stay "writing"
            log.error("smart decision write failed unexpectedly (%s)", type(exc).__name__)
            state.store.finish_write(
                found.id, "failed", None, "the write failed unexpectedly; retry"
            )
            return back
        state.store.finish_write(
            found.id, "written" if outcome.ok else "failed", outcome.to_json(), outcome.error
        )
        log.info("smart decision %s: %s", found.id, "written" if outcome.ok else "write failed")
        return back

    return bp
