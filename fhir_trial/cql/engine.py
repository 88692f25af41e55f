"""Python client of the reference CQL engine (cql-execution + cql-exec-fhir) run as ONE Node process.

``tools/cql/engine.mjs`` reads JSON lines and answers JSON lines. :class:`CqlEngine` starts it once,
loads the ELM of every library in ``cql/build/`` (NCT06010472Eligibility, the clinical-area libraries
it includes, NCT06010472Common, FHIRHelpers) and the shipped ValueSet expansions once, then
evaluates any number of patient Bundles (the results are the main library's defines)::

    with CqlEngine() as engine:
        result = engine.evaluate(bundle, Settings(as_of=...), failed=["Observation"])
        result.statuses["inc-age"], result.verdict

Prefix semantics. fhir_trial.terminology matches an ICD-10 / ICD-10-CM / ATC record code against a
ValueSet that lists one of its ancestors (M32.14 against M32.1) and reads alias system URIs (an OID
for SNOMED CT) as the canonical one. CQL ValueSet membership is exact, so for every patient the
client computes, with fhir_trial.terminology itself, which of the Bundle's own codings belong to
which ValueSet that way but are not literally listed, and sends them as per-request additions to
those expansions (``extraCodes``). The same goes for RxNorm products matched by ingredient name
(an unlisted RxNorm code whose display names a listed ingredient; see fhir_trial.terminology), and
for drugs read by name in medication records (fhir_trial.medications, "Names as a safety net"):
a medication record whose codes, of any system, are in none of a drug ValueSet's entries but whose
names (displays, concept texts, the Medication's code text, its ingredients' names) name a listed
ingredient has every one of its codes added to that ValueSet, for that patient. A drug named only
in words has no code to add: both sides leave it unidentified. The shared expansions stay
untouched.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_trial.canonical import ELIGIBILITY_LIBRARY
from fhir_trial.config import PROJECT_ROOT, Settings
from fhir_trial.cql.build import elm_includes
from fhir_trial.criteria.catalog import CRITERIA
from fhir_trial.errors import ConfigurationError, FhirTrialError
from fhir_trial.medications import DRUG_VALUESETS, drug_records
from fhir_trial.record import PatientRecord
from fhir_trial.terminology import (
    Terminology,
    ValueSet,
    load_terminology,
    lookup_keys,
    name_candidate,
    normalise_system,
)

LIBRARY_NAME = ELIGIBILITY_LIBRARY
TOOLS_DIR = PROJECT_ROOT / "tools" / "cql"
BUILD_DIR = PROJECT_ROOT / "cql" / "build"
STATUSES = frozenset({"met", "not-met", "unknown", "needs-review", "not-applicable"})

# CQL parameter -> Settings field (same values on both sides; CRITERIA.md windows and thresholds).
PARAMETER_FIELDS: Mapping[str, str] = {
    "MinAge": "min_age",
    "MaxAge": "max_age",
    "SledaiMinScore": "sledai_min_score",
    "SledaiWindowDays": "sledai_window_days",
    "BilagWindowDays": "bilag_window_days",
    "AnaMinTiter": "ana_min_titer",
    "NeutrophilsMin10e9PerL": "neutrophils_min_10e9_per_l",
    "NeutrophilsWindowDays": "neutrophils_window_days",
    "HemoglobinMinGPerL": "hemoglobin_min_g_per_l",
    "HemoglobinWindowDays": "hemoglobin_window_days",
    "LvefMinPercent": "lvef_min_percent",
    "LvefWindowDays": "lvef_window_days",
    "PriorTherapyMinDays": "prior_therapy_min_days",
    "PriorTherapyMaxGapDays": "prior_therapy_max_gap_days",
    "DefaultSupplyDays": "default_supply_days",
    "IvAntibioticsWindowDays": "iv_antibiotics_window_days",
    "HerpesWindowDays": "herpes_window_days",
    "PregnancyTestWindowDays": "pregnancy_test_window_days",
    "PregnancyMaxDays": "pregnancy_max_days",
    "RecentTrialWindowDays": "recent_trial_window_days",
    "BCellTherapyWindowDays": "b_cell_therapy_window_days",
    "AbnormalLabsWindowDays": "abnormal_labs_window_days",
}
DECIMAL_PARAMETERS = frozenset({"NeutrophilsMin10e9PerL", "HemoglobinMinGPerL", "LvefMinPercent"})
DATE_PARAMETERS = ("AsOf", "InfusionDate")


class CqlEngineError(FhirTrialError):
    """The CQL engine could not be started, or could not evaluate a request."""


@dataclass(frozen=True)
class CqlResult:
    """One patient's results from the CQL library: a status per criterion and the verdict.

    ``deceased``: the library's ``Deceased`` define (deceased on the screening date, which makes
    the verdict ineligible whatever the criteria say).
    """

    statuses: Mapping[str, str]
    verdict: str
    raw: Mapping[str, Any]
    deceased: bool = False


def parameters_for(settings: Settings, failed: Iterable[str] = ()) -> dict[str, Any]:
    """The library's parameters for these settings (and the categories that failed to load)."""
    values: dict[str, Any] = {
        "AsOf": settings.screening_date().isoformat(),
        "InfusionDate": settings.infusion_day().isoformat(),
        "FailedCategories": sorted(set(failed)),
    }
    for name, field_name in PARAMETER_FIELDS.items():
        value = getattr(settings, field_name)
        values[name] = float(value) if name in DECIMAL_PARAMETERS else int(value)
    return values


