"""Publish the study's resources to a FHIR server as ONE transaction of conditional updates.

Each resource becomes one ``PUT`` entry, chosen so that publishing twice creates nothing new:

    resource with a canonical ``url``   PUT Type?url=<url>[&version=<version>]
    else with an identifier             PUT Type?identifier=<system>|<value>
                                        (the project's urn:ietf:rfc:3986 canonical identifier if it
                                        has one, else the official one, else the first)
    else                                PUT Type/<id>                     (the fixed id)

Conditional entries carry no ``id`` (the server keeps its own id for a matched resource, or
assigns one), and every entry has a deterministic ``urn:uuid`` fullUrl; references between the
published resources (``Organization/<id>``) are rewritten to those fullUrls so that the server
points them at whatever ids it uses. Canonical references (``PlanDefinition.library``) need no
rewriting.

The server's ``transaction-response`` is read entry by entry: ``201`` is *created*; ``200`` is
*updated*, or *unchanged* when the entry's ``outcome`` carries a no-change storage code (HAPI FHIR's
``SUCCESSFUL_UPDATE_NO_CHANGE`` / ``..._WITH_CONDITIONAL_MATCH_NO_CHANGE``). A server that does not
say so reports every re-published resource as *updated*; it still creates nothing new.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fhir_trial.canonical import BASE
from fhir_trial.config import Settings
from fhir_trial.elements import child, objects
from fhir_trial.errors import InputError, NotFhirResponseError
from fhir_trial.fhir_http import FhirHttp

__all__ = [
    "EntryResult",
    "PublishResult",
    "build_transaction",
    "conditional_url",
    "publish",
    "read_results",
]

JsonDict = dict[str, Any]
URI_SYSTEM = "urn:ietf:rfc:3986"
_FULLURL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, BASE)


@dataclass(frozen=True)
class EntryResult:
    """What the server did with one published resource."""

    resource: str  # "ValueSet/sle": the local Type/id
    request: str  # "PUT ValueSet?url=..."
    status: str  # the server's response.status, e.g. "201 Created"
    action: str  # created | updated | unchanged
    location: str | None  # the server's Type/id/_history/N

    def line(self) -> str:
        """One human-readable line."""
        where = f" -> {self.location}" if self.location else ""
        return f"{self.action:<9} {self.resource}{where} ({self.status})"


@dataclass(frozen=True)
class PublishResult:
    """The whole transaction's outcome."""

    entries: list[EntryResult]

    def count(self, action: str) -> int:
        """How many entries had this action."""
        return sum(1 for e in self.entries if e.action == action)

    def summary(self) -> str:
        """``N resources: a created, b updated, c unchanged``."""
        return (
            f"{len(self.entries)} resources: {self.count('created')} created, "
            f"{self.count('updated')} updated, {self.count('unchanged')} unchanged"
        )


def _preferred_identifier(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    usable = [
        i
        for i in resource.get("identifier") or []
        if isinstance(i, Mapping) and i.get("system") and i.get("value")
    ]
    for ident in usable:
        if ident["system"] == URI_SYSTEM and str(ident["value"]).startswith(BASE):
            return ident
    for ident in usable:
        if ident.get("use") == "official":
            return ident
    return usable[0] if usable else None


def conditional_url(resource: Mapping[str, Any]) -> str:
    """The ``request.url`` of the PUT entry for one resource (see the module docstring)."""
    rtype = str(resource["resourceType"])
    if isinstance(resource.get("url"), str):
        params = [("url", str(resource["url"]))]
        if isinstance(resource.get("version"), str):
            params.append(("version", str(resource["version"])))
        return f"{rtype}?{urlencode(params)}"
    ident = _preferred_identifier(resource)
    if ident is not None:
        token = f"{ident['system']}|{ident['value']}"
        return f"{rtype}?{urlencode([('identifier', token)])}"
    return f"{rtype}/{resource['id']}"


def full_url(resource: Mapping[str, Any]) -> str:
    """A deterministic ``urn:uuid`` for a resource's entry."""
    key = f"{resource['resourceType']}/{resource['id']}"
    return f"urn:uuid:{uuid.uuid5(_FULLURL_NAMESPACE, key)}"


def _rewrite(value: Any, references: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                references.get(v, v)
                if k == "reference" and isinstance(v, str)
                else _rewrite(v, references)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v, references) for v in value]
    return value


