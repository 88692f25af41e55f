"""Publish the study's resources to a FHIR server so that it ends up with exactly one copy of each.

Works with servers that assign their own ids (Medplum: a ``PUT Type/my-id`` is refused) and with
servers that accept the client's ids (HAPI FHIR), atomic or not. Four steps:

1. **Look up** every resource on the server by its business key (:func:`search_key`), all in one
   ``batch`` of searches where the server takes it (:func:`find_all`)::

       resource with a canonical ``url``   Type?url=<url>[&version=<version>]
       else with an identifier             Type?identifier=<system>|<value>
                                           (the project's urn:ietf:rfc:3986 identifier if it has
                                           one, else the official one, else the first)
       else                                the project's urn:ietf:rfc:3986 identifier
                                           (``https://fhir-trial.org/fhir/Type/id``) is added to
                                           the published copy, and that is the key

   One copy found and equal to what would be written (references mapped to the server's ids;
   ``id`` and ``meta`` aside): **unchanged**, not sent. Several copies: **failed** (a conditional
   update would be refused with 412), and so is everything that references it.
2. **Write** the others in ONE transaction of conditional updates ``PUT Type?<key>`` (FHIR R4
   conditional update: 0 matches create, 1 updates, more are refused). Every entry has a
   deterministic ``urn:uuid`` fullUrl and references between new resources point at those
   fullUrls, so the server rewrites them to whatever ids it assigns; references to resources it
   already holds are written as ``Type/<its id>``. Client ids (``ResearchStudy/nct06010472``) are
   sent in the body of a resource the server does not hold yet only where the server accepts them:
   by default where its CapabilityStatement says ``updateCreate: true`` for that type.
3. **Read back** every resource by its key: exactly one copy, equal to what was sent, and every
   reference in it resolving on the server. Anything else is a failure.
4. **Report** per resource created / updated / unchanged / failed (with the server's reason, its
   OperationOutcome diagnostics). When the transaction fails, the read-back tells what a server
   that does not roll transactions back (Medplum) left behind: :attr:`PublishResult.left_behind`.
5. **Retire** what the project no longer publishes (:data:`fhir_trial.canonical.SUPERSEDED`,
   looked up in the same batch as step 1): once everything else is published, the copies the
   server holds that are not ``retired`` are updated to ``status: retired`` (content kept; CRMI
   retires artifacts, it does not delete them), in one transaction, each with ``ifMatch`` on the
   version read: :attr:`PublishResult.retired`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from fhir_trial.canonical import BASE, SUPERSEDED, canonical
from fhir_trial.config import Settings
from fhir_trial.elements import child, objects
from fhir_trial.errors import FhirServerError, InputError, NotFhirResponseError, ServerResponseError
from fhir_trial.fhir_http import FhirHttp

__all__ = [
    "EntryResult",
    "PublishResult",
    "build_transaction",
    "find_all",
    "find_copies",
    "full_url",
    "publish",
    "search_key",
]

JsonDict = dict[str, Any]
IdPolicy = Literal["auto", "client", "server"]
URI_SYSTEM = "urn:ietf:rfc:3986"
NO_CHANGE_SUFFIX = "_NO_CHANGE"  # HAPI FHIR's SUCCESSFUL_UPDATE[...]_NO_CHANGE storage codes
_FULLURL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, BASE)
_MAX_REASON = 300
PAGE_SIZE = 50
MAX_PAGES = 20


@dataclass
class EntryResult:
    """What happened to one published resource."""

    resource: str  # the local Type/id, e.g. "Organization/changhai-hospital"
    key: str  # the search that finds it on the server, e.g. "Organization?identifier=..."
    action: str = "failed"  # created | updated | unchanged | failed (| retired, see retire_all)
    reason: str = ""  # why it failed (the server's diagnostics), empty otherwise
    server_id: str | None = None  # the server's Type/id once known
    status: str = ""  # the server's response.status for a written entry

    def line(self) -> str:
        """One human-readable line: ``created   Organization/x -> Organization/<id> (201)``."""
        where = f" -> {self.server_id}" if self.server_id else ""
        status = f" ({self.status})" if self.status else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.action:<9} {self.resource}{where}{status}{why}"


@dataclass
class PublishResult:
    """The outcome of one publish run."""

    entries: list[EntryResult]
    transaction_error: str | None = None  # the server's reason when it refused the transaction
    left_behind: list[EntryResult] = field(default_factory=list)  # written despite that refusal
    references_checked: int = 0
    # Copies of superseded artifacts set to retired (or that failed to be): step 5.
    retired: list[EntryResult] = field(default_factory=list)

    def count(self, action: str) -> int:
        """How many resources had this action."""
        return sum(1 for e in self.entries if e.action == action)

    @property
    def failures(self) -> list[EntryResult]:
        """The resources that failed (in publishing order), then the retirements that failed."""
        return [e for e in (*self.entries, *self.retired) if e.action == "failed"]

    def summary(self) -> str:
        """``N resources: a created, b updated, c unchanged, d failed`` (``; r retired``)."""
        retired = sum(1 for e in self.retired if e.action == "retired")
        return (
            f"{len(self.entries)} resources: {self.count('created')} created, "
            f"{self.count('updated')} updated, {self.count('unchanged')} unchanged, "
            f"{self.count('failed')} failed"
        ) + (f"; {retired} superseded copies retired" if retired else "")


# --- keys, fullUrls, order -----------------------------------------------------------------------
def local_ref(resource: Mapping[str, Any]) -> str:
    """``Type/id`` of a local resource."""
    return f"{resource['resourceType']}/{resource['id']}"


def _project_identifier(resource: Mapping[str, Any]) -> JsonDict:
    return {
        "system": URI_SYSTEM,
        "value": canonical(str(resource["resourceType"]), str(resource["id"])),
    }


def _preferred_identifier(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    usable = [
        i
        for i in objects(resource.get("identifier"))
        if isinstance(i.get("system"), str) and isinstance(i.get("value"), str)
    ]
    for ident in usable:
        if ident["system"] == URI_SYSTEM and str(ident["value"]).startswith(BASE):
            return ident
    for ident in usable:
        if ident.get("use") == "official":
            return ident
    return usable[0] if usable else None


def with_business_key(resource: Mapping[str, Any]) -> JsonDict:
    """The resource, given the project's identifier when it has neither ``url`` nor identifier.

    A resource without a key could only be written by id, which servers that assign their own
    ids refuse, and could not be found again.
    """
    copy = dict(resource)
    if not isinstance(copy.get("url"), str) and _preferred_identifier(copy) is None:
        copy["identifier"] = [*objects(copy.get("identifier")), _project_identifier(copy)]
    return copy


def search_key(resource: Mapping[str, Any]) -> str:
    """The conditional ``Type?...`` that identifies a resource on any server (module docstring)."""
    rtype = str(resource["resourceType"])
    if isinstance(resource.get("url"), str):
        params = [("url", str(resource["url"]))]
        if isinstance(resource.get("version"), str):
            params.append(("version", str(resource["version"])))
        return f"{rtype}?{urlencode(params)}"
    ident = _preferred_identifier(resource) or _project_identifier(resource)
    token = f"{ident['system']}|{ident['value']}"
    return f"{rtype}?{urlencode([('identifier', token)])}"


def full_url(resource: Mapping[str, Any]) -> str:
    """A deterministic ``urn:uuid`` for a resource's transaction entry."""
    return f"urn:uuid:{uuid.uuid5(_FULLURL_NAMESPACE, local_ref(resource))}"


