"""README.md documents every option of every subcommand (tools/cli_options.py --check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_options", ROOT / "tools" / "cli_options.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_lists_every_cli_option() -> None:
    tool = _tool()
    missing = tool.missing_from((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not missing, f"README.md lacks {missing}: run python tools/cli_options.py --write"


def test_the_check_notices_a_missing_option() -> None:
    tool = _tool()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "| `--infusion-date` DATE |" in readme
    without = readme.replace("| `--infusion-date` DATE |", "| DATE |")
    assert tool.missing_from(without) == ["screen --infusion-date"]
    assert tool.missing_from("no block") == ["the README has no cli-options block"]


def test_every_command_has_a_table() -> None:
    text = _tool().tables()
    for command in ("screen", "screen-population", "validate", "publish", "serve", "cql build"):
        assert f"#### `fhir-trial {command}`" in text
