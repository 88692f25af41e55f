"""Build every study resource and write them to ``resources/`` deterministically.

Each resource becomes ``resources/<Type>-<id>.json``: 2-space indent, keys sorted, UTF-8, trailing
newline, so the same inputs always give the same bytes and staleness is a byte comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fhir_trial.config import DATA_ROOT, Settings
from fhir_trial.errors import ConfigurationError
from fhir_trial.study.common import JsonDict
from fhir_trial.study.criterion_values import CRITERION_VALUES
from fhir_trial.study.eligibility_group import eligibility_group
from fhir_trial.study.extensions import structure_definitions
from fhir_trial.study.library import cql_valueset_ids, libraries
from fhir_trial.study.operation_definition import screen_population_operation_definition
from fhir_trial.study.organization import location, organization
from fhir_trial.study.plan_definition import plan_definition
from fhir_trial.study.questionnaire import questionnaire
from fhir_trial.study.research_study import research_study
from fhir_trial.study.terminology_sources import load_terminology_sources


@dataclass(frozen=True)
class BuildInputs:
    """Where the builder reads its sources."""

    terminology_dir: Path = DATA_ROOT / "terminology"
    cql_dir: Path = DATA_ROOT / "cql"
    settings: Settings = field(default_factory=Settings)


@dataclass(frozen=True)
class BuildResult:
    """The built resources, and what the sources lacked (for the command to report)."""

    resources: list[JsonDict]
    missing_valuesets: list[str]


def build_all(inputs: BuildInputs | None = None) -> BuildResult:
    """Build the whole set: study, Group, PlanDefinition, one Library per CQL library, terminology,
    org, site, extensions, and the OperationDefinition of the custom $screen-population operation."""
    inputs = inputs or BuildInputs()
    codesystem, valuesets = load_terminology_sources(inputs.terminology_dir)
    by_id = {str(vs["id"]): vs for vs in valuesets}
    wanted = {vs for value in CRITERION_VALUES.values() for vs in value.valuesets}
    wanted |= cql_valueset_ids(inputs.cql_dir)
    # canonical URL -> version, for the Libraries' depends-on entries (``url|version``)
    versions = {
        str(r["url"]): str(r["version"]) for r in (codesystem, *valuesets) if r.get("version")
    }
    resources = [
        research_study(by_id),
        eligibility_group(inputs.settings, by_id),
        plan_definition(),
        *libraries(inputs.cql_dir, versions),
        organization(),
        location(),
        codesystem,
        *valuesets,
        *structure_definitions(),
        screen_population_operation_definition(),
        questionnaire(),
    ]
    return BuildResult(resources, sorted(wanted - by_id.keys()))


def file_name(resource: JsonDict) -> str:
    """``<Type>-<id>.json``."""
    return f"{resource['resourceType']}-{resource['id']}.json"


def serialize(resource: JsonDict) -> str:
    """The canonical text of a resource file."""
    return json.dumps(resource, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered(resources: list[JsonDict]) -> dict[str, str]:
    """File name -> file text for a set of resources; duplicate names are an error."""
    out: dict[str, str] = {}
    for resource in resources:
        name = file_name(resource)
        if name in out:
            raise ConfigurationError(f"two resources would be written to {name}")
        out[name] = serialize(resource)
    return out


def stale_files(resources: list[JsonDict], out_dir: Path) -> list[str]:
    """Names of files in ``out_dir`` that differ from, lack, or are not part of the build."""
    expected = rendered(resources)
    present = {p.name for p in out_dir.glob("*.json")} if out_dir.is_dir() else set()
    stale = [name for name in sorted(present - expected.keys())]
    for name, text in sorted(expected.items()):
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return sorted(stale)


def write_resources(resources: list[JsonDict], out_dir: Path) -> list[str]:
    """Write the set (removing ``*.json`` files no longer built); return the names changed."""
    changed = stale_files(resources, out_dir)
    expected = rendered(resources)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = out_dir / name
        if name in expected:
            path.write_text(expected[name], encoding="utf-8")
        else:
            path.unlink()
    return changed
