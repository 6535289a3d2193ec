"""``knobflow report JOB|INSTANCE``: write the HTML report of a tuning job or a live instance
(``flows.report_html``), print where it went and the MLflow run it was logged to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_help import HOME_OPTION

__all__ = ["report_command"]


def report_command(
    name: Annotated[str, typer.Argument(
        metavar="JOB|INSTANCE", help="A job's name as knobflow tune prints it (or its folder, or "
        "the beginning of its name), or a live instance's name.")],
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", dir_okay=False,
        help="HTML file to write (default: report.html in the job's or instance's folder).")]
    = None,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Write one HTML page of a tuning job (optimisation history, knob importance, predicted
    against measured, summary) or of a live instance (its actuations and drift events on a
    timeline, the objective over time), and log it to MLflow as report.html."""
    from flows.cli_instance import _root
    from flows.report_html import write_report
    from targets.common.settings import quiet_environment

    quiet_environment()
    written = write_report(_root(home), name, out.resolve() if out else None)
    print(f"report: {written.path}")
    if written.run_id:
        print(f"MLflow run: {written.run_id} (artifact report.html)")
    else:
        print(f"MLflow: not logged: {written.note}")
