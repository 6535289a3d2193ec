"""``knobflow doctor``: where every store points and whether it answers (``flows.doctor``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION

__all__ = ["doctor_command"]


def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Show where the Optuna studies, MLflow, Prefect and knobflow's records are, and whether
    each answers (exit 0 only when all do).

    The stores are the embedded ones under the home unless settings point them elsewhere:
    KNOBFLOW_CONFIG (the knobflow.toml that infra/stack start writes) or KNOBFLOW_* variables."""
    import os

    from flows.doctor import checks
    from targets.common.settings import CONFIG_ENV, current_settings, quiet_environment

    quiet_environment()
    settings = current_settings(home)
    found = checks(settings)
    source = os.environ.get(CONFIG_ENV) or "embedded defaults (no KNOBFLOW_CONFIG)"
    if as_json:
        print(json.dumps({"settings": source, "checks": [c.to_dict() for c in found]}, indent=2))
    else:
        table = Table(title=f"knobflow stores (settings: {source})", title_justify="left")
        for column in ("store", "where", "answers", "detail"):
            table.add_column(column, overflow="fold")
        for check in found:
            table.add_row(check.store, check.where, "yes" if check.answers else "NO",
                          check.detail, style=None if check.answers else "red")
        out = Console()
        if not out.is_terminal:
            out = Console(width=160)
        out.print(table)
    if not all(c.answers for c in found):
        raise typer.Exit(1)
