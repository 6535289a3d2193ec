"""``knobflow observe | recommend | apply | history``: the inference plane on live instances.

``observe`` measures an instance passively; ``recommend`` and ``apply`` run the Prefect flows of
``flows.recommend`` and ``flows.apply`` (on the temporary API unless ``PREFECT_API_URL`` names a
server); ``history`` prints an instance's actuation log. Exit codes of ``apply``: 0 the config was
kept (or nothing to change, or a dry run), 1 it was rolled back or the actuation failed, 3 it was
refused (a rule, the policy or the system) or rejected by an operator: nothing was changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION
from flows.cli_instance import _root, progress_printer

__all__ = ["apply_command", "history_command", "observe_command", "recommend_command"]

_out, _err = Console(), Console(stderr=True)
_NAME = typer.Argument(help="Instance name (see `knobflow instance list`).")
_JSON = typer.Option("--json", help="Print the result as JSON.")
_WINDOWS = typer.Option(min=2, max=1000, help="Windows before and after (default: the "
                        "instance's policy, 5).")
_WINDOW_S = typer.Option("--window-s", min=0.1, max=3600.0,
                         help="Seconds per window (default: the instance's policy, 5).")


def observe_command(
    name: Annotated[str, _NAME],
    seconds: Annotated[float, typer.Option(min=0.2, max=86400.0,
                                           help="Seconds to observe in all.")] = 30.0,
    windows: Annotated[int, typer.Option(min=1, max=1000, help="Windows to cut them in.")] = 6,
    as_json: Annotated[bool, _JSON] = False,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Measure a live instance passively from its own counters (nothing is changed)."""
    from flows.apply import acting_on
    from tasks.observe import observe

    printer = progress_printer()
    with acting_on(_root(home), name, on_progress=printer) as act:
        printer(f"{name}: observing {windows} windows of {seconds / windows:g} s")
        seen = observe(act.live, windows=windows, window_s=seconds / windows,
                       objective=act.objective,
                       on_window=lambda i, w: printer(
                           f"  window {i + 1}: {act.objective} "
                           f"{w.metrics.get(act.objective, float('nan')):,.1f}"))
    if as_json:
        print(json.dumps(seen.to_dict(), default=str))
    else:
        for line in seen.lines():
            _out.print(line, markup=False, highlight=False)
    if not seen.valid:
        raise typer.Exit(1)