def _references(value: Any) -> Iterable[str]:
    """Every ``reference`` string inside a resource."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if key == "reference" and isinstance(sub, str):
                    yield sub
                elif isinstance(sub, (dict, list)):
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


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


def dependency_order(resources: Sequence[Mapping[str, Any]]) -> list[JsonDict]:
    """The resources, each after every local resource it references (input order otherwise)."""
    by_ref = {local_ref(r): dict(r) for r in resources}
    ordered: list[JsonDict] = []
    done: set[str] = set()

    def visit(ref: str, path: tuple[str, ...]) -> None:
        if ref in done or ref in path:  # a cycle keeps input order; the urn:uuids still resolve
            return
        for target in sorted(set(_references(by_ref[ref]))):
            if target in by_ref:
                visit(target, (*path, ref))
        done.add(ref)
        ordered.append(by_ref[ref])

    for resource in resources:
        visit(local_ref(resource), ())
    return ordered


def _body(resource: Mapping[str, Any], references: Mapping[str, str]) -> JsonDict:
    body = _rewrite(dict(resource), references)
    meta = body.pop("meta", None)
    # versionId / lastUpdated belong to the server; profiles, tags and labels are content
    kept = {k: v for k, v in (meta or {}).items() if k not in ("versionId", "lastUpdated")}
    if kept:
        body["meta"] = kept
    body.pop("id", None)
    return body


def build_transaction(resources: Sequence[Mapping[str, Any]]) -> JsonDict:
    """The transaction that publishes ``resources`` to a server that holds none of them yet.

    (What ``publish --dry-run`` prints: the real run first looks up what the server holds.)
    """
    keyed = [with_business_key(r) for r in dependency_order(resources)]
    references = {local_ref(r): full_url(r) for r in keyed}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url(r),
                "resource": _body(r, references),
                "request": {"method": "PUT", "url": search_key(r)},
            }
            for r in keyed
        ],
    }


# --- talking to the server -----------------------------------------------------------------------
def _diagnostics(outcome: Any) -> str:
    """Every issue's diagnostics (or details.text, or code) of an OperationOutcome, one line."""
    texts = []
    for issue in objects(child(outcome, "issue") if isinstance(outcome, Mapping) else None):
        text = issue.get("diagnostics") or child(issue.get("details"), "text") or issue.get("code")
        if isinstance(text, str) and text.strip():
            where = ", ".join(str(e) for e in issue.get("expression") or [] if isinstance(e, str))
            texts.append(" ".join(text.split()) + (f" (at {where})" if where else ""))
    line = "; ".join(dict.fromkeys(texts))
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def _error_reason(exc: FhirServerError) -> str:
    found = _diagnostics(exc.outcome) if exc.outcome else ""
    status = f"HTTP {exc.status}" if exc.status else exc.message
    return f"{status}: {found}" if found else exc.message


