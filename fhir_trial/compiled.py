"""The evaluator's compiled build: which modules setup.py compiles with mypyc, and which build runs.

The modules listed here (the record, the criteria and what they read) are plain, type-checked
Python. Installing the package compiles them to C extensions with mypyc when it can (setup.py);
anywhere it cannot (no C compiler, mypyc failing), the same modules run as Python. Both builds
decide every criterion the same way (tests/test_compiled_build.py compares them).

This module decides, once per process and before any of them is imported, to run all of them from
their source instead of the compiled extensions when:

- ``FHIR_TRIAL_PURE_PYTHON`` is set (to anything but ``0``): to compare, debug or profile;
- in a checkout, a compiled extension is older than its source (an edit or ``git pull`` since the
  last ``make``): the extension would run the old code. A warning says so once;
- only some of the modules have an extension: the compiled modules call each other directly, so
  they run together or not at all.

It imports nothing from the package (setup.py reads :data:`COMPILED_MODULES` from it before the
package can be imported).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The modules setup.py compiles, all or none. Not compiled: the report classes (pickled between
# processes and built field by field: see report.frozen_instance) and every I/O shell.
COMPILED_MODULES: tuple[str, ...] = (
    "fhir_trial.record",
    "fhir_trial.observations",
    "fhir_trial.medications",
    "fhir_trial.evaluate",
    "fhir_trial.fhirdates",
    "fhir_trial.units",
    "fhir_trial.elements",
    "fhir_trial.deceased",
    "fhir_trial.criteria.allergy",
    "fhir_trial.criteria.comorbidity",
    "fhir_trial.criteria.context",
    "fhir_trial.criteria.demographics",
    "fhir_trial.criteria.diagnosis",
    "fhir_trial.criteria.disease_activity",
    "fhir_trial.criteria.infection",
    "fhir_trial.criteria.labels",
    "fhir_trial.criteria.labs",
    "fhir_trial.criteria.reproductive",
    "fhir_trial.criteria.serology",
    "fhir_trial.criteria.therapy",
    "fhir_trial.criteria.trials",
)

PURE_PYTHON_VARIABLE = "FHIR_TRIAL_PURE_PYTHON"
# Set once the stale-build warning was written, so that worker processes do not repeat it.
_WARNED_VARIABLE = "_FHIR_TRIAL_STALE_BUILD_WARNED"
_PACKAGE_DIR = Path(__file__).resolve().parent


def source_file(module: str) -> str:
    """The ``.py`` file of one of :data:`COMPILED_MODULES`, from the folder holding the package
    (``fhir_trial/criteria/labs.py``): what setup.py compiles and the Makefile depends on."""
    return module.replace(".", "/") + ".py"


def source_path(module: str) -> Path:
    """The ``.py`` file of one of :data:`COMPILED_MODULES`, where it is."""
    return _PACKAGE_DIR.parent / source_file(module)


def extension_paths(module: str) -> list[Path]:
    """The compiled extensions of a module found beside its source (none in a pure build)."""
    source = source_path(module)
    return [
        source.with_name(source.stem + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if source.with_name(source.stem + suffix).is_file()
    ]


def reason_to_run_source(environ: dict[str, str] | None = None) -> str | None:
    """Why this process runs the listed modules from source although extensions exist, or None
    (compiled, or no extension at all: nothing to choose)."""
    return _choice(dict(os.environ) if environ is None else environ)[0]


def _choice(environ: dict[str, str]) -> tuple[str | None, bool]:
    """:func:`reason_to_run_source`, and whether the reason is a stale checkout build (which
    nobody asked for, so it is said)."""
    built = {module: extension_paths(module) for module in COMPILED_MODULES}
    if not any(built.values()):
        return None, False
    if environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0"):
        return f"{PURE_PYTHON_VARIABLE} is set", False
    missing = [module for module, found in built.items() if not found]
    if missing:
        return (
            f"{len(missing)} of the compiled modules have no extension ({missing[0]}, ...)",
            False,
        )
    if _is_checkout():
        stale = [
            module
            for module, found in built.items()
            if source_path(module).stat().st_mtime_ns > min(p.stat().st_mtime_ns for p in found)
        ]
        if stale:
            why = (
                f"{', '.join(stale)} changed since it was compiled: run `make` (or "
                f"`pip install -e .`) to compile the changes"
            )
            return why, True
    return None, False


def _is_checkout() -> bool:
    # An installed wheel has no setup.py beside the package; its files' times say nothing (an
    # installer writes a wheel's .py and extensions in any order).
    return (_PACKAGE_DIR.parent / "setup.py").is_file()


class _SourceFirst(MetaPathFinder):
    """Finds the listed modules' ``.py`` files before the import system finds their extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def choose_build() -> None:
    """Run the listed modules from source when :func:`reason_to_run_source` gives a reason (a
    stale checkout build is also said on stderr, once). Called by ``fhir_trial/__init__``
    before it imports any of them."""
    if any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        return
    reason, stale = _choice(dict(os.environ))
    if reason is None:
        return
    sys.meta_path.insert(0, _SourceFirst())
    if stale and not os.environ.get(_WARNED_VARIABLE):
        os.environ[_WARNED_VARIABLE] = "1"
        print(f"fhir-trial: running from source: {reason}", file=sys.stderr)


def running_compiled() -> bool:
    """Whether this process runs the compiled build (imports the evaluator to find out)."""
    import fhir_trial.record

    return isinstance(
        getattr(fhir_trial.record, "__loader__", None), importlib.machinery.ExtensionFileLoader
    )
