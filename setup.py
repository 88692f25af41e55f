"""Build hook: the study resources, terminology and CQL go into the wheel as package data.

``resources/``, ``terminology/`` and ``cql/`` stay at the top of the checkout, where users look for
them; setuptools only packages files that live inside a package, so this build step copies them to
``fhir_trial/_data/`` in the build tree. ``fhir_trial.config`` finds them there when the package was
installed from its wheel, and at the top of the checkout otherwise. Metadata lives in setup.cfg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
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


setup(cmdclass={"build_py": BuildPyWithData})
