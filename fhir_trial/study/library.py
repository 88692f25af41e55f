"""The Library resources: one per CQL library of ``cql/``, carrying its CQL and, once translated, its ELM.

CQL-on-FHIR and CRMI conventions: each Library is a ``logic-library`` whose ``name`` and ``version``
are the CQL library's own; ``content`` holds the ``text/cql`` source first (bytes as they are), then
the ``application/elm+json`` translation (re-serialised without indentation); ``relatedArtifact``
lists as ``depends-on`` every library the CQL includes and every ValueSet (and the project's
CodeSystem) its logic uses, each as ``canonical|version``; ``dataRequirement`` is read from its own
ELM (the main library's from every library it reaches: the data needed to run it) and
``parameter`` lists the parameters it declares. A library stays ``draft`` until its ELM
exists. As Using CQL with FHIR requires (4.2), the url is ``<base>/Library/<CQL library name>``, so
the id is the name (``NCT06010472Eligibility``, the main library, which the PlanDefinition names;
``NCT06010472<Area>`` for the clinical areas; ``FHIRHelpers``), and ``subject`` is the library's
context (Patient).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fhir_trial.canonical import CODESYSTEM_URL, ELIGIBILITY_LIBRARY, STUDY_ID, canonical
from fhir_trial.cql.build import (
    data_requirements,
    elm_include_aliases,
    parameter_definitions,
    valuesets_used,
)
from fhir_trial.cql.libraries import CqlLibrary, cql_libraries, resource_id
from fhir_trial.errors import ConfigurationError
from fhir_trial.study.common import JsonDict, canonical_metadata

MAIN_LIBRARY_NAME = ELIGIBILITY_LIBRARY
CQL_TYPE = "text/cql"
ELM_TYPE = "application/elm+json"
COMPUTABLE_LIBRARY_PROFILE = "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-computablelibrary"
# Using CQL with FHIR: a Library holding CQL SHALL conform to it (one text/cql content, name <= 64).
CQL_LIBRARY_PROFILE = "http://hl7.org/fhir/uv/cql/StructureDefinition/cql-library"
KNOWLEDGE_CAPABILITY = "http://hl7.org/fhir/StructureDefinition/cqf-knowledgeCapability"
_VALUESET_REF = re.compile(r"ValueSet/([A-Za-z0-9][A-Za-z0-9\-.]{0,63})")
_FIRST_COMMENT = re.compile(r"^\s*/\*(.*?)\*/", re.DOTALL)
_WORD_START = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _compact_json(data: bytes) -> bytes:
    """JSON re-serialised without indentation (ELM is large); unparseable input is kept as is."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return data
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _attachment(path: Path, content_type: str) -> JsonDict:
    data = path.read_bytes()
    if content_type == ELM_TYPE:
        data = _compact_json(data)
    return {
        "contentType": content_type,
        "title": path.name,
        "data": base64.b64encode(data).decode("ascii"),
    }


def library_content(cql: CqlLibrary) -> list[JsonDict]:
    """The attachments of one library: its CQL source, then its ELM when it exists."""
    content = [_attachment(cql.source, CQL_TYPE)]
    if cql.elm_path.is_file():
        content.append(_attachment(cql.elm_path, ELM_TYPE))
    return content


def library_url(library_name: str) -> str:
    """The canonical URL of the Library resource of a CQL library."""
    return canonical("Library", resource_id(library_name))


def cql_valueset_ids(cql_dir: Path) -> set[str]:
    """Ids of the project ValueSets the CQL names by canonical URL."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(cql_dir.glob("*.cql"))]
    return {match for text in texts for match in _VALUESET_REF.findall(text)}


def _versioned(url: str, versions: Mapping[str, str]) -> str:
    version = versions.get(url)
    return f"{url}|{version}" if version else url


def _description(cql: CqlLibrary) -> str:
    """The first paragraph of the CQL file's opening comment (else a plain sentence)."""
    found = _FIRST_COMMENT.match(cql.text())
    paragraph = found.group(1).strip().split("\n\n")[0] if found else ""
    return " ".join(paragraph.split()) or f"The CQL library {cql.name}."


def _title(name: str) -> str:
    """``NCT06010472DiseaseActivity`` -> ``NCT06010472 disease activity logic``."""
    if name.startswith(STUDY_ID) and name != STUDY_ID:
        return f"{STUDY_ID} {_WORD_START.sub(' ', name[len(STUDY_ID) :]).lower()} logic"
    return name


