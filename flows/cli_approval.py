"""``knobflow approve | reject | approvals``: answer the apply runs that wait for an operator.

An apply to an instance whose service requires approval pauses on the Prefect server
(``flows.approval``); ``approve RUN`` and ``reject RUN`` resume it (RUN: the flow run's id or
name) with the answer, the OS user as who answered; ``approvals`` lists the runs that wait. They
talk to the server ``PREFECT_API_URL`` names (with ``PREFECT_API_AUTH_STRING``); none named, or a
run that is not paused, is a one-line error (exit 2).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import UNUSED_HOME_OPTION

__all__ = ["approvals_command", "approve_command", "reject_command"]

_out = Console()
_RUN = typer.Argument(help="The paused apply run: its flow run id or name (see knobflow "
                      "approvals).")
_REASON = typer.Option(help="Why (kept in the instance's actuation log).")


def _answer(run: str, approve: bool, reason: str) -> None:
    import getpass

    from flows.approval import answer_run, diff_text

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = "unknown user"
    done = answer_run(run, approve, reason, by=f"{user} (knobflow "
                      f"{'approve' if approve else 'reject'})")
    plan = done["plan"]
    verb = "approved" if approve else "rejected"
    _out.print(f"{verb} flow run {done['name']} ({done['id']}): {plan['instance']}: "
               f"{diff_text(plan)}", markup=False, highlight=False, soft_wrap=True)


def approve_command(
    run: Annotated[str, _RUN],
    reason: Annotated[str, _REASON] = "",
    home: Annotated[str | None, UNUSED_HOME_OPTION] = None,
) -> None:
    """Approve a paused apply run: it goes on to apply, verify, keep or roll back."""
    _answer(run, True, reason)


def reject_command(
    run: Annotated[str, _RUN],
    reason: Annotated[str, _REASON] = "",
    home: Annotated[str | None, UNUSED_HOME_OPTION] = None,
) -> None:
    """Reject a paused apply run: nothing is changed, the rejection is logged (apply exits 3)."""
    _answer(run, False, reason)


def approvals_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
    home: Annotated[str | None, UNUSED_HOME_OPTION] = None,
) -> None:
    """The apply runs that wait for approval: run, instance, diff, since when."""
    from flows.approval import diff_text, pending_approvals

    rows = pending_approvals()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        _out.print("no apply run waits for approval", markup=False)
        return
    table = Table(title="apply runs waiting for approval")
    for column in ("run", "id", "instance", "diff", "waiting since", "timeout"):
        table.add_column(column, overflow="fold")
    for row in rows:
        plan = row["plan"]
        rollout = plan.get("rollout") or []
        who = plan["instance"] + (f" (canary: {', '.join(rollout)})" if len(rollout) > 1 else "")
        table.add_row(row["name"], row["id"], who, diff_text(plan), row["since"],
                      f"{plan.get('timeout_s')} s")
    _out.print(table)
