"""The ``screen-population`` options that fetch the population from a FHIR server (Bulk Data).

``--fhir-server URL`` with ``--group ID`` | ``--patient-level`` | ``--system-level`` runs an export
into ``--download-dir`` (default: a new ``bulk-export-<UTC time>`` folder here; the files stay
after screening: they are the data screened); ``--resume DIR`` continues an interrupted one;
``--cancel-export DIR`` cancels it on the server. Credentials: ``--token`` (or FHIR_TRIAL_TOKEN),
or SMART Backend Services with ``--client-id`` and ``--jwks FILE`` (optionally ``--kid``,
``--scope``). ``--token-host HOST`` lets another host receive the token (see
:mod:`fhir_trial.population.bulk.client` for where the token goes).

:func:`bulk_options` adds the options to a click command; :func:`export_from_options` runs what
they ask and returns the :class:`~fhir_trial.population.bulk.BulkExport` to screen (None: nothing to screen).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fhir_trial.config import Settings
from fhir_trial.errors import InputError
from fhir_trial.population.bulk.auth import StaticToken, TokenProvider
from fhir_trial.population.bulk.auth.backend_services import BackendServicesAuth, load_signing_key
from fhir_trial.population.bulk.client import (
    EXPORT_TYPES,
    BulkClient,
    BulkExport,
    ExportExpiredError,
    Progress,
)
from fhir_trial.population.bulk.progress import TqdmProgress
from fhir_trial.population.bulk.state import ExportState

F = TypeVar("F", bound=Callable[..., Any])

BULK_OPTION_NAMES = (
    "fhir_server",
    "group",
    "patient_level",
    "system_level",
    "download_dir",
    "resume",
    "cancel_export",
    "token",
    "client_id",
    "jwks",
    "kid",
    "scope",
    "token_host",
)

_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--fhir-server",
        metavar="URL",
        help="Export the population from this FHIR server (Bulk Data).",
    ),
    click.option("--group", metavar="ID", help="With --fhir-server: export Group/ID (the cohort)."),
    click.option("--patient-level", is_flag=True, help="With --fhir-server: export every Patient."),
    click.option("--system-level", is_flag=True, help="With --fhir-server: a system-level export."),
    click.option(
        "--download-dir",
        metavar="DIR",
        help="Where the export's files go (default: a new bulk-export-<time> folder here).",
    ),
    click.option("--resume", metavar="DIR", help="Continue an interrupted export, then screen it."),
    click.option(
        "--cancel-export", metavar="DIR", help="Cancel the export DIR belongs to, on the server."
    ),
    click.option(
        "--token",
        envvar="FHIR_TRIAL_TOKEN",
        metavar="TOKEN",
        help="Bearer token for the FHIR server (or env FHIR_TRIAL_TOKEN).",
    ),
    click.option(
        "--client-id", metavar="ID", help="SMART Backend Services: the registered client id."
    ),
    click.option(
        "--jwks",
        metavar="FILE",
        help="SMART Backend Services: JWKS file holding the private key (RS384 or ES384).",
    ),
    click.option("--kid", metavar="KID", help="SMART Backend Services: which key of the JWKS."),
    click.option(
        "--scope",
        metavar="SCOPES",
        help="SMART Backend Services: scopes to ask for (default: read access to the types read).",
    ),
    click.option(
        "--token-host",
        multiple=True,
        metavar="HOST",
        help="Another host allowed to receive the token (e.g. the export's file server).",
    ),
]


def bulk_options(command: F) -> F:
    """Add the Bulk Data options to a click command (they arrive as keyword arguments)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def wants_bulk(options: dict[str, Any]) -> bool:
    """Whether any Bulk Data option was given."""
    return any(options.get(name) for name in BULK_OPTION_NAMES)


def _level(options: dict[str, Any]) -> tuple[str, str | None]:
    chosen = [
        name
        for name, given in (
            ("group", options.get("group")),
            ("patient", options.get("patient_level")),
            ("system", options.get("system_level")),
        )
        if given
    ]
    if len(chosen) != 1:
        raise InputError(
            "with --fhir-server give exactly one of --group ID, --patient-level or --system-level"
        )
    return chosen[0], options.get("group")