def build_transaction(resources: Sequence[Mapping[str, Any]]) -> JsonDict:
    """The transaction Bundle that publishes ``resources`` idempotently."""
    references = {f"{r['resourceType']}/{r['id']}": full_url(r) for r in resources}
    entries = []
    for resource in resources:
        url = conditional_url(resource)
        body = _rewrite(dict(resource), references)
        body.pop("meta", None)  # the server owns versionId / lastUpdated
        if "?" in url:
            body.pop("id", None)
        entries.append(
            {
                "fullUrl": full_url(resource),
                "resource": body,
                "request": {"method": "PUT", "url": url},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _status_code(status: str) -> int | None:
    head = status.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def _no_change(outcome: Any) -> bool:
    if not isinstance(outcome, Mapping):
        return False
    for issue in objects(outcome.get("issue")):
        for coding in objects(child(issue.get("details"), "coding")):
            if str(coding.get("code", "")).endswith("_NO_CHANGE"):
                return True
    return False


def read_results(
    bundle: Mapping[str, Any], sent: Mapping[str, Any], resources: Sequence[Mapping[str, Any]]
) -> PublishResult:
    """Interpret a transaction-response; raises NotFhirResponseError when it is not one."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction-response":
        found = bundle.get("resourceType") or "an empty body"
        kind = f" of type {bundle.get('type')}" if bundle.get("type") else ""
        raise NotFhirResponseError(
            f"the server answered the transaction with {found}{kind}, "
            "not a transaction-response Bundle"
        )
    answers = bundle.get("entry") or []
    sent_entries = sent["entry"]
    if not isinstance(answers, list) or len(answers) != len(sent_entries):
        raise NotFhirResponseError(
            f"the transaction-response has {len(answers) if isinstance(answers, list) else 0} "
            f"entries for {len(sent_entries)} sent"
        )
    results = []
    for answer, entry, resource in zip(answers, sent_entries, resources, strict=True):
        response = answer.get("response") if isinstance(answer, Mapping) else None
        status = str((response or {}).get("status") or "")
        code = _status_code(status)
        if not response or code is None:
            raise NotFhirResponseError(
                f"the transaction-response entry for {resource['resourceType']} has no status"
            )
        if code == 201:
            action = "created"
        elif 200 <= code < 300:
            action = "unchanged" if _no_change(response.get("outcome")) else "updated"
        else:
            raise NotFhirResponseError(
                f"the server answered {status} for {resource['resourceType']}/{resource['id']} "
                "inside a transaction that it reported as successful"
            )
        results.append(
            EntryResult(
                resource=f"{resource['resourceType']}/{resource['id']}",
                request=f"PUT {entry['request']['url']}",
                status=status,
                action=action,
                location=response.get("location"),
            )
        )
    return PublishResult(results)


def publish(
    resources: Sequence[Mapping[str, Any]],
    base_url: str,
    *,
    token: str | None = None,
    settings: Settings | None = None,
    http: FhirHttp | None = None,
    on_entry: Callable[[EntryResult], None] | None = None,
) -> PublishResult:
    """POST the transaction to ``base_url`` and report per entry.

    Raises the :mod:`fhir_trial.errors` server errors (unreachable, auth, error status, not FHIR).
    """
    if not resources:
        raise InputError("there are no resources to publish; run `fhir-trial build-resources`")
    bundle = build_transaction(resources)
    client = http or FhirHttp(base_url, token=token, settings=settings)
    try:
        answer = client.request("POST", "", json=bundle)
    finally:
        if http is None:
            client.close()
    result = read_results(answer.body, bundle, resources)
    if on_entry:
        for entry in result.entries:
            on_entry(entry)
    return result