def _codings(node: Any) -> Iterator[tuple[str, str, str]]:
    """Every (system, code, display) anywhere in a JSON tree (Coding-shaped objects; '' if absent)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            code = item.get("code")
            if isinstance(code, str) and ("system" in item or "display" in item):
                system = item.get("system")
                display = item.get("display")
                yield (
                    system if isinstance(system, str) else "",
                    code,
                    display if isinstance(display, str) else "",
                )
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))


class ExpansionIndex:
    """The shipped expansions, plus the per-patient additions that reproduce prefix/alias matching."""

    def __init__(self, terminology: Terminology) -> None:
        self.expansions: dict[str, list[dict[str, str]]] = {}
        self._members: dict[tuple[str, str], list[str]] = defaultdict(list)
        # ValueSets that match RxNorm products by ingredient name (ValueSet.coding_ingredient).
        self._named: list[ValueSet] = []
        for vs_id in terminology.ids():
            vs = terminology.get(vs_id)
            self.expansions[vs.url] = [{"system": s, "code": c} for s, c in sorted(vs.codes)]
            for key in vs.codes:
                self._members[key].append(vs.url)
            if vs.ingredient_names:
                self._named.append(vs)
        self._listed = {
            url: {(c["system"], c["code"]) for c in codes} for url, codes in self.expansions.items()
        }
        known = set(terminology.ids())
        self._drug_valuesets = [terminology.get(i) for i in DRUG_VALUESETS if i in known]

    def extra_codes(self, bundle: Mapping[str, Any]) -> dict[str, list[dict[str, str | None]]]:
        """Record codings that fhir_trial.terminology places in a ValueSet but CQL would not."""
        extra: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for system, code, display in set(_codings(bundle)):
            candidate = (
                name_candidate({"system": system, "code": code, "display": display})
                if display
                else None
            )
            if candidate is not None:
                for vs in self._named:
                    if vs.candidate_ingredient(*candidate):
                        extra[vs.url].add((system, code))
            if system == normalise_system(system) and (system, code) in self._members:
                continue  # listed literally: CQL finds it alone
            urls = {url for key in lookup_keys(system, code) for url in self._members.get(key, ())}
            for url in urls:
                if (system, code) not in self._listed[url]:
                    extra[url].add((system, code))
        for url, named in self._named_drugs(bundle):
            extra[url].add(named)
        # A coding without a system reaches the CQL engine with a null system, not "".
        return {
            url: [{"system": s or None, "code": c} for s, c in sorted(codes)]
            for url, codes in extra.items()
        }

    def _named_drugs(self, bundle: Mapping[str, Any]) -> Iterator[tuple[str, tuple[str, str]]]:
        """(ValueSet url, (system, code)) for the codes of medication records read by name."""
        record = PatientRecord()
        entries = bundle.get("entry") if isinstance(bundle, Mapping) else None
        for entry in entries if isinstance(entries, list) else []:
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(resource, dict):
                record.add(resource, entry.get("fullUrl"))
        for drug in drug_records(record).values():
            if drug.names and drug.keys:
                for vs in self._drug_valuesets:
                    if drug.named_as(vs) is None:
                        continue
                    for coding in drug.codings:
                        system, code = coding.get("system"), coding.get("code")
                        if isinstance(code, str) and code.strip():
                            yield vs.url, (system if isinstance(system, str) else "", code)


def published_elm(resources_dir: str | Path) -> list[dict[str, Any]]:
    """The ELM attached to every Library in ``resources_dir`` (what a consumer of the published
    Libraries would run), decoded from its ``application/elm+json`` content."""
    elms: list[dict[str, Any]] = []
    for path in sorted(Path(resources_dir).glob("Library-*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        for attachment in resource.get("content", []):
            if attachment.get("contentType") == "application/elm+json" and "data" in attachment:
                elms.append(json.loads(base64.b64decode(attachment["data"])))
    return elms


class CqlEngine:
    """One Node process running the reference CQL engine on the project's libraries.

    The ELM comes from ``build_dir`` (cql/build), or, when ``libraries`` is given, from those ELM
    documents (e.g. :func:`published_elm`: the ELM inside the published Library resources).
    """

    def __init__(
        self,
        resources_dir: str | Path | None = None,
        build_dir: Path = BUILD_DIR,
        tools_dir: Path = TOOLS_DIR,
        node: str | None = None,
        libraries: list[dict[str, Any]] | None = None,
    ) -> None:
        self.resources_dir = str(resources_dir or Settings().resources_dir)
        self.build_dir = build_dir
        self.libraries = libraries
        self.tools_dir = tools_dir
        self.node = node or shutil.which("node") or "node"
        self._process: subprocess.Popen[str] | None = None
        self._next_id = 0
        self._index: ExpansionIndex | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CqlEngine:
        """Start Node and load the ELM and the ValueSet expansions (once)."""
        if self._process is not None:
            return self
        script = self.tools_dir / "engine.mjs"
        if not (self.tools_dir / "node_modules" / "cql-execution").is_dir():
            raise ConfigurationError(
                f"the CQL toolchain is not installed: run `npm ci` in {self.tools_dir}"
            )
        # Every library's ELM (the main one, the clinical areas it includes, Common, FHIRHelpers):
        # the engine resolves includes among them by name.
        if self.libraries is not None:
            libraries, where = list(self.libraries), "the libraries given"
        else:
            libraries = [
                json.loads(path.read_text(encoding="utf-8"))
                for path in sorted(self.build_dir.glob("*.json"))
            ]
            where = str(self.build_dir)
        loaded = {lib.get("library", {}).get("identifier", {}).get("id") for lib in libraries}
        missing = {LIBRARY_NAME} - loaded
        missing |= {name for lib in libraries for name, _ in elm_includes(lib)} - loaded
        if missing:
            raise ConfigurationError(
                f"no ELM for {', '.join(sorted(missing))} in {where}: run `fhir-trial cql build`"
            )
        self._index = ExpansionIndex(load_terminology(self.resources_dir))
        try:
            self._process = subprocess.Popen(
                [self.node, str(script)],
                cwd=self.tools_dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
            )
        except OSError as exc:
            raise CqlEngineError(f"cannot start node: {exc}") from exc
        self._call(
            {
                "op": "load",
                "libraries": libraries,
                "main": LIBRARY_NAME,
                "valuesets": self._index.expansions,
            }
        )
        return self

    def close(self) -> None:
        """Stop the Node process (closing its stdin ends it)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()

    def __enter__(self) -> CqlEngine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise CqlEngineError("the CQL engine is not running")
        self._next_id += 1
        message = {"id": self._next_id, **message}
        try:
            process.stdin.write(json.dumps(message, separators=(",", ":")) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except (OSError, ValueError) as exc:
            raise CqlEngineError(f"the CQL engine stopped: {exc}") from exc
        if not line:
            raise CqlEngineError(f"the CQL engine stopped (exit code {process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("id") != self._next_id:
            raise CqlEngineError("the CQL engine answered out of order")
        if not answer.get("ok"):
            raise CqlEngineError(f"CQL engine: {answer.get('error', 'unknown error')}")
        return answer

    def evaluate_raw(
        self,
        bundle: Mapping[str, Any],
        settings: Settings | None = None,
        failed: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Every define's value for the one patient in ``bundle``."""
        if self._process is None:
            self.start()
        assert self._index is not None  # set by start()
        settings = settings or Settings()
        answer = self._call(
            {
                "op": "evaluate",
                "bundle": bundle,
                "executionDateTime": settings.screening_date().isoformat(),
                "parameters": parameters_for(settings, failed),
                "dateParameters": list(DATE_PARAMETERS),
                "extraCodes": self._index.extra_codes(bundle),
            }
        )
        results: dict[str, Any] = answer.get("results", {})
        return results

    def evaluate(
        self,
        bundle: Mapping[str, Any],
        settings: Settings | None = None,
        failed: Iterable[str] = (),
    ) -> CqlResult:
        """The status of every criterion (null read as ``unknown``) and the verdict."""
        raw = self.evaluate_raw(bundle, settings, failed)
        statuses: dict[str, str] = {}
        for spec in CRITERIA:
            value = raw.get(spec.id)
            status = "unknown" if value is None else str(value)
            if status not in STATUSES:
                raise CqlEngineError(f"CQL define {spec.id!r} returned {value!r}, not a status")
            statuses[spec.id] = status
        return CqlResult(
            statuses=statuses,
            verdict=str(raw.get("Verdict")),
            raw=raw,
            deceased=raw.get("Deceased") is True,
        )
