"""Build hooks: the study resources, terminology and CQL go into the wheel as package data, and
the evaluator is compiled with mypyc where it can be.

``resources/``, ``terminology/`` and ``cql/`` stay at the top of the checkout, where users look for
them; setuptools only packages files that live inside a package, so this build step copies them to
``fhir_trial/_data/`` in the build tree. ``fhir_trial.config`` finds them there when the package was
installed from its wheel, and at the top of the checkout otherwise. Metadata lives in setup.cfg.

The modules listed in ``fhir_trial/compiled.py`` (the record and the criteria: most of a
population screening's time) are compiled to C extensions with mypyc, the compiler the mypy
project builds mypy itself with, from the same type-checked Python. Where that fails (no C
compiler, an unsupported Python) the build says so and the package is pure Python, which decides
everything the same way, only slower. ``FHIR_TRIAL_PURE_PYTHON=1`` at build time skips it.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Top-level folder -> the file patterns the package reads at run time.
DATA = {
    "resources": ("*.json",),
    "terminology": ("**/*.json", "**/*.md"),
    "cql": ("*.cql", "build/*.json"),
}


class BuildPyWithData(build_py):
    """``build_py`` plus a copy of the top-level data folders into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        target = Path(self.build_lib) / "fhir_trial" / "_data"
        for folder, patterns in DATA.items():
            # The build tree outlives a build: a file renamed or removed in the checkout (a Library
            # split in several) would otherwise still ship. The copy mirrors the checkout exactly.
            shutil.rmtree(target / folder, ignore_errors=True)
            for pattern in patterns:
                for source in sorted((HERE / folder).glob(pattern)):
                    destination = target / folder / source.relative_to(HERE / folder)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, destination)


def compiled_extensions() -> list[Any]:
    """The mypyc extensions of the modules fhir_trial/compiled.py lists; none when mypyc is not
    there, fails, or ``FHIR_TRIAL_PURE_PYTHON`` is set."""
    listing = runpy.run_path(str(HERE / "fhir_trial" / "compiled.py"))
    if os.environ.get(listing["PURE_PYTHON_VARIABLE"], "") not in ("", "0"):
        return []
    paths = [listing["source_file"](module) for module in listing["COMPILED_MODULES"]]
    try:
        from mypyc.build import mypycify

        return list(mypycify(paths, opt_level="3", debug_level="0", group_name="fhir_trial"))
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _say_pure_python(f"mypyc could not compile the evaluator ({exc!r})")
        return []


class OptionalBuildExt(build_ext):
    """``build_ext`` that leaves a pure-Python package when the C compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # a missing or failing C compiler: the package still works
            _say_pure_python(f"the compiled evaluator could not be built ({exc!r})")
            self.extensions = []


def _say_pure_python(why: str) -> None:
    print(f"fhir-trial: {why}; installing it as pure Python (slower)", file=sys.stderr)


setup(
    cmdclass={"build_py": BuildPyWithData, "build_ext": OptionalBuildExt},
    ext_modules=compiled_extensions(),
)
