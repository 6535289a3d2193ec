"""``infra/stack start|status|stop|env``: the shared stack on this host (``flows.stack``).

Exit codes: 0 done (``start`` of a running stack and ``stop`` of none included); ``status`` 1 when
a component does not answer, 3 when no stack runs; 1 when something failed (the message names the
component and ends with the tail of its log).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.stack import DEFAULT_DIR, Stack, StackError
from targets.common.settings import quiet_environment

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The shared stack on this host: PostgreSQL, a Prefect server, an MLflow "
                       "server, a work pool and workers.")

DIR_OPTION = typer.Option("--dir", envvar="KNOBFLOW_STACK_DIR",
                          help="The stack's directory (0700): records, secret, logs, data.")


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@app.command()
def start(
    dir: Annotated[Path, DIR_OPTION] = DEFAULT_DIR,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Prefect workers to start.")
                       ] = 0,
    pool: Annotated[str, typer.Option("--pool", help="The process work pool.")] = "knobflow",
    postgres_url: Annotated[str | None, typer.Option(
        "--postgres-url", help="An existing PostgreSQL (postgresql://USER@HOST:PORT[/DB], no "
        "password: that goes in DIR/secret, 0600) instead of a cluster made in DIR.")] = None,
    host: Annotated[str, typer.Option(
        "--host", help="The address every server binds to (other hosts reach them there; "
        "firewall it).")] = "127.0.0.1",
) -> None:
    """Start the stack (nothing is done if it already runs)."""
    quiet_environment()
    stack = Stack(dir)
    try:
        started = stack.start(workers=workers, pool=pool, postgres_url=postgres_url, host=host)
    except StackError as exc:
        _err(f"infra/stack start: {exc}")
        raise typer.Exit(1) from None
    if not started:
        _err(f"infra/stack: the stack in {stack.dir} is already running "
             "(`infra/stack status`, or `infra/stack stop` first)")
    _err(f"point knobflow at it: eval \"$(infra/stack env --dir {shlex.quote(str(stack.dir))})\"")


@app.command()
def status(
    dir: Annotated[Path, DIR_OPTION] = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each component: its URL, pid, and whether it answers knobflow."""
    report = Stack(dir, progress=None).status()
    if as_json:
        print(json.dumps(report, indent=2))
    elif not report["components"]:
        print(f"no stack in {report['dir']}")
    else:
        print(f"stack {report['dir']}: {'up' if report['running'] else 'NOT all up'}")
        for name, c in report["components"].items():
            state = "answers" if c["answers"] else ("runs, no answer" if c["running"]
                                                    else "DOWN")
            print(f"  {name:<24} {state:<16} pid {c['pid']!s:<8} {c['url']}")
    if not report["components"]:
        raise typer.Exit(3)
    if not report["running"]:
        raise typer.Exit(1)


@app.command()
def stop(dir: Annotated[Path, DIR_OPTION] = DEFAULT_DIR) -> None:
    """Stop every process of the stack (workers, servers, PostgreSQL); data are kept."""
    stack = Stack(dir)
    if not stack.stop():
        _err(f"infra/stack: no stack running in {stack.dir}")


@app.command()
def env(dir: Annotated[Path, DIR_OPTION] = DEFAULT_DIR) -> None:
    """Print the export lines that point knobflow at the stack (never the secret)."""
    try:
        values = Stack(dir, progress=None).env()
    except StackError as exc:
        _err(f"infra/stack env: {exc}")
        raise typer.Exit(1) from None
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")


def main() -> None:
    app(prog_name="infra/stack")


if __name__ == "__main__":
    main()
