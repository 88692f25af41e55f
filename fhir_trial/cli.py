"""The ``fhir-trial`` command line. Each subcommand lives in :mod:`fhir_trial.commands`.

Exit codes (documented in the README):
  0 success (for ``screen``: a report was produced, whatever the verdict)
  1 unexpected failure of this program
  2 bad input or configuration (a file that is not JSON/FHIR, an unusable option)
  3 FHIR server unreachable (connection refused, timeout)
  4 authentication or authorisation refused by the server (401/403)
  5 the FHIR server answered with another error or with something that is not FHIR
  6 validation found errors (``validate``)
"""

from __future__ import annotations

import importlib
import sys

import click

from fhir_trial.errors import FhirTrialError

# command name -> module under fhir_trial.commands exposing a click command called ``command``.
COMMANDS: dict[str, str] = {
    "screen": "screen",
    "screen-population": "screen_population",
    "validate": "validate",
    "publish": "publish",
    "build-resources": "build_resources",
    "import-vsac": "import_vsac",
    "serve": "serve",
    "cql": "cql",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it is run (keeps start-up fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"fhir_trial.commands.{module_name}")
        command: click.Command = module.command
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fhir-trial")
def cli() -> None:
    """NCT06010472 on FHIR R4: publish the study, screen patients, serve CDS Hooks."""


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one clear line and a documented exit code on failure."""
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of raising it.
        result = cli.main(args=argv, prog_name="fhir-trial", standalone_mode=False)
    except FhirTrialError as exc:
        click.echo(f"error: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
