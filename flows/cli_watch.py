"""``knobflow watch NAME``: a live instance compared with its reference, once or on an interval.

The command runs the watch's steps (``flows.watch.watch_instances``) in this process, without a
flow run and without Prefect's temporary server: the drift event ``knobflow.drift.detected`` is
emitted only when a Prefect API is configured (``PREFECT_API_URL``), and the output says whether
it was. ``--once``: one observation, the evidence as a table, exit 1 on drift (or when the
windows failed the measurement gate), 0 otherwise; without it, an observation every ``--every``
seconds until Ctrl-C (exit 130). ``--reset``: the observation becomes the reference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION
from flows.cli_instance import _root, progress_printer

__all__ = ["print_watch", "watch_command"]

_out = Console()


def watch_command(
    name: Annotated[str, typer.Argument(help="Instance name (see `knobflow instance list`).")],
    once: Annotated[bool, typer.Option("--once", help="Observe once; exit 1 on drift.")] = False,
    every: Annotated[float, typer.Option(min=1.0, max=86400.0, help="Seconds from one "
                                         "observation to the next (without --once).")] = 60.0,
    reset: Annotated[bool, typer.Option("--reset", help="Record the instance as it is now as "
                                        "its reference, and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each result as a JSON line.")]
    = False,
    home: Annotated[str | None, HOME_OPTION] = None,
    windows: Annotated[int | None, typer.Option(min=2, max=1000, help="Windows per "
                                                "observation (default: the instance's policy, "
                                                "5).")] = None,
    window_s: Annotated[float | None, typer.Option("--window-s", min=0.1, max=3600.0,
                                                   help="Seconds per window (default: the "
                                                   "instance's policy, 5).")] = None,
) -> None:
    """Watch a live instance for drift: its workload fingerprint, performance and scale against
    its reference (its last actuation, or its first watch). On drift, the Prefect event
    knobflow.drift.detected is emitted when PREFECT_API_URL is set. Exit 0 no drift, 1 drift
    or windows that failed the measurement gate (with --once), 130 stopped (without)."""
    root = _root(home)
    from tasks.instances import InstanceStore

    InstanceStore(root).get(name)  # an unknown name answers at once
    from flows.temporary_api import configured_api

    emit = bool(configured_api())
    options = {"windows": windows, "window_s": window_s, "emit": emit,
               "say": progress_printer()}
    if once or reset:
        line = _round(root, name, as_json, reset=reset, **options)
        if line["status"] == "invalid" or line["drifted"]:
            raise typer.Exit(1)
        return
    while True:  # until Ctrl-C or SIGTERM: "knobflow: interrupted", exit 130 (flows.cli)
        started = time.monotonic()
        _round(root, name, as_json, **options)
        time.sleep(max(0.0, started + every - time.monotonic()))


def _round(root: Path, name: str, as_json: bool, **options: Any) -> dict[str, Any]:
    """One observation of ``name``, printed; its drift-log line."""
    from flows.watch import watch_instances

    line = watch_instances(root, [name], **options)["instances"][0]
    if line.get("event"):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30)  # sent before we say so (or exit)
    if as_json:
        print(json.dumps(line, default=str), flush=True)
    else:
        print_watch(line)
    return line


def print_watch(line: dict[str, Any], console: Console = _out) -> None:
    """A watch's evidence as a table, its summary, and what became of the event."""
    from tasks.drift import Evidence

    evidence = [Evidence(**e) for e in line.get("evidence") or []]
    if evidence:
        table = Table("feature", "kind", "reference", "now", "change", "test", "verdict")
        for e in evidence:
            table.add_row(e.name, e.kind, f"{e.reference:.4g}", f"{e.now:.4g}", e.change_text(),
                          e.test_text(), "DRIFT" if e.drifted else "ok")
        console.print(table)
    console.print(f"{line['instance']}: {line['summary']}", markup=False, highlight=False,
                  soft_wrap=True)
    for note in line.get("notes") or []:
        console.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
    if line.get("status") in ("compared", "reference", "invalid"):
        said = ("emitted knobflow.drift.detected (id {})".format(line.get("event_id"))
                if line.get("event") else f"not emitted: {line.get('note')}"
                if line.get("drifted") else "none (no drift)")
        console.print(f"  event: {said}", markup=False, highlight=False, soft_wrap=True)