def client_id_types(http: FhirHttp) -> set[str]:
    """Resource types whose ``updateCreate`` the CapabilityStatement declares true (else empty)."""
    try:
        statement = http.get_json("metadata")
    except (ServerResponseError, NotFhirResponseError):
        return set()  # no usable CapabilityStatement: keep to conditional updates, server ids
    types = set()
    for rest in objects(statement.get("rest")):
        for entry in objects(rest.get("resource")):
            if entry.get("updateCreate") is True and isinstance(entry.get("type"), str):
                types.add(entry["type"])
    return types


def _matches(bundle: Mapping[str, Any]) -> list[JsonDict]:
    return [
        entry["resource"]
        for entry in objects(bundle.get("entry"))
        if isinstance(entry.get("resource"), dict)
        and child(entry.get("search"), "mode") in (None, "match")
    ]


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in objects(bundle.get("link")):
        if link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def find_copies(http: FhirHttp, key: str) -> list[JsonDict]:
    """Every resource the server matches for a search key (following next links on its origin)."""
    bundle = http.get_json(f"{key}&_count={PAGE_SIZE}")
    found = _matches(bundle)
    for _ in range(MAX_PAGES):
        next_url = _next_link(bundle)
        if next_url is None or not http.same_origin(next_url):
            break
        bundle = http.get_json(next_url)
        found += _matches(bundle)
    return found


