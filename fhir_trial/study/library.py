"""The eligibility Library: the CQL source and, once translated, its ELM, as base64 attachments.

:func:`library_content` is the one place that decides what goes into ``Library.content``: every
``cql/*.cql`` (``text/cql``, bytes as they are) and every ``cql/build/*.json``
(``application/elm+json``, re-serialised without indentation), sorted by file name. The Library
stays ``draft`` until ELM exists for every CQL file.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection
from pathlib import Path

from fhir_trial.canonical import CODESYSTEM_URL, STUDY_ID, valueset_url
from fhir_trial.cql.build import data_requirements, main_elm
from fhir_trial.study.common import JsonDict, canonical_metadata
from fhir_trial.study.research_study import ELIGIBILITY_ID

LIBRARY_NAME = "NCT06010472Eligibility"
CQL_TYPE = "text/cql"
ELM_TYPE = "application/elm+json"
_VALUESET_REF = re.compile(r"ValueSet/([A-Za-z0-9][A-Za-z0-9\-.]{0,63})")
_LIBRARY_DECLARATION = re.compile(r'^\s*library\s+"?([A-Za-z0-9_]+)"?', re.MULTILINE)


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


def library_content(cql_dir: Path) -> list[JsonDict]:
    """Attachments for every CQL source and ELM file that exists under ``cql_dir``."""
    content = [_attachment(path, CQL_TYPE) for path in sorted(cql_dir.glob("*.cql"))]
    content += [_attachment(path, ELM_TYPE) for path in sorted((cql_dir / "build").glob("*.json"))]
    return content


def _elm_names(source: Path) -> set[str]:
    """Names the ELM of a CQL file may have: the file stem and the declared library name."""
    declared = _LIBRARY_DECLARATION.search(source.read_text(encoding="utf-8"))
    return {source.stem, *([declared.group(1)] if declared else [])}


def is_compiled(cql_dir: Path) -> bool:
    """Whether every CQL file has its ELM in ``cql/build`` (by file stem or library name)."""
    sources = sorted(cql_dir.glob("*.cql"))
    return bool(sources) and all(
        any((cql_dir / "build" / f"{name}.json").is_file() for name in _elm_names(source))
        for source in sources
    )


def cql_valueset_ids(cql_dir: Path) -> set[str]:
    """Ids of the project ValueSets the CQL names by canonical URL."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(cql_dir.glob("*.cql"))]
    return {match for text in texts for match in _VALUESET_REF.findall(text)}


def valuesets_used(cql_dir: Path, available: Collection[str]) -> list[str]:
    """Available ValueSet ids the CQL names; all available ones when the CQL names none."""
    named = cql_valueset_ids(cql_dir)
    return sorted(vs for vs in available if vs in named) if named else sorted(available)


def library(cql_dir: Path, available_valuesets: Collection[str]) -> JsonDict:
    """The Library resource, with depends-on artifacts for every ValueSet the logic uses."""
    status = "active" if is_compiled(cql_dir) else "draft"
    resource: JsonDict = {
        "resourceType": "Library",
        "id": ELIGIBILITY_ID,
        "meta": {
            "profile": ["http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-computablelibrary"]
        },
        **canonical_metadata("Library", ELIGIBILITY_ID, status=status),
        "name": LIBRARY_NAME,
        "title": f"{STUDY_ID} eligibility logic",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/library-type",
                    "code": "logic-library",
                    "display": "Logic Library",
                }
            ]
        },
        "description": (
            f"CQL (and its ELM) deciding each eligibility criterion of {STUDY_ID}; one define per "
            "criterion id, plus Verdict."
        ),
        "relatedArtifact": [
            {"type": "depends-on", "resource": CODESYSTEM_URL},
            *(
                {"type": "depends-on", "resource": valueset_url(vs)}
                for vs in valuesets_used(cql_dir, available_valuesets)
            ),
        ],
    }
    if status == "active":
        # What data the logic retrieves, read from the ELM (resource types and ValueSet filters).
        resource["dataRequirement"] = data_requirements(main_elm(cql_dir / "build", LIBRARY_NAME))
    content = library_content(cql_dir)
    if content:
        resource["content"] = content
    return resource