@contextmanager
def _flow_progress() -> Iterator[None]:
    """The flows' INFO lines (their progress) on stderr, as plain lines, while they run; Prefect's
    own console lines stay off unless --verbose."""
    from flows.cli_tune import prefect_console

    prefect_console(False)
    printer = progress_printer()

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            printer(record.getMessage())

    handler, logger = _Lines(logging.INFO), logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def recommend_command(
    name: Annotated[str, _NAME],
    windows: Annotated[int | None, _WINDOWS] = None,
    window_s: Annotated[float | None, _WINDOW_S] = None,
    as_json: Annotated[bool, _JSON] = False,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Observe an instance and recommend a config for its workload (nothing is applied)."""
    root = _root(home)
    from tasks.instances import InstanceStore

    InstanceStore(root).get(name)  # an unknown name answers at once, before Prefect starts
    from flows import temporary_api
    from flows.recommend import recommend_flow

    temporary_api.start()
    with _flow_progress():
        result = recommend_flow(instance=name, home=str(root), windows=windows,
                                window_s=window_s)
    if as_json:
        print(json.dumps(result, default=str))
        return
    for line in result["lines"]:
        _out.print(line, markup=False, highlight=False)


def apply_command(
    name: Annotated[str | None, typer.Argument(help="Instance name (or --service).")] = None,
    config: Annotated[Path | None, typer.Argument(
        help="Config YAML (knob: value), e.g. a job's best.yaml; default: the recommendation.",
        dir_okay=False)] = None,
    service: Annotated[str | None, typer.Option(
        help="Canary: apply to the service's instances one at a time.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Show the diff and the rules' verdict only.")]
    = False,
    windows: Annotated[int | None, _WINDOWS] = None,
    window_s: Annotated[float | None, _WINDOW_S] = None,
    as_json: Annotated[bool, _JSON] = False,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Apply a config to a live instance, verify it against the windows before, keep it or roll
    it back; with --service, a canary over the service's instances. A service with approval
    required waits for knobflow approve or reject first. Exit 0 kept, 1 rolled back or failed,
    3 refused or rejected (nothing changed)."""
    if service is not None and name is not None and config is None:
        name, config = None, Path(name)  # `apply --service S CONFIG`: the one argument is CONFIG
    if (name is None) == (service is None):
        raise typer.BadParameter("give an instance NAME or --service S (one of them)",
                                 param_hint="NAME")
    root = _root(home)
    from tasks.instances import InstanceStore

    if name is not None:
        InstanceStore(root).get(name)  # an unknown name answers at once, before Prefect starts
    changes = _read_changes(root, name, service, config)
    _check_approval(root, service or InstanceStore(root).get(str(name)).service, dry_run)
    from flows import temporary_api
    from flows.apply import apply_flow

    temporary_api.start()
    with _flow_progress():
        result = apply_flow(instance=name, service=service, config=changes,
                            source=f"file {config}" if config else "recommendation",
                            dry_run=dry_run, home=str(root), windows=windows, window_s=window_s)
    _print_apply(result, as_json)
    outcomes = [r["outcome"] for r in result["results"]]
    if any(o in ("refused", "rejected") for o in outcomes):
        raise typer.Exit(3)
    if any(o not in ("kept", "dry_run") for o in outcomes):
        raise typer.Exit(1)


def _check_approval(root: Path, service: str, dry_run: bool) -> None:
    """A service that requires approval needs a Prefect server: said before any flow starts."""
    from tasks.services import service_settings

    if not dry_run and service_settings(root, service).approval == "required":
        from flows.approval import require_server

        require_server(f"service {service} requires approval (approval: required): apply")


def _read_changes(root: Path, name: str | None, service: str | None,
                  config: Path | None) -> dict[str, Any] | None:
    """The config file checked against the target's spec before any flow starts."""
    if config is None:
        return None
    from flows.cli_rules import _read_config
    from targets.registry import load_target
    from tasks.instances import InstanceStore

    store = InstanceStore(root)
    first = store.get(name) if name else next(iter(store.of_service(str(service))), None)
    if first is None:
        raise typer.BadParameter(f"service '{service}' has no instances", param_hint="--service")
    return _read_config(str(config), load_target(first.target).knob_spec())


def _print_apply(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
        return
    for r in result["results"]:
        _out.print(f"{r['instance']}: {r['outcome']}: {r.get('note', '')}", markup=False,
                   highlight=False, soft_wrap=True)
        for knob, d in (r.get("diff") or {}).items():
            _out.print(f"  {knob}: {d['from']!r} -> {d['to']!r}", markup=False, highlight=False)
        for warning in r.get("warnings") or []:
            _out.print(f"  warning: {warning}", markup=False, highlight=False)
    if result.get("not_reached"):
        _out.print("rollout stopped; not applied to: " + ", ".join(result["not_reached"]),
                   markup=False)


def history_command(name: Annotated[str, _NAME], as_json: Annotated[bool, _JSON] = False,
                    home: Annotated[str | None, HOME_OPTION] = None) -> None:
    """The actuations of an instance, oldest first, and how each ended."""
    from flows.apply import acting_on, log_path
    from tasks.actlog import ActuationLog, history_table
    from tasks.instances import InstanceStore

    root = _root(home)
    with acting_on(root, name, on_progress=progress_printer()):
        rows = history_table(ActuationLog(log_path(InstanceStore(root), name)))
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        _out.print(f"{name}: no actuations yet", markup=False)
        return
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    _out.print(table)