def find_all(http: FhirHttp, keys: Sequence[str]) -> list[list[JsonDict]]:
    """:func:`find_copies` for every key, as one ``batch`` of searches where the server takes it.

    One round trip instead of one per resource; a server that refuses the batch, or answers an
    entry with anything but a complete searchset, is asked that search on its own.
    """
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"{key}&_count={PAGE_SIZE}"}} for key in keys
        ],
    }
    answers: list[Any] = []
    try:
        answer = http.request("POST", "", json=batch).body
        if answer.get("type") == "batch-response":
            answers = list(answer.get("entry") or [])
    except (ServerResponseError, NotFhirResponseError):
        pass  # no batch here: one search per key
    if len(answers) != len(keys):
        answers = [None] * len(keys)
    found = []
    for key, entry in zip(keys, answers, strict=True):
        bundle = child(entry, "resource") if isinstance(entry, Mapping) else None
        status = str(child(child(entry, "response"), "status") or "") if bundle else ""
        if (
            isinstance(bundle, Mapping)
            and bundle.get("type") == "searchset"
            and status.startswith("200")
            and _next_link(bundle) is None
        ):
            found.append(_matches(bundle))
        else:
            found.append(find_copies(http, key))
    return found


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def same_content(wanted: Mapping[str, Any], held: Mapping[str, Any]) -> bool:
    """Whether the server's copy says what we would write (``id``, server ``meta`` aside)."""

    def normal(resource: Mapping[str, Any]) -> JsonDict:
        copy = {k: v for k, v in resource.items() if k not in ("id", "meta")}
        profiles = child(resource.get("meta"), "profile")
        if isinstance(profiles, list) and profiles:
            copy["meta.profile"] = sorted(str(p) for p in profiles)
        return copy

    return _canonical_json(normal(wanted)) == _canonical_json(normal(held))


def _no_change(outcome: Any) -> bool:
    if not isinstance(outcome, Mapping):
        return False
    return any(
        str(coding.get("code", "")).endswith(NO_CHANGE_SUFFIX)
        for issue in objects(outcome.get("issue"))
        for coding in objects(child(issue.get("details"), "coding"))
    )


def _server_ref(location: Any) -> str | None:
    """``Type/id`` from a response location (``Type/id/_history/2`` or an absolute URL)."""
    if not isinstance(location, str) or not location:
        return None
    parts = location.split("?", 1)[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


# --- the run -------------------------------------------------------------------------------------
@dataclass
class _Item:
    resource: JsonDict  # with its business key
    result: EntryResult
    copies: list[JsonDict] = field(default_factory=list)
    body: JsonDict | None = None  # what is sent (None: not sent)


def _plan(items: list[_Item], client_types: set[str], policy: IdPolicy) -> list[_Item]:
    """Decide per resource: unchanged, failed, or to be sent; returns the entries to send."""
    by_ref = {item.result.resource: item for item in items}
    held = {
        ref: f"{item.resource['resourceType']}/{item.copies[0]['id']}"
        for ref, item in by_ref.items()
        if len(item.copies) == 1 and item.copies[0].get("id")
    }
    references = {ref: held.get(ref, full_url(item.resource)) for ref, item in by_ref.items()}
    to_send: list[_Item] = []
    for item in items:  # dependency order: a resource's targets are decided before it
        result = item.result
        if len(item.copies) > 1:
            result.reason = (
                f"{len(item.copies)} copies on the server match {result.key}; a conditional "
                "update would be refused (412): delete the extra copies, then publish again"
            )
            continue
        broken = sorted(
            ref
            for ref in set(_references(item.resource))
            if ref in by_ref and by_ref[ref].result.reason and by_ref[ref] is not item
        )
        if broken:
            result.reason = f"not sent: it references {', '.join(broken)}, which failed"
            continue
        body = _body(item.resource, references)
        if item.copies:
            result.server_id = held.get(result.resource)
            if same_content(body, item.copies[0]):
                result.action = "unchanged"
                continue
            body["id"] = item.copies[0]["id"]  # R4: an id in the body must be the matched one
        elif policy == "client" or (
            policy == "auto" and item.resource["resourceType"] in client_types
        ):
            body["id"] = item.resource["id"]
        item.body = body
        to_send.append(item)
    return to_send


def _transaction(to_send: Sequence[_Item]) -> JsonDict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url(item.resource),
                "resource": item.body,
                "request": {"method": "PUT", "url": item.result.key},
            }
            for item in to_send
        ],
    }


