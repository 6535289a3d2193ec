"""``knobflow serve``: the deployments of prefect.yaml served locally (``flows.serve``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION
from targets.common.settings import knobflow_home, quiet_environment, writable_home

__all__ = ["serve_command"]


def serve_command(
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="Serve only the deployments of this target (repeatable).")] = None,
    file: Annotated[str | None, typer.Option(
        "--file", help="The prefect.yaml to serve (default: the repository's).")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Most flow runs at once (default: no limit).")] = None,
    list_only: Annotated[bool, typer.Option(
        "--list", help="List the deployments with their schedules and triggers; serve none.")
    ] = False,
    fork: Annotated[bool, typer.Option(
        "--fork/--no-fork", help="Fork each flow run from a process that has loaded knobflow "
        "(default), or start each in a new interpreter that imports it all again.")] = True,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Serve knobflow's deployments (prefect.yaml) from this process, without a work pool.

    Each deployment's schedules run, and its triggers become Prefect automations (a drift event
    of a live instance starts its re-tune). Without PREFECT_API_URL, knobflow starts its own
    Prefect server under the home (127.0.0.1, a password in a 0600 file) and stops it on exit.
    Ctrl-C or SIGTERM stops the runner, its flow runs and that server; nothing is left running.
    Each flow run is a process of its own, forked from one that loaded knobflow once (with
    --no-fork, a new interpreter per run).
    """
    from flows.serve import PREFECT_YAML, describe, read_deployments, serve

    quiet_environment()
    deployments = read_deployments(Path(file).resolve() if file else PREFECT_YAML, target or [])
    table = Table(title=f"knobflow deployments ({len(deployments)})", title_justify="left")
    table.add_column("deployment", no_wrap=True)
    for col in ("schedules", "triggers"):
        table.add_column(col, overflow="fold")
    for row in describe(deployments):
        table.add_row(row["deployment"], row["schedules"], row["triggers"])
    out = Console()
    if not out.is_terminal:  # a log or a pipe: one line per deployment, not folded at 80
        out = Console(width=160)
    out.print(table)
    if list_only:
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how serving ends
        serve(writable_home(knobflow_home(home)), deployments, limit=limit, warm=fork,
              say=lambda line: out.print(line, markup=False, highlight=False))
    out.print("knobflow serve: stopped", markup=False)
