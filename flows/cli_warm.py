"""``knobflow warm``: a process that loads knobflow once and runs each ``knobflow tune`` of its
home in a forked child (``flows.warm``)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_help import HOME_OPTION
from targets.common.errors import KnobflowError

__all__ = ["warm_command"]


def warm_command(home: Annotated[str | None, HOME_OPTION] = None) -> None:
    """Keep knobflow loaded: `knobflow tune` commands of this home then start in about a second
    instead of twenty (no imports, no Prefect server start), with the same output, files and
    exit code. Runs in the foreground until Ctrl-C or SIGTERM, which interrupt its running jobs
    (`--resume` continues them). A command whose environment or knobflow code differs from this
    process's runs on its own, and says so; KNOBFLOW_NO_WARM=1 makes a command run on its own."""
    from flows.warm import WarmError, serve
    from targets.common.settings import knobflow_home, quiet_environment, writable_home

    quiet_environment()
    root = writable_home(knobflow_home(home))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        code = serve(root)
    except WarmError as exc:
        raise KnobflowError(str(exc)) from None
    raise typer.Exit(code)