def _read_response(answer: Mapping[str, Any], to_send: Sequence[_Item]) -> None:
    """Per-entry outcomes from a transaction-response (raises when it is not one)."""
    if answer.get("resourceType") != "Bundle" or answer.get("type") != "transaction-response":
        found = answer.get("resourceType") or "an empty body"
        kind = f" of type {answer.get('type')}" if answer.get("type") else ""
        raise NotFhirResponseError(
            f"the server answered the transaction with {found}{kind}, "
            "not a transaction-response Bundle"
        )
    entries = answer.get("entry")
    if not isinstance(entries, list) or len(entries) != len(to_send):
        count = len(entries) if isinstance(entries, list) else 0
        raise NotFhirResponseError(
            f"the transaction-response has {count} entries for {len(to_send)} sent"
        )
    for entry, item in zip(entries, to_send, strict=True):
        response = child(entry, "response") if isinstance(entry, Mapping) else None
        status = str(child(response, "status") or "")
        head = status.strip().split(" ", 1)[0]
        code = int(head) if head.isdigit() else None
        result = item.result
        result.status = status
        result.server_id = _server_ref(child(response, "location")) or result.server_id
        if code == 201:
            result.action = "created"
        elif code is not None and 200 <= code < 300:
            no_change = _no_change(child(response, "outcome"))
            result.action = "unchanged" if no_change else "updated"
        else:
            why = _diagnostics(child(response, "outcome"))
            result.action = "failed"
            result.reason = f"the server answered {status or 'no status'}" + (
                f": {why}" if why else ""
            )