def _auth(
    options: dict[str, Any], base_url: str, settings: Settings, group_level: bool
) -> TokenProvider:
    client_id, jwks = options.get("client_id"), options.get("jwks")
    if client_id or jwks:
        if not (client_id and jwks):
            raise InputError("SMART Backend Services needs both --client-id and --jwks FILE")
        # Backend Services takes precedence over a token (which may come from FHIR_TRIAL_TOKEN).
        key = load_signing_key(jwks, options.get("kid"))
        # Read access to what is exported, and to the Group a group-level export names.
        types = (*EXPORT_TYPES, "Group") if group_level else EXPORT_TYPES
        return BackendServicesAuth(
            base_url,
            client_id,
            key,
            types=types,
            scope=options.get("scope"),
            settings=settings,
        )
    return StaticToken(options.get("token"))


def _client(
    options: dict[str, Any],
    base_url: str,
    settings: Settings,
    progress: Progress | None,
    *,
    group_level: bool,
) -> BulkClient:
    return BulkClient(
        base_url,
        _auth(options, base_url, settings, group_level),
        settings=settings,
        token_hosts=options.get("token_host") or (),
        progress=progress,
    )


def _is_group(state: ExportState) -> bool:
    return "/Group/" in state.kickoff_url


def interrupted_message(folder: Path) -> str:
    """What to do after Ctrl-C: the job is kept on the server."""
    return (
        f"\nInterrupted. The export is kept on the server and what was downloaded is in {folder}.\n"
        f"  resume:  fhir-trial screen-population --resume {folder} [same credentials]\n"
        f"  cancel:  fhir-trial screen-population --cancel-export {folder} [same credentials]"
    )


def export_from_options(
    options: dict[str, Any], settings: Settings, *, show_progress: bool = True
) -> BulkExport | None:
    """Run what the Bulk Data options ask: an export to screen, or None after a cancellation.

    Ctrl-C keeps the job on the server, prints how to resume or cancel, and exits with 130.
    """
    cancel = options.get("cancel_export")
    resume = options.get("resume")
    server = options.get("fhir_server")
    if sum(bool(x) for x in (cancel, resume, server)) != 1:
        raise InputError("give one of --fhir-server URL, --resume DIR or --cancel-export DIR")
    progress: Progress | None = TqdmProgress() if show_progress else None
    if cancel:
        folder = Path(cancel)
        state = ExportState.load(folder)
        _client(options, state.base_url, settings, None, group_level=_is_group(state)).cancel(
            folder
        )
        click.echo(f"The export of {folder} is cancelled on {state.base_url}.", err=True)
        return None
    if resume:
        folder = Path(resume)
        state = ExportState.load(folder)
        base_url = state.base_url
        if server and server.rstrip("/") != base_url:
            raise InputError(f"{folder} holds an export from {base_url}, not {server}")
        client = _client(options, base_url, settings, progress, group_level=_is_group(state))
        run: Callable[[], BulkExport] = lambda: client.resume(folder)  # noqa: E731
    else:
        level, group = _level(options)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        folder = Path(options.get("download_dir") or f"bulk-export-{stamp}")
        client = _client(options, str(server), settings, progress, group_level=level == "group")
        run = lambda: client.run(folder, level, group)  # noqa: E731
    try:
        export = run()
    except KeyboardInterrupt:
        if ExportState.exists(folder):
            click.echo(interrupted_message(folder), err=True)
        else:
            click.echo("\nInterrupted before the server accepted the export.", err=True)
        raise click.exceptions.Exit(130) from None
    except ExportExpiredError as exc:
        raise ExportExpiredError(
            f"{exc.message}. The export cannot be resumed: start a new one with --fhir-server "
            f"and another --download-dir (or delete {folder})",
            url=exc.url,
            status=exc.status,
            outcome=exc.outcome,
        ) from None
    finally:
        if progress is not None:
            progress.close()
    for line in export.summary():
        click.echo(line, err=True)
    sys.stderr.flush()
    return export
