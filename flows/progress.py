"""What an operator sees while a job runs: a live bar (trials, failures, best so far), a summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flows.job import Job
from tasks.explore import ExploreStats
from tuners.trials import TrialOutcome


class TuneProgress:
    """A rich progress display fed by the tune flow's listeners (see ``flows.tune.listeners``)."""

    def __init__(self, console: Console, job: Job, resume: bool = False) -> None:
        self.job = job
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        label = f"{job.target}/{job.instance}" + (" (resumed)" if resume else "")
        self.explore_task = self.progress.add_task(
            f"tuning {label}", total=job.budget, status="starting (Prefect, MLflow)"
        )
        self.verify_task = self.progress.add_task(
            "verifying best vs default", total=2 * job.verify_repeats, status="", visible=False
        )

    def __enter__(self) -> TuneProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_run(self, key: str, outcome: TrialOutcome, stats: ExploreStats | None) -> None:
        """Called after each trial (``stats`` set) and each verification run (``stats`` None)."""
        if stats is not None:
            best = "-" if stats.best_value is None else f"{stats.best_value:,.6g}"
            self.progress.update(
                self.explore_task,
                completed=stats.done,
                total=stats.budget,
                status=f"failed {stats.failed} · blocked {stats.blocked} · best "
                f"{self.job.objective} {best}",
            )
            return
        self.progress.update(self.explore_task, status=self.progress.tasks[0].fields["status"])
        self.progress.update(
            self.verify_task,
            visible=True,
            advance=1,
            status=f"last: {key.split('-')[-1]} "
            + (f"{outcome.value:,.6g}" if outcome.ok else outcome.failure_class),
        )

    @staticmethod
    def print_summary(console: Console, summary: dict[str, Any]) -> None:
        """The human-readable result of a job."""
        best = summary.get("best_config")
        if not best:
            console.print(
                f"[red]No trial completed[/red] ({summary['n_failed']} failed: "
                f"{summary.get('failure_classes')}). See the trial logs under the job folder."
            )
            return
        console.print(f"job {summary['study_name']}")
        table = Table(title="best config")
        table.add_column("knob")
        table.add_column("value")
        for k, v in best.items():
            table.add_row(k, str(v))
        console.print(table)
        objective = summary["objective"]
        console.print(
            f"trials: {summary['n_trials']} ({summary['n_failed']} failed"
            + (f": {summary['failure_classes']}" if summary["failure_classes"] else "")
            + ")"
        )
        if summary.get("gain") is None:
            console.print(
                "[red]verification failed:[/red] " + "; ".join(summary["verify_failures"])
            )
            return
        verdict = (
            "[green]better than the default[/green]"
            if summary["gain_significant"]
            else "[yellow]not clearly better than the default (the interval includes 1)[/yellow]"
        )
        console.print(
            f"{objective}: default {summary['default_value']:,.6g}"
            f" -> best {summary['best_value']:,.6g}"
            f"  gain [bold]{summary['gain']:.2f}x[/bold] "
            f"(95% interval {summary['gain_low']:.2f}-{summary['gain_high']:.2f}, "
            f"{summary['verify_repeats']} interleaved repeats): {verdict}"
        )
        if "best_true_value" in summary:
            console.print(
                f"true value of best: {summary['best_true_value']:,.6g} "
                f"(known optimum {summary['known_optimum_value']:,.6g})"
            )
        if summary.get("n_blocked"):
            by_rule = ", ".join(f"{k} {v}" for k, v in summary["blocked_by"].items())
            console.print(f"candidates blocked by rules (never run): {summary['n_blocked']} "
                          f"({by_rule})")
        service = summary.get("service")
        review = f"knobflow rules list {summary['target']}" + (
            f" --service {service}" if service and service != summary["target"] else "")
        for rule in summary.get("learned_rules", []):
            console.print(f"[yellow]learned rule[/yellow] {rule} (review: {review})")
        for text in summary.get("rule_warnings", []) + summary.get("range_hints", []):
            console.print(f"[yellow]warning:[/yellow] {text}")
        transfer = summary.get("transfer") or {}
        if transfer.get("n_seeds"):
            model = (f", model {transfer['model']} v{transfer['model_version']}"
                     if transfer.get("model") else "")
            console.print(f"transfer: {transfer['n_seeds']} configs queued first from "
                          f"{', '.join(transfer['from_instances']) or 'siblings'}{model} "
                          f"(trials {', '.join(map(str, transfer['trials']))})")
        model_report = summary.get("model") or {}
        if model_report.get("error"):
            console.print(f"[yellow]warning:[/yellow] models not trained: {model_report['error']}")
        elif model_report.get("line"):
            console.print(f"models: {model_report['line']}")
        for key in ("best_config_file", "native_config_file"):
            if summary.get(key):
                console.print(f"{key.replace('_', ' ')}: {summary[key]}")
        console.print(
            f"MLflow run {summary['mlflow_run_id']}: open the UI with "
            f"`mlflow ui --backend-store-uri {summary.get('tracking_uri')} --host 127.0.0.1`"
        )