def _written(item: _Item, copies: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a sent resource is on the server now in a version it did not hold before."""
    if item.body is None or len(copies) != 1:
        return bool(item.body is not None and copies)
    return not item.copies or copies[0].get("meta") != item.copies[0].get("meta")


def _check_references(
    http: FhirHttp, resource: Mapping[str, Any], known: set[str]
) -> tuple[int, str | None]:
    """(references checked, the first problem) for the server's copy of a resource."""
    checked = 0
    for ref in sorted(set(_references(resource))):
        if ref.startswith("#") or ref.startswith(("http:", "https:")):
            continue  # contained, or on another server
        checked += 1
        if ref.startswith("urn:"):
            return checked, f"its reference {ref} was not rewritten to a server id"
        if ref in known:
            continue
        try:
            http.get_json(ref)
        except ServerResponseError as exc:
            return checked, f"its reference {ref} does not resolve ({_error_reason(exc)})"
        known.add(ref)
    return checked, None


def _verify(
    http: FhirHttp, items: Sequence[_Item], refused: bool, incomplete: bool
) -> tuple[list[EntryResult], int]:
    """Read every resource back and check it; returns (left behind, references checked).

    ``refused``: the server refused the transaction as a whole; ``incomplete``: it refused some of
    it. Whatever of the transaction is on the server then was left behind by a server that does
    not roll transactions back.
    """
    after = find_all(http, [item.result.key for item in items])
    known = {f"{c.get('resourceType')}/{c.get('id')}" for copies in after for c in copies}
    written = {
        full_url(item.resource): f"{copies[0]['resourceType']}/{copies[0]['id']}"
        for item, copies in zip(items, after, strict=True)
        if len(copies) == 1
    }
    left_behind: list[EntryResult] = []
    checked = 0
    for item, copies in zip(items, after, strict=True):
        result = item.result
        if refused and item.body is not None:
            if not _written(item, copies):
                continue  # not written: it stays failed with the transaction's reason
            result.action = "updated" if item.copies else "created"
            result.reason = ""
        if (refused or incomplete) and _written(item, copies):
            left_behind.append(result)
        if result.action == "failed":
            continue
        if len(copies) != 1:
            result.action = "failed"
            result.reason = f"read back: {len(copies)} copies on the server match {result.key}"
            continue
        copy = copies[0]
        result.server_id = f"{copy['resourceType']}/{copy['id']}"
        count, problem = _check_references(http, copy, known)
        checked += count
        wanted = _rewrite(item.body, written) if item.body is not None else None
        if problem is None and wanted is not None and not same_content(wanted, copy):
            problem = "the server holds other content than was sent"
        if problem:
            result.action, result.reason = "failed", f"read back: {problem}"
    return left_behind, checked


def superseded_key(resource_type: str, url: str) -> str:
    """The search for every copy of a superseded artifact (any version)."""
    return f"{resource_type}?{urlencode([('url', url)])}"


def retire_all(http: FhirHttp, copies: Sequence[Mapping[str, Any]]) -> list[EntryResult]:
    """Set each copy to ``status: retired`` in one transaction (``ifMatch`` on its version)."""
    results = []
    entries = []
    for copy in copies:
        rtype, rid = str(copy.get("resourceType")), str(copy.get("id"))
        results.append(EntryResult(f"{rtype}/{rid}", superseded_key(rtype, str(copy.get("url")))))
        request: JsonDict = {"method": "PUT", "url": f"{rtype}/{rid}"}
        version = child(copy.get("meta"), "versionId")
        if isinstance(version, str) and version:
            request["ifMatch"] = f'W/"{version}"'
        entries.append({"resource": {**copy, "status": "retired"}, "request": request})
    if not entries:
        return results
    try:
        answer = http.request(
            "POST", "", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
    except ServerResponseError as exc:
        for result in results:
            result.reason = f"retiring it was refused: {_error_reason(exc)}"
        return results
    items = [_Item(dict(copy), result) for copy, result in zip(copies, results, strict=True)]
    try:
        _read_response(answer.body, items)
    except NotFhirResponseError as exc:
        for result in results:
            result.action, result.reason = "failed", f"retiring it: {exc}"
        return results
    for result in results:
        if result.action != "failed":
            result.action = "retired"
    return results


def publish(
    resources: Sequence[Mapping[str, Any]],
    base_url: str,
    *,
    token: str | None = None,
    settings: Settings | None = None,
    http: FhirHttp | None = None,
    ids: IdPolicy = "auto",
    on_entry: Callable[[EntryResult], None] | None = None,
) -> PublishResult:
    """Look up, write in one transaction, read back (see the module docstring).

    ``ids``: ``server`` never sends client ids, ``client`` sends them for every new resource,
    ``auto`` where the CapabilityStatement says ``updateCreate``. Raises the
    :mod:`fhir_trial.errors` server errors for failures that stop the whole run (unreachable,
    credentials, a lookup refused, an answer that is not FHIR); per-resource failures are in the
    result.
    """
    if not resources:
        raise InputError("there are no resources to publish; run `fhir-trial build-resources`")
    items = []
    for resource in dependency_order(resources):
        keyed = with_business_key(resource)
        items.append(_Item(keyed, EntryResult(local_ref(resource), search_key(keyed))))
    client = http or FhirHttp(base_url, token=token, settings=settings)
    try:
        client_types = client_id_types(client) if ids == "auto" else set()
        keys = [i.result.key for i in items]
        found = find_all(client, keys + [superseded_key(t, url) for t, url in SUPERSEDED])
        for item, copies in zip(items, found[: len(keys)], strict=True):
            item.copies = copies
        active_superseded = [
            copy
            for copies in found[len(keys) :]
            for copy in copies
            if copy.get("status") != "retired"
        ]
        to_send = _plan(items, client_types, ids)
        result = PublishResult([item.result for item in items])
        if to_send:
            try:
                answer = client.request("POST", "", json=_transaction(to_send))
            except ServerResponseError as exc:
                result.transaction_error = _error_reason(exc)
                for item in to_send:
                    item.result.action = "failed"
                    item.result.reason = f"the transaction was refused: {result.transaction_error}"
            else:
                _read_response(answer.body, to_send)
        result.left_behind, result.references_checked = _verify(
            client,
            items,
            refused=result.transaction_error is not None,
            incomplete=any(item.result.action == "failed" for item in to_send),
        )
        if active_superseded and not result.failures:
            # Only once the current artifacts are all in place: retiring the old ones earlier
            # could leave a server with neither.
            result.retired = retire_all(client, active_superseded)
    finally:
        if http is None:
            client.close()
    if on_entry:
        for entry in (*result.entries, *result.retired):
            on_entry(entry)
    return result
