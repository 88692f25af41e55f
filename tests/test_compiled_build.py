"""The evaluator's compiled build (mypyc, see setup.py and fhir_trial/compiled.py).

- where the checkout was compiled, the compiled build runs, and ``FHIR_TRIAL_PURE_PYTHON`` runs
  the source instead;
- both builds write the same report for every clinical case and for synthetic charts;
- which build runs is chosen right: a stale, partial or switched-off build runs the source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_trial import compiled
from fhir_trial.compiled import COMPILED_MODULES, PURE_PYTHON_VARIABLE, extension_paths

CHECKOUT = Path(__file__).resolve().parent.parent
BUILT = all(extension_paths(module) for module in COMPILED_MODULES)
needs_build = pytest.mark.skipif(
    not BUILT, reason="the checkout holds no compiled build (no C compiler when it was installed)"
)

# Run in a fresh process: every clinical case and 40 synthetic charts, each report as JSON.
_REPORTS = """
import json, sys
sys.path[:0] = [{tests!r}, {benchmarks!r}]
from clinical_cases import all_cases
from synthetic import AS_OF, synthetic_bundle
from fhir_trial.compiled import running_compiled
from fhir_trial.config import Settings
from fhir_trial.evaluate import evaluate
from fhir_trial.sources.bundle import record_from_bundle

reports = [evaluate(case.record(), case.settings_object()).to_json() for case in all_cases()]
for seed in range(40):
    reports.append(evaluate(record_from_bundle(synthetic_bundle(seed, 120)), Settings(as_of=AS_OF)).to_json())
print(json.dumps({{"compiled": running_compiled(), "reports": reports}}))
"""


def _reports(pure: bool) -> dict[str, object]:
    env = dict(os.environ)
    env.pop(PURE_PYTHON_VARIABLE, None)
    if pure:
        env[PURE_PYTHON_VARIABLE] = "1"
    script = _REPORTS.format(tests=str(CHECKOUT / "tests"), benchmarks=str(CHECKOUT / "benchmarks"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@needs_build
def test_the_compiled_and_the_source_build_write_the_same_reports() -> None:
    fast, source = _reports(pure=False), _reports(pure=True)
    assert fast["compiled"] is True and source["compiled"] is False
    assert len(fast["reports"]) > 600  # type: ignore[arg-type]
    assert fast["reports"] == source["reports"]


def _fake_package(root: Path, *, built: set[str]) -> Path:
    """A checkout-shaped folder: setup.py beside a package holding every compiled module's
    source, and an "extension" file (its name is what counts) for the modules in ``built``."""
    (root / "setup.py").write_text("", encoding="utf-8")
    package = root / "fhir_trial"
    for module in COMPILED_MODULES:
        source = root / compiled.source_file(module)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("", encoding="utf-8")
        if module in built:
            extension = source.with_name(source.stem + ".cpython-311-x86_64-linux-gnu.so")
            extension.write_bytes(b"")
            os.utime(extension, ns=(source.stat().st_mtime_ns + 10**9,) * 2)
    return package


@pytest.fixture
def fake_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(
        compiled.importlib.machinery, "EXTENSION_SUFFIXES", [".cpython-311-x86_64-linux-gnu.so"]
    )
    return tmp_path


def test_which_build_runs(fake_checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    everything = set(COMPILED_MODULES)
    package = _fake_package(fake_checkout, built=everything)
    monkeypatch.setattr(compiled, "_PACKAGE_DIR", package)
    assert compiled.reason_to_run_source({}) is None  # built and current: compiled
    assert compiled.reason_to_run_source({PURE_PYTHON_VARIABLE: "0"}) is None
    assert "is set" in (compiled.reason_to_run_source({PURE_PYTHON_VARIABLE: "1"}) or "")
    # An edit since the build: the source runs, and the reason names the module.
    edited = compiled.source_path("fhir_trial.criteria.labs")
    os.utime(edited, ns=(edited.stat().st_mtime_ns + 5 * 10**9,) * 2)
    assert "fhir_trial.criteria.labs changed" in (compiled.reason_to_run_source({}) or "")
    # An installed wheel (no setup.py beside the package): file times are not read.
    (fake_checkout / "setup.py").unlink()
    assert compiled.reason_to_run_source({}) is None


def test_a_partial_build_runs_the_source(
    fake_checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _fake_package(fake_checkout, built=set(COMPILED_MODULES) - {"fhir_trial.units"})
    monkeypatch.setattr(compiled, "_PACKAGE_DIR", package)
    assert "no extension (fhir_trial.units" in (compiled.reason_to_run_source({}) or "")


def test_a_pure_install_has_nothing_to_choose(
    fake_checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "_PACKAGE_DIR", _fake_package(fake_checkout, built=set()))
    assert compiled.reason_to_run_source({PURE_PYTHON_VARIABLE: "1"}) is None


def test_the_source_finder_finds_the_py_files_of_the_compiled_modules_only() -> None:
    finder = compiled._SourceFirst()
    spec = finder.find_spec("fhir_trial.criteria.labs", None)
    assert spec is not None and spec.origin == str(compiled.source_path("fhir_trial.criteria.labs"))
    assert spec.origin.endswith("criteria/labs.py")
    assert finder.find_spec("fhir_trial.report", None) is None  # never compiled
    assert finder.find_spec("json", None) is None


@needs_build
def test_a_stale_checkout_build_runs_the_source_and_says_so_once(tmp_path: Path) -> None:
    """A copy of the compiled checkout in which one module was edited after it was compiled."""
    import shutil

    shutil.copytree(CHECKOUT / "fhir_trial", tmp_path / "fhir_trial")
    for library in CHECKOUT.glob("fhir_trial__mypyc*"):  # the modules' shared runtime
        shutil.copy2(library, tmp_path / library.name)
    (tmp_path / "setup.py").write_text("", encoding="utf-8")
    script = "import fhir_trial.compiled as c; print(c.running_compiled())"
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_VARIABLE}
    env.pop("_FHIR_TRIAL_STALE_BUILD_WARNED", None)
    env["PYTHONPATH"] = str(tmp_path)

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )

    current = run({})
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == "True" and "running from source" not in current.stderr
    edited = tmp_path / "fhir_trial" / "units.py"
    (built,) = compiled.extension_paths("fhir_trial.units")
    os.utime(edited, ns=(built.stat().st_mtime_ns + 10**9,) * 2)  # edited after its build
    stale = run({})
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.strip() == "False"
    assert stale.stderr.count("running from source: fhir_trial.units changed") == 1
    # Said once per run: the worker processes it starts (which inherit the mark) stay quiet.
    again = run({"_FHIR_TRIAL_STALE_BUILD_WARNED": "1"})
    assert again.stdout.strip() == "False" and again.stderr == ""
