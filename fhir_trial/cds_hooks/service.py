"""The screening behind the hook: request -> PatientRecord -> report -> cards, within the deadline.

:class:`CdsService` holds everything that lives as long as the worker process (issuer allowlist,
JWT verifier, SQLite stores, thread pools); :mod:`.blueprint` turns HTTP into calls to it. When the
prefetch holds everything, one call is bounded CPU work and runs in the request thread. When data
must be fetched from the EHR's FHIR server, fetching and evaluating run in a thread of their own
(one per hook call: no pool that a hung server could fill); the request thread waits at most
until the deadline and then answers with what it has: the cards, or the "could not be completed"
outcome. A prefetch that holds the Patient but nothing else usable is still evaluated: what the
Patient alone decides (age, death) is answered; otherwise the card says the screening could not
be completed (never a 412 when there is a Patient). Nothing here logs PHI or tokens: logs carry the hook
instance id, categories and short reasons only.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from fhir_trial.canonical import STUDY_ID
from fhir_trial.cds_hooks.auth import (
    ClientIdentity,
    JwksCache,
    JwtVerifier,
    ReplayStore,
    TrustedIssuer,
    load_trusted_issuers,
    normalise_base,
)
from fhir_trial.cds_hooks.cards import eligibility_card, incomplete_card, ineligible_card
from fhir_trial.cds_hooks.discovery import HOOK, SERVICE_ID
from fhir_trial.cds_hooks.feedback import FeedbackStore
from fhir_trial.cds_hooks.fetch import TIMED_OUT, FetchJob, FhirFetcher
from fhir_trial.cds_hooks.prefetch import PrefetchResult, add_resources, apply_prefetch
from fhir_trial.cds_hooks.store import Database
from fhir_trial.cds_hooks.worksheet import WorksheetStore
from fhir_trial.config import Settings
from fhir_trial.deadline import Deadline
from fhir_trial.deceased import vital_status
from fhir_trial.errors import FhirTrialError
from fhir_trial.evaluate import evaluate
from fhir_trial.record import OBSERVATION_COMPONENTS, PatientRecord
from fhir_trial.report import EligibilityReport
from fhir_trial.searches import NO_WORDS_SEARCH_WARNING, PlannedSearch, plan_searches
from fhir_trial.smart.links import smart_launch_url
from fhir_trial.sources.fhir_client import NO_COMPONENTS_WARNING, unresolved_study_references
from fhir_trial.terminology import Terminology, load_terminology

__all__ = [
    "CdsService",
    "HookError",
    "HookRequest",
    "Outcome",
    "normalise_patient_id",
]

log = logging.getLogger(__name__)

Evaluator = Callable[[PatientRecord, Settings], EligibilityReport]

_PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")
_ANSWER_RESERVE_S = 0.05


class HookError(Exception):
    """A request the service cannot take: ``status`` 400 (malformed/refused) or 412 (no data)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class HookRequest:
    """The parts of a validated hook call that the screening needs."""

    hook_instance: str
    patient_id: str
    prefetch: Mapping[str, Any] | None
    fhir_server: str | None
    access_token: str | None


@dataclass
class Outcome:
    """What one screening produced."""

    kind: Literal["report", "no-data", "incomplete"]
    report: EligibilityReport | None = None
    reason: str = ""
    failed_fetches: dict[str, str] = field(default_factory=dict)


def normalise_patient_id(raw: Any) -> str | None:
    """``123`` from ``123``, ``Patient/123`` or ``https://ehr/fhir/Patient/123``; None if unusable."""
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    if _PATIENT_ID.match(value):
        return value
    match = _PATIENT_REF.search(value)
    return match.group(1) if match else None


