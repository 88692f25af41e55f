"""Writing a recorded decision back to the EHR's FHIR server.

1. The server's CapabilityStatement (``GET [base]/metadata``) must list ResearchSubject with
   ``search-type`` and ``create``/``update``, and QuestionnaireResponse with ``create``; if it does
   not, nothing is sent and the page says so plainly (the decision stays stored here).
2. The patient's ResearchSubject for this study is updated, never duplicated:
   ``GET ResearchSubject?individual=Patient/<id>``, matched on the study's identifier
   (``https://clinicaltrials.gov|NCT06010472``) or a reference to our ResearchStudy; a match is
   updated (``PUT``, ``If-Match`` its version); otherwise one is created with ``If-None-Exist`` on
   the decision's identifier, so a retry after a lost answer does not add a second.
3. The answers go as a QuestionnaireResponse, created with ``If-None-Exist`` on the same identifier.

Every step's answer (status, location) is returned for the page; a failure names the step and
what the server said (its OperationOutcome diagnostics, shortened) and is kept for retry. A 401 or
403 means the launch's token no longer works: a new launch from the EHR is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from fhir_trial.canonical import NCT_SYSTEM, STUDY_ID, STUDY_RESOURCE_ID
from fhir_trial.http_watchdog import CutOff, within

__all__ = ["WriteOutcome", "capability_problem", "write_decision"]

TIMEOUT_S = 15.0
MAX_BYTES = 2 * 1024 * 1024
FHIR_JSON = "application/fhir+json"
IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"


class _WriteFailed(Exception):
    def __init__(self, message: str, relaunch: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.relaunch = relaunch


@dataclass
class WriteOutcome:
    """What happened: every step the server answered, and the error that stopped it."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    relaunch: bool = False  # the token no longer works: launch again from the EHR
    cannot_write: bool = False  # the server says it does not take these writes

    @property
    def ok(self) -> bool:
        """Whether everything was written."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """For storage beside the decision."""
        return {"steps": self.steps, "relaunch": self.relaunch, "cannotWrite": self.cannot_write}


def _headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, **extra}


def _diagnostics(body: Any) -> str:
    if isinstance(body, Mapping) and body.get("resourceType") == "OperationOutcome":
        texts = [
            str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
            for i in body.get("issue", [])
            if isinstance(i, Mapping)
        ]
        said = "; ".join(t for t in texts if t)
        return said[:300]
    return ""


def _call(
    http: requests.Session, method: str, url: str, token: str, what: str, **kwargs: Any
) -> tuple[int, Any, requests.structures.CaseInsensitiveDict[str]]:
    # TIMEOUT_S bounds each socket read; the watchdog bounds the whole answer (a server trickling
    # its headers would otherwise hold this thread, and the decision in "writing", for as long as
    # it goes on). The answer is not streamed: its body is read inside the watch too.
    try:
        response = within(
            TIMEOUT_S,
            lambda: http.request(method, url, timeout=TIMEOUT_S, allow_redirects=False, **kwargs),
        )
    except CutOff as exc:
        raise _WriteFailed(f"{what}: the FHIR server sent {exc}") from exc
    except requests.RequestException as exc:
        raise _WriteFailed(
            f"{what}: the FHIR server could not be reached ({type(exc).__name__})"
        ) from exc
    body: Any = None
    if response.content and len(response.content) <= MAX_BYTES:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
    if response.status_code in (401, 403):
        raise _WriteFailed(
            f"{what}: the FHIR server refused the launch's access (HTTP {response.status_code}); "
            "it may have expired",
            relaunch=True,
        )
    if response.status_code >= 300:
        said = _diagnostics(body)
        raise _WriteFailed(
            f"{what}: the FHIR server answered HTTP {response.status_code}"
            + (f": {said}" if said else "")
        )
    return response.status_code, body, response.headers


def capability_problem(http: requests.Session, base: str, token: str) -> str | None:
    """Why the server cannot take the writes (None when its CapabilityStatement says it can).

    A server that cannot be read raises ``_WriteFailed`` (a failure to retry, not a refusal).
    """
    _, body, _ = _call(
        http,
        "GET",
        f"{base}/metadata",
        token,
        "reading the CapabilityStatement",
        headers=_headers(token),
    )
    if not isinstance(body, Mapping) or body.get("resourceType") != "CapabilityStatement":
        return "the FHIR server did not return a CapabilityStatement"
    interactions: dict[str, set[str]] = {}
    for rest in body.get("rest", []) or []:
        if not isinstance(rest, Mapping) or rest.get("mode") != "server":
            continue
        for resource in rest.get("resource", []) or []:
            if isinstance(resource, Mapping):
                codes = {
                    str(i.get("code"))
                    for i in resource.get("interaction", []) or []
                    if isinstance(i, Mapping)
                }
                interactions.setdefault(str(resource.get("type")), set()).update(codes)
    missing = []
    subject = interactions.get("ResearchSubject", set())
    if "search-type" not in subject or not {"create", "update"} <= subject:
        missing.append("search, create and update ResearchSubject")
    if "create" not in interactions.get("QuestionnaireResponse", set()):
        missing.append("create QuestionnaireResponse")
    if missing:
        return (
            "this EHR's FHIR server does not say it can "
            + " or ".join(missing)
            + " (its CapabilityStatement)"
        )
    return None


def _same_study(subject: Mapping[str, Any]) -> bool:
    study = subject.get("study")
    if not isinstance(study, Mapping):
        return False
    identifier = study.get("identifier")
    if isinstance(identifier, Mapping) and (
        identifier.get("system") == NCT_SYSTEM and identifier.get("value") == STUDY_ID
    ):
        return True
    reference = str(study.get("reference") or "")
    return reference.split("/_history")[0].endswith(f"ResearchStudy/{STUDY_RESOURCE_ID}")


def _same_patient(subject: Mapping[str, Any], patient: str) -> bool:
    individual = subject.get("individual")
    reference = str(individual.get("reference", "")) if isinstance(individual, Mapping) else ""
    return reference == patient or reference.endswith(f"/{patient}")


def _existing_subject(
    http: requests.Session, base: str, token: str, patient: str
) -> dict[str, Any] | None:
    _, bundle, _ = _call(
        http,
        "GET",
        f"{base}/ResearchSubject",
        token,
        "finding the patient's ResearchSubject",
        params={"individual": patient, "_count": "100"},
        headers=_headers(token),
    )
    entries = bundle.get("entry", []) if isinstance(bundle, Mapping) else []
    for entry in entries or []:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        # Matched here as well: a lenient server may ignore the search parameter.
        if (
            isinstance(resource, Mapping)
            and resource.get("resourceType") == "ResearchSubject"
            and _same_patient(resource, patient)
            and _same_study(resource)
        ):
            return dict(resource)
    return None


def _step(
    what: str, action: str, status: int, body: Any, headers: Mapping[str, str]
) -> dict[str, Any]:
    resource = body if isinstance(body, Mapping) and body.get("resourceType") else {}
    meta = resource.get("meta") if isinstance(resource.get("meta"), Mapping) else {}
    location = headers.get("Location") or headers.get("Content-Location") or ""
    if not location and resource.get("id"):
        location = f"{resource.get('resourceType')}/{resource['id']}"
    return {
        "resource": what,
        "action": action,
        "status": status,
        "location": location,
        "id": resource.get("id"),
        "version": meta.get("versionId") if isinstance(meta, Mapping) else None,
    }


def _create_once(
    http: requests.Session,
    base: str,
    token: str,
    resource_type: str,
    resource: Mapping[str, Any],
    identifier: str,
) -> dict[str, Any]:
    """Create ``resource`` unless the server holds one with the decision's ``identifier``.

    ``If-None-Exist`` makes a retry after a lost answer find the first one instead of adding a
    second; the step says "created" (201) or "already there".
    """
    status, body, answer_headers = _call(
        http,
        "POST",
        f"{base}/{resource_type}",
        token,
        f"creating the {resource_type}",
        headers=_headers(
            token,
            **{
                "Content-Type": FHIR_JSON,
                "If-None-Exist": f"identifier={IDENTIFIER_SYSTEM}|{identifier}",
            },
        ),
        data=json.dumps(resource),
    )
    action = "created" if status == 201 else "already there"
    return _step(resource_type, action, status, body, answer_headers)


def write_decision(
    http: requests.Session,
    base: str,
    token: str,
    *,
    patient: str,
    subject_status: str,
    identifier: str,
    response: Mapping[str, Any],
) -> WriteOutcome:
    """Write the ResearchSubject and the QuestionnaireResponse (see the module docstring)."""
    outcome = WriteOutcome()
    base = base.rstrip("/")
    try:
        problem = capability_problem(http, base, token)
        if problem is not None:
            outcome.error = problem
            outcome.cannot_write = True
            return outcome
        existing = _existing_subject(http, base, token, patient)
        if existing is not None:
            updated = {**existing, "status": subject_status}
            headers = _headers(token, **{"Content-Type": FHIR_JSON})
            version = (existing.get("meta") or {}).get("versionId")
            if version:
                headers["If-Match"] = f'W/"{version}"'
            status, body, answer_headers = _call(
                http,
                "PUT",
                f"{base}/ResearchSubject/{existing['id']}",
                token,
                "updating the ResearchSubject",
                headers=headers,
                data=json.dumps(updated),
            )
            outcome.steps.append(_step("ResearchSubject", "updated", status, body, answer_headers))
        else:
            subject = {
                "resourceType": "ResearchSubject",
                "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}],
                "status": subject_status,
                "study": {
                    "identifier": {"system": NCT_SYSTEM, "value": STUDY_ID},
                    "display": f"{STUDY_ID}: anti-CD19 CAR-NK cells for refractory SLE",
                },
                "individual": {"reference": patient},
            }
            outcome.steps.append(
                _create_once(http, base, token, "ResearchSubject", subject, identifier)
            )
        outcome.steps.append(
            _create_once(http, base, token, "QuestionnaireResponse", response, identifier)
        )
    except _WriteFailed as failed:
        outcome.error = failed.message
        outcome.relaunch = failed.relaunch
    return outcome
