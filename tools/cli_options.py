"""The README's table of every CLI option, generated from the click commands themselves.

    python tools/cli_options.py           # print the tables (markdown)
    python tools/cli_options.py --write   # replace the block between the markers in README.md
    python tools/cli_options.py --check   # exit 1 naming every option README.md does not list

The block sits between ``<!-- cli-options:start -->`` and ``<!-- cli-options:end -->``.
``tests/test_cli_docs.py`` runs the check, so an option added without documentation fails the
suite (run ``--write`` to refresh the tables).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START = "<!-- cli-options:start -->"
END = "<!-- cli-options:end -->"


def commands() -> Iterator[tuple[str, click.Command]]:
    """Every (sub)command as ``("screen", command)``, ``("cql build", command)``, ... in order."""
    from fhir_trial.cli import cli

    def walk(prefix: str, group: click.Group) -> Iterator[tuple[str, click.Command]]:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is None:
                continue
            path = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                yield from walk(path, command)
            else:
                yield path, command

    yield from walk("", cli)


def _cell(text: str) -> str:
    line = " ".join(text.split()).replace("|", "\\|")
    return line.replace("<", "&lt;").replace(">", "&gt;")


def _default(value: object) -> str:
    """A default as the README shows it: paths inside the checkout relative to it."""
    text = str(value)
    try:
        return str(Path(text).relative_to(ROOT)) + "/" if Path(text).is_absolute() else text
    except ValueError:
        return text


def option_rows(command: click.Command) -> list[tuple[str, str]]:
    """``(names, help)`` for each option and argument of a command (``--help`` left out)."""
    rows = []
    for param in command.params:
        if isinstance(param, click.Argument):
            names = param.human_readable_name
            help_text = "positional argument"
        else:
            assert isinstance(param, click.Option)
            names = ", ".join(f"`{n}`" for n in (*param.opts, *param.secondary_opts))
            if not param.is_flag:
                names += f" {param.make_metavar(click.Context(command))}"
            help_text = param.help or ""
            if param.envvar and str(param.envvar) not in help_text:
                help_text += f" (env `{param.envvar}`)"
            if param.show_default and param.default not in (None, False, ()):
                help_text += f" (default {_default(param.default)})"
        rows.append((_cell(names), _cell(help_text) or "-"))
    return rows


def tables() -> str:
    """The markdown: one heading and table per command."""
    out: list[str] = []
    for path, command in commands():
        out += ["", f"#### `fhir-trial {path}`", ""]
        summary = (command.help or "").strip().split("\n\n")[0]
        if summary:
            out += [_cell(summary), ""]
        rows = option_rows(command)
        if not rows:
            out += ["No options."]
            continue
        out += ["| option | meaning |", "|---|---|"]
        out += [f"| {names} | {help_text} |" for names, help_text in rows]
    return "\n".join(out).strip() + "\n"


def missing_from(readme: str) -> list[str]:
    """``"screen --as-of"`` for each option the README's block does not name under its command."""
    if START not in readme or END not in readme:
        return ["the README has no cli-options block"]
    block = readme.split(START, 1)[1].split(END, 1)[0]
    sections = {}
    for part in block.split("#### `fhir-trial ")[1:]:
        name, _, body = part.partition("`")
        sections[name] = body
    missing = []
    for path, command in commands():
        body = sections.get(path)
        if body is None:
            missing.append(f"{path} (the whole command)")
            continue
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    if f"`{opt}`" not in body:
                        missing.append(f"{path} {opt}")
    return missing


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the README's CLI option tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update README.md in place")
    mode.add_argument("--check", action="store_true", help="fail if README.md misses an option")
    args = parser.parse_args(argv)
    if args.check:
        missing = missing_from(README.read_text(encoding="utf-8"))
        for item in missing:
            print(f"README.md does not document: fhir-trial {item}", file=sys.stderr)
        if missing:
            print("run: python tools/cli_options.py --write", file=sys.stderr)
        return 1 if missing else 0
    text = tables()
    if args.write:
        readme = README.read_text(encoding="utf-8")
        head, _, rest = readme.partition(START)
        _, _, tail = rest.partition(END)
        README.write_text(f"{head}{START}\n\n{text}\n{END}{tail}", encoding="utf-8")
        return 0
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
