"""``knobflow check-regression NAME``: is a job's result, a config, or a live instance slower
than the recorded reference of its service and workload, beyond the noise?

Exit 0: passing or undecided (said which), 1: a regression, 2: bad input (an unknown name, no
reference for the service and workload: it says how to record one). A job alone is compared
from what was recorded (no Prefect, no runs); ``--config`` measures the config and the
reference's config now, inside the ``check-regression`` flow (``flows/regression.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION

__all__ = ["check_regression_command"]

_out = Console()


def check_regression_command(
    name: Annotated[str, typer.Argument(
        help="A recorded job (its study name, as tune prints it) or a live instance.")],
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", dir_okay=False, help="Measure this config (knob: value "
        "YAML) now against the reference's config, interleaved, on a test instance of the "
        "job's target and workload.")] = None,
    runs: Annotated[int, typer.Option(
        "--runs", min=2, max=100, help="With --config: most pairs of runs; it stops after 3 "
        "once the 95% interval is decisive (10).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the check as one JSON "
                                          "object.")] = False,
    windows: Annotated[int | None, typer.Option(
        "--windows", min=2, help="A live instance: windows to observe (default: its policy).")
    ] = None,
    window_s: Annotated[float | None, typer.Option(
        "--window-s", min=0.1, help="A live instance: seconds per window (default: its "
        "policy).")] = None,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Compare a job's result, a config or a live instance with the reference recorded for its
    service and workload; exit 1 when it is slower beyond the noise (the 95% interval of the
    ratio new/reference lies entirely on the slower side of 1), 0 otherwise."""
    from targets.common.settings import knobflow_home

    root = knobflow_home(home)
    from flows.regression import RegressionCheck, RegressionFound, find_job, regression_check

    job = find_job(root, name)
    if config is None or job is None:  # nothing to run: no Prefect
        check = regression_check(root, name, config=str(config) if config else None,
                                 windows=windows, window_s=window_s)
    else:
        from flows import temporary_api
        from flows.cli_live import _flow_progress
        from flows.regression import candidate_config, check_regression

        candidate_config(job, str(config))  # a bad file answers before Prefect starts
        temporary_api.start()
        try:
            with _flow_progress():
                check = RegressionCheck.from_dict(check_regression(
                    name=name, config=str(config.resolve()), runs=runs, home=str(root)))
        except RegressionFound as found:  # the flow run is Failed
            check = found.check
    _print(check.to_dict(), check.row(), as_json)
    if check.regression:
        raise typer.Exit(1)


def _print(data: dict[str, Any], row: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, default=str))
        return
    _out.print(f"{data['name']}: {data['subject']}", markup=False, highlight=False,
               soft_wrap=True)
    _out.print(f"reference: {data['reference']}", markup=False, highlight=False,
               soft_wrap=True)
    table = Table(caption="(n): runs or windows")
    for column in row:
        table.add_column(column, no_wrap=True)
    table.add_row(*row.values())
    _out.print(table)
    _out.print(data["message"], markup=False, highlight=False, soft_wrap=True)