def _dependencies(
    cql: CqlLibrary,
    elm: dict[str, Any] | None,
    by_name: Mapping[str, CqlLibrary],
    included: Mapping[str, Mapping[str, Any]],
    versions: Mapping[str, str],
) -> list[JsonDict]:
    """depends-on: the included libraries, the project's CodeSystem if named, the ValueSets used."""
    related: list[JsonDict] = []
    for include in cql.includes:
        target = by_name.get(include.name)
        if target is None:
            raise ConfigurationError(
                f"{cql.source.name} includes {include.name}, which no file declares"
            )
        if include.version and target.version and include.version != target.version:
            raise ConfigurationError(
                f"{cql.source.name} includes {include.name} version {include.version}, "
                f"but {target.source.name} declares version {target.version}"
            )
        url = library_url(target.name)
        related.append(
            {
                "type": "depends-on",
                "display": f"Library {target.name}",
                "resource": f"{url}|{target.version}" if target.version else url,
            }
        )
    if CODESYSTEM_URL in cql.text():
        related.append({"type": "depends-on", "resource": _versioned(CODESYSTEM_URL, versions)})
    if elm is not None:
        urls = valuesets_used(elm, included)
    else:  # not translated yet: the ValueSets the source names
        urls = sorted(canonical("ValueSet", vs) for vs in _VALUESET_REF.findall(cql.text()))
    # A ValueSet without a terminology source is not built (build-resources warns): left out here.
    related += [
        {"type": "depends-on", "resource": _versioned(url, versions)}
        for url in urls
        if url in versions
    ]
    return related


def _included_elm(
    elm: Mapping[str, Any], by_name: Mapping[str, CqlLibrary]
) -> dict[str, Mapping[str, Any]]:
    """Alias -> ELM of the shipped libraries an ELM library includes (translated ones only)."""
    included: dict[str, Mapping[str, Any]] = {}
    for alias, name in elm_include_aliases(elm).items():
        target_elm = by_name[name].elm() if name in by_name else None
        if target_elm is not None:
            included[alias] = target_elm
    return included


def _effective_requirements(
    cql: CqlLibrary, by_name: Mapping[str, CqlLibrary]
) -> list[dict[str, Any]]:
    """The data requirements of a library and of every library it includes, directly or not."""
    seen: set[str] = set()
    pending = [cql.name]
    found: dict[str, dict[str, Any]] = {}
    while pending:
        name = pending.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        elm = by_name[name].elm()
        if elm is None:
            continue
        for requirement in data_requirements(elm, _included_elm(elm, by_name)):
            found.setdefault(json.dumps(requirement, sort_keys=True), requirement)
        pending.extend(elm_include_aliases(elm).values())

    def order(requirement: Mapping[str, Any]) -> tuple[str, str, str]:  # as data_requirements
        code_filter = (requirement.get("codeFilter") or [{}])[0]
        return (requirement["type"], code_filter.get("path", ""), code_filter.get("valueSet", ""))

    return sorted(found.values(), key=order)


def library(cql: CqlLibrary, shipped: list[CqlLibrary], versions: Mapping[str, str]) -> JsonDict:
    """The Library resource of one CQL library.

    ``shipped``: every CQL library of the project (the includes resolve among them); ``versions``:
    canonical URL -> version of the terminology resources (ValueSets, CodeSystem) being built.
    """
    by_name = {lib.name: lib for lib in shipped}
    elm = cql.elm()
    included = _included_elm(elm, by_name) if elm is not None else {}
    lib_id = resource_id(cql.name)
    status = "active" if elm is not None else "draft"
    metadata = canonical_metadata("Library", lib_id, status=status)
    if cql.version:
        metadata["version"] = cql.version
    capabilities = ["shareable", "computable"] + (["executable"] if elm is not None else [])
    resource: JsonDict = {
        "resourceType": "Library",
        "id": lib_id,
        "meta": {"profile": [COMPUTABLE_LIBRARY_PROFILE, CQL_LIBRARY_PROFILE]},
        "extension": [{"url": KNOWLEDGE_CAPABILITY, "valueCode": c} for c in capabilities],
        **metadata,
        "name": cql.name,
        "title": _title(cql.name),
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/library-type",
                    "code": "logic-library",
                    "display": "Logic Library",
                }
            ]
        },
        "description": _description(cql),
    }
    if re.search(r"^\s*context\s+Patient\b", cql.text(), re.MULTILINE):
        resource["subjectCodeableConcept"] = {
            "coding": [{"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]
        }
    related = _dependencies(cql, elm, by_name, included, versions)
    if related:
        resource["relatedArtifact"] = related
    if elm is not None:
        parameters = parameter_definitions(elm)
        if parameters:
            resource["parameter"] = parameters
        # What data the logic retrieves, read from its own ELM (resource types, ValueSet filters);
        # the main library's are those of every library it reaches (it re-exports every criterion,
        # so an implementer reading the PlanDefinition's library sees all the data it needs).
        requirements = (
            _effective_requirements(cql, by_name)
            if cql.name == MAIN_LIBRARY_NAME
            else data_requirements(elm, included)
        )
        if requirements:
            resource["dataRequirement"] = requirements
    resource["content"] = library_content(cql)
    return resource


def libraries(cql_dir: Path, versions: Mapping[str, str]) -> list[JsonDict]:
    """One Library resource per CQL library under ``cql_dir`` (main library first)."""
    shipped = cql_libraries(cql_dir)
    ordered = sorted(shipped, key=lambda lib: (lib.name != MAIN_LIBRARY_NAME, lib.name))
    return [library(cql, shipped, versions) for cql in ordered]