class CdsService:
    """The NCT06010472 enrollment service: verification, screening, cards, feedback, worksheet."""

    def __init__(self, settings: Settings, evaluator: Evaluator | None = None) -> None:
        self.settings = settings
        self.evaluator: Evaluator = evaluator or evaluate
        self.issuers: dict[str, TrustedIssuer] = load_trusted_issuers(
            settings.cds_trusted_issuers_file
        )
        self.database = Database(settings.database_path)
        self.replay_database = Database(settings.database_path, durable=False)
        self.verifier = JwtVerifier(
            settings, self.issuers, ReplayStore(self.replay_database), JwksCache()
        )
        self.feedback = FeedbackStore(self.database)
        secret = settings.secret_key
        if not secret:
            secret = secrets.token_urlsafe(32)
            log.warning(
                "no secret_key configured: worksheet links are signed with a per-process key and "
                "only work on the worker that made them; set FHIR_TRIAL_SECRET_KEY"
            )
        # Worksheet reports are a short-lived copy of what the card says, not user input: no fsync.
        self.worksheets = WorksheetStore(
            self.replay_database, secret, settings.worksheet_token_ttl_s
        )
        self.incomplete_cards = settings.cds_incomplete_card
        self.development = settings.cds_development_mode
        self._dev_fhir_servers = settings.cds_dev_fhir_servers
        if self.development:
            log.warning(
                "CDS HOOKS DEVELOPMENT MODE: JWT verification is OFF; any caller is trusted. "
                "Never run this in production."
            )
        elif not self.issuers:
            log.warning(
                "no trusted CDS clients configured (cds_trusted_issuers_file): every hook call gets 401"
            )
        terminology: Terminology | None = None
        try:
            terminology = load_terminology(settings.resources_dir)  # warm the cache, off the clock
        except FhirTrialError as exc:
            log.error("terminology not loadable; screenings will not complete: %s", exc.message)
        # What to ask the EHR for (prefetch templates and fetches): fhir_trial.searches.
        self.plan: tuple[PlannedSearch, ...] = plan_searches(
            terminology, settings.max_search_query_chars
        )
        self._planned: dict[str, PlannedSearch] = {search.key: search for search in self.plan}

    # ------------------------------------------------------------------ identity
    def authenticate(
        self,
        authorization: str | None,
        path: str,
        request_root: str,
        extra_paths: tuple[str, ...] = (),
    ) -> ClientIdentity:
        """Verify the caller (raises :class:`~.auth.AuthError`); development mode trusts anyone."""
        if self.development:
            return ClientIdentity(issuer=None, development=True)
        return self.verifier.verify(authorization, path, request_root, extra_paths)

    def fhir_server_allowed(self, identity: ClientIdentity, url: str) -> bool:
        """Whether this caller may make us fetch from ``url`` (no server-side request forgery)."""
        if identity.issuer is not None:
            return identity.issuer.fhir_server_allowed(url)
        if not identity.development:
            return False
        wanted = normalise_base(url)
        allowed = {normalise_base(u) for u in self._dev_fhir_servers}
        for issuer in self.issuers.values():
            allowed |= {normalise_base(u) for u in issuer.fhir_servers}
        return wanted is not None and wanted in allowed

    # ------------------------------------------------------------------ parsing
    def parse_request(self, body: Mapping[str, Any], identity: ClientIdentity) -> HookRequest:
        """The checks a schema cannot express; raises :class:`HookError` (400)."""
        if body.get("hook") != HOOK:
            raise HookError(
                400,
                "wrong-hook",
                f"this service answers the {HOOK} hook, not {str(body.get('hook'))[:40]!r}",
            )
        context = body.get("context") or {}
        patient_id = normalise_patient_id(context.get("patientId"))
        if patient_id is None:
            raise HookError(
                400, "bad-patient-id", "context.patientId must be a FHIR id (or Patient/<id>)"
            )
        fhir_server = body.get("fhirServer")
        token = None
        if fhir_server is not None:
            if normalise_base(fhir_server) is None:
                raise HookError(
                    400, "bad-fhir-server", "fhirServer must be a plain http(s) base URL"
                )
            if not self.fhir_server_allowed(identity, fhir_server):
                raise HookError(
                    400,
                    "fhir-server-not-allowed",
                    "fhirServer is not on the allowlist for this CDS client",
                )
            auth = body.get("fhirAuthorization")
            if isinstance(auth, Mapping):
                token = str(auth["access_token"])
        return HookRequest(
            hook_instance=str(body["hookInstance"]),
            patient_id=patient_id,
            prefetch=body.get("prefetch"),
            fhir_server=fhir_server,
            access_token=token,
        )

    # ------------------------------------------------------------------ the screening
    def run(self, hook: HookRequest, started: float | None = None) -> Outcome:
        """Screen within the deadline (measured from ``started``, a ``time.monotonic()`` value)."""
        budget = max(0.0, self.settings.cds_deadline_s - _ANSWER_RESERVE_S)
        if started is not None:
            budget -= time.monotonic() - started
        deadline = Deadline(
            budget,
            limit="cds_deadline_s",
            max_requests=self.settings.fhir_max_requests,
            requests_limit="fhir_max_requests",
        )
        record = PatientRecord()
        pre = apply_prefetch(record, hook.prefetch, hook.patient_id, self.plan)
        fhir_server = hook.fhir_server
        if not fhir_server:
            pre.settle_without_server(record)
        if self._deceased(record):
            # No card for a deceased patient (CRITERIA.md): nothing more the EHR sends changes
            # that, so nothing is fetched.
            return self._conclude(hook, record, {}, deadline)
        if not fhir_server or not (
            pre.pending
            or record.unresolved_medication_references()
            or unresolved_study_references(record)
        ):
            # Nothing to fetch: evaluating is bounded CPU work, done here without a thread handoff
            # (the deadline guards waits on the EHR's FHIR server, and there are none).
            return self._conclude(hook, record, {}, deadline)
        future = _in_own_thread(self._fetch_and_conclude, hook, fhir_server, record, pre, deadline)
        try:
            return future.result(timeout=deadline.remaining())
        except FutureTimeout:
            deadline.cancel()
            log.warning(
                "cds hook %s: the %.2f s deadline passed before the screening finished",
                _short(hook.hook_instance),
                self.settings.cds_deadline_s,
            )
            return Outcome(
                "incomplete", reason="the EHR's FHIR server did not answer in time (cds_deadline_s)"
            )

    def _fetch_and_conclude(
        self,
        hook: HookRequest,
        fhir_server: str,
        record: PatientRecord,
        pre: PrefetchResult,
        deadline: Deadline,
    ) -> Outcome:
        """Fetch what the prefetch lacked from ``fhir_server``, then evaluate (worker thread)."""
        page_size = self.settings.search_page_size
        jobs: dict[str, FetchJob] = {}
        for search in pre.to_fetch:
            fallback = search.code_fallback() if search.uses_combo_code else None
            jobs[search.key] = FetchJob(
                search.category,
                search.relative_url(hook.patient_id, page_size),
                fallback_url=fallback.relative_url(hook.patient_id, page_size)
                if fallback
                else None,
            )
        for key, url in pre.next_pages.items():
            jobs[key] = FetchJob(pre.category_of(key), url, continuing=True)
        fetcher = FhirFetcher(fhir_server, hook.access_token, self.settings, deadline)
        results = fetcher.fetch(jobs) if jobs else {}
        failed_fetches: dict[str, str] = {}
        fell_back = False
        for category, keys in pre.pending.items():
            errors: list[str] = []
            for key in keys:
                result = results[key]
                fell_back = fell_back or result.fell_back
                planned = self._planned.get(key)
                fills = planned.spec.fills if planned is not None else None
                if not result.error:  # evidence even when a sibling key failed
                    add_resources(record, result.resources, hook.patient_id, key)
                elif (
                    planned is not None and planned.searches_words and result.refused_as_unsupported
                ):
                    record.warnings.append(NO_WORDS_SEARCH_WARNING)  # see fhir_client
                elif fills:  # a NYHA search: only the criterion reading it is unknown
                    record.mark_failed(fills, str(result.error))
                    failed_fetches.setdefault(fills, str(result.error))
                else:
                    errors.append(str(result.error))
            if errors:
                record.mark_failed(category, errors[0])
                failed_fetches[category] = errors[0]
            else:
                record.mark_obtained(category)
        if fell_back:
            record.mark_failed(
                OBSERVATION_COMPONENTS, "the FHIR server refused combo-code; searched by code"
            )
            record.warnings.append(NO_COMPONENTS_WARNING)
        # After the categories: the resources just fetched may reference Medications (their drug)
        # and ResearchStudies (is it this study under a server-assigned id?).
        self._read_references(fetcher, record, deadline)
        return self._conclude(hook, record, failed_fetches, deadline)

    def _read_references(
        self, fetcher: FhirFetcher, record: PatientRecord, deadline: Deadline
    ) -> None:
        references = record.unresolved_medication_references()
        if references and not deadline.expired():
            medications, lost = fetcher.read_medications(references)
            for medication in medications:
                record.add(medication)
            if lost:
                # Not a failed category: the records are there, their drugs stay unidentified
                # (and the criteria review them rather than read them as absence).
                record.warnings.append(
                    f"{lost} referenced Medication resources could not be read from the EHR's "
                    "FHIR server"
                )
        studies = unresolved_study_references(record)
        if studies:
            found, lost = (
                fetcher.read_references(studies, "ResearchStudy")
                if not deadline.expired()
                else ([], len(studies))
            )
            for study in found:
                record.add(study)
            if lost:
                record.mark_failed(
                    "ResearchStudy",
                    f"{lost} ResearchStudy resource(s) referenced by the patient's "
                    "ResearchSubjects could not be read",
                )

    def _conclude(
        self,
        hook: HookRequest,
        record: PatientRecord,
        failed_fetches: dict[str, str],
        deadline: Deadline,
    ) -> Outcome:
        """The outcome for a record as complete as it will get: no data, or the evaluated report."""
        if failed_fetches:
            log.warning(
                "cds hook %s: could not fetch %s",
                _short(hook.hook_instance),
                "; ".join(f"{c}: {why}" for c, why in sorted(failed_fetches.items())),
            )
        if record.patient is None:
            why = record.failed.get("Patient", "the Patient could not be obtained")
            if failed_fetches.get("Patient") == TIMED_OUT or deadline.expired():
                return Outcome(
                    "incomplete",
                    reason="the EHR's FHIR server did not answer in time (cds_deadline_s)",
                )
            return Outcome("no-data", reason=f"Patient: {why}")
        try:
            report = self.evaluator(record, self.settings)
        except FhirTrialError as exc:
            log.error("cds hook %s: evaluation failed: %s", _short(hook.hook_instance), exc.message)
            return Outcome("incomplete", reason="the screening service is not configured correctly")
        if not (record.obtained - {"Patient"}) and not self._deceased(record):
            # Only the Patient: what it alone decides (a 17-year-old is ineligible) is answered;
            # anything else is "could not be completed", never a result that looks like one.
            if any(why == TIMED_OUT for why in failed_fetches.values()) or deadline.expired():
                why = "the EHR's FHIR server did not answer in time (cds_deadline_s)"
            else:
                why = "none of the patient's clinical data could be obtained"
            return Outcome("incomplete", report=report, reason=why, failed_fetches=failed_fetches)
        if failed_fetches:
            return Outcome(
                "incomplete",
                report=report,
                reason=_fetch_reason(failed_fetches),
                failed_fetches=failed_fetches,
            )
        return Outcome("report", report=report)

    def _deceased(self, record: PatientRecord) -> bool:
        """Whether the record's Patient was deceased on the screening date."""
        if record.patient is None:
            return False
        return vital_status(record.patient, self.settings.screening_date()).state == "deceased"

    # ------------------------------------------------------------------ cards
    def cards(self, hook: HookRequest, outcome: Outcome, base_url: str) -> list[dict[str, Any]]:
        """The cards for an outcome (the 412 case is handled by the caller)."""
        report = outcome.report
        if report is not None and report.deceased is not None:
            return []  # never a card for a deceased patient, whatever the settings say
        if report is not None and report.verdict == "ineligible":
            return [ineligible_card(report)] if self.settings.cds_cards_for_ineligible else []
        if outcome.kind == "incomplete" or report is None:
            return [incomplete_card(outcome.reason)] if self.incomplete_cards else []
        card_uuid = _uuid()
        report_json = report.to_json()
        report_id, token = self.worksheets.save(report_json, card_uuid)
        url = f"{base_url.rstrip('/')}/cds-services/{SERVICE_ID}/worksheet/{token}"
        app_context = orjson.dumps(
            {
                "study": STUDY_ID,
                "patient": f"Patient/{hook.patient_id}",
                "report": report_id,
                "worksheetToken": token,
            }
        ).decode()
        smart_url = smart_launch_url(self.settings, hook.fhir_server, base_url)
        return [eligibility_card(report, hook.patient_id, url, app_context, card_uuid, smart_url)]

    def close(self) -> None:
        """Nothing to stop: every hook call's threads end with its deadline (kept for callers)."""


def _in_own_thread(function: Callable[..., Outcome], *args: object) -> Future[Outcome]:
    """Run ``function`` in a daemon thread of its own; its Future carries the outcome.

    One thread per hook call, not a shared pool: a FHIR server that hangs holds only the threads
    of the calls that asked it, until their deadline, and never delays another hospital's call.
    """
    future: Future[Outcome] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the waiting request thread
            future.set_exception(exc)

    threading.Thread(target=run, name="cds-screen", daemon=True).start()
    return future


def _fetch_reason(failed: Mapping[str, str]) -> str:
    listed = ", ".join(f"{category} ({why})" for category, why in sorted(failed.items()))
    return f"some of the record could not be read from the EHR's FHIR server: {listed}"


def _short(hook_instance: str) -> str:
    return hook_instance[:64].replace("\n", " ")


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())
