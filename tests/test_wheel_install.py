"""The package works installed from its wheel, in a fresh virtual environment away from the checkout.

A user runs ``pip install fhir-trial``: no ``resources/``, ``terminology/`` or ``cql/`` folder of a
checkout is anywhere near. The test builds the wheel from this checkout, installs it (with its
dependencies from the package index) into a new virtual environment under a temporary folder, and
runs ``screen``, ``validate``, ``build-resources --check`` and ``serve`` from there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cds_helpers import free_port

from fhir_trial.compiled import COMPILED_MODULES, extension_paths

CHECKOUT = Path(__file__).resolve().parent.parent


def _run(
    args: list[str], cwd: Path, timeout: float = 600, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FHIR_TRIAL_"))}
    env.update(extra_env or {})
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` folder of a fresh virtual environment holding the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", str(CHECKOUT), "--no-deps", "-q", "-w", str(wheels)],
        cwd=root,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("fhir_trial-*.whl")
    venv.EnvBuilder(with_pip=True).create(root / "env")
    bin_dir = root / "env" / "bin"
    done = _run([str(bin_dir / "pip"), "install", "-q", str(wheel)], cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    yield bin_dir


def test_the_wheel_carries_resources_terminology_and_cql() -> None:
    """Package data: every published resource, every terminology source and the CQL with its ELM."""
    out = CHECKOUT / "build" / "wheel-content-test"
    # A file left in the build tree by an earlier build (a resource since renamed) must not ship.
    stale = CHECKOUT / "build" / "lib" / "fhir_trial" / "_data" / "resources" / "Library-stale.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("{}", encoding="utf-8")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", str(CHECKOUT), "--no-deps", "-q", "-w", str(out)],
        cwd=CHECKOUT,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = out.glob("fhir_trial-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("fhir_trial/_data/resources/")}
    assert shipped == {
        f"fhir_trial/_data/resources/{path.name}"
        for path in (CHECKOUT / "resources").glob("*.json")
    }
    for path in (CHECKOUT / "terminology" / "valuesets").glob("*.json"):
        assert f"fhir_trial/_data/terminology/valuesets/{path.name}" in names
    # every CQL library (the main one, the clinical areas, Common, FHIRHelpers) with its ELM
    sources = sorted((CHECKOUT / "cql").glob("*.cql"))
    assert len(sources) == 14
    for path in sources:
        assert f"fhir_trial/_data/cql/{path.name}" in names
    for path in (CHECKOUT / "cql" / "build").glob("*.json"):
        assert f"fhir_trial/_data/cql/build/{path.name}" in names
    assert "fhir_trial/_data/cql/build/NCT06010472Eligibility.json" in names
    assert "fhir_trial/_data/cql/build/NCT06010472Common.json" in names
    wheel.unlink()


def test_screen_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """`screen --bundle` reads the packaged ValueSets: a 17-year-old is ineligible by inc-age."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": "teen",
                    "gender": "female",
                    "birthDate": "2009-06-15",
                }
            }
        ],
    }
    path = tmp_path / "teen.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    result = _run(
        [
            str(installed / "fhir-trial"),
            "screen",
            "--bundle",
            str(path),
            "--as-of",
            "2026-11-26",
            "--format",
            "json",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "ineligible"
    statuses = {c["id"]: c["status"] for c in report["criteria"]}
    assert statuses["inc-age"] == "not-met"
    assert len(statuses) == 29


def test_the_wheel_runs_the_evaluator_compiled(installed: Path, tmp_path: Path) -> None:
    """Where this checkout's install compiled the evaluator (a C compiler is here), so did the
    wheel's build, and the installed package runs it compiled."""
    if not all(extension_paths(module) for module in COMPILED_MODULES):
        pytest.skip("this checkout's evaluator is not compiled (no C compiler at install)")
    script = (
        "import fhir_trial.compiled as c; print(c.running_compiled(), c.reason_to_run_source())"
    )
    done = _run([str(installed / "python"), "-c", script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "None"]


def test_without_a_c_compiler_the_wheel_is_pure_python(tmp_path: Path) -> None:
    """A failing C compiler leaves a working pure-Python wheel, and the build says why."""
    # A copy of the sources: the checkout's build/ folder holds the compiled objects of its own
    # install, which a build there would reuse without calling the compiler.
    source = tmp_path / "source"
    shutil.copytree(
        CHECKOUT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "node_modules", "*.so", "*.pyd", "__pycache__", ".*_cache"
        ),
    )
    out = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-v", "-w", str(out)],
        cwd=tmp_path,
        extra_env={"CC": "false"},
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "installing it as pure Python" in built.stdout + built.stderr
    (wheel,) = out.glob("fhir_trial-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [name for name in names if name.endswith((".so", ".pyd"))]
    assert "fhir_trial/record.py" in names and "fhir_trial/compiled.py" in names


def test_validate_and_build_check_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """`validate` finds the packaged resources; `build-resources --check` finds them up to date."""
    validated = _run([str(installed / "fhir-trial"), "validate"], cwd=tmp_path)
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-2000:]
    assert "resource(s) valid" in validated.stdout
    checked = _run([str(installed / "fhir-trial"), "build-resources", "--check"], cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]


def test_serve_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    """`serve` (gunicorn) answers /fhir/ResearchStudy with the packaged study."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FHIR_TRIAL_"))}
    env["FHIR_TRIAL_STORE_PATH"] = str(tmp_path / "store.sqlite3")
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            str(installed / "fhir-trial"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/fhir/ResearchStudy", timeout=5
                ) as response:
                    body = json.loads(response.read())
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.3)
        assert body is not None, (tmp_path / "serve.log").read_text(errors="replace")[-2000:]
        assert body["resourceType"] == "Bundle"
        ids = [e["resource"]["id"] for e in body["entry"]]
        assert "nct06010472" in ids
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
