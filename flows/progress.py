"""What an operator sees while a job runs: a live bar (trials, failures, best so far), a summary."""

from __future__ import annotations

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
from flows.report import RunSummary, TuneListener
from tasks.explore import ExploreStats
from tuners.trials import TrialOutcome

__all__ = ["TuneProgress", "print_summary"]


class TuneProgress(TuneListener):
    """A rich progress display of one job, fed by the tune flow (its ``progress`` parameter)."""

    def __init__(self, console: Console, label: str) -> None:
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
        self.objective = ""
        self.explore_task = self.progress.add_task(
            f"tuning {label}", total=None, status="starting (Prefect, MLflow)"
        )
        self.verify_task = self.progress.add_task(
            "verifying best vs default", total=None, status="", visible=False
        )

    def __enter__(self) -> TuneProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def job_started(self, job: Job, resume: bool) -> None:
        self.objective = job.objective
        label = f"{job.target}/{job.instance}" + (" (resumed)" if resume else "")
        self.progress.update(self.explore_task, description=f"tuning {label}",
                             total=job.budget, status="starting")
        self.progress.update(self.verify_task, total=2 * job.verify_repeats)

    def trial_done(self, key: str, outcome: TrialOutcome, stats: ExploreStats) -> None:
        best = "-" if stats.best_value is None else f"{stats.best_value:,.6g}"
        # with baselines on (--baseline-every, or a noisy machine) the tuner is told ratios
        self.ratios = getattr(self, "ratios", False) or outcome.baseline_value is not None
        if self.ratios and stats.best_value is not None:
            best = f"{stats.best_value:.3g}x the default"
        self.progress.update(
            self.explore_task,
            completed=stats.done,
            total=stats.budget,
            status=f"failed {stats.failed} · blocked {stats.blocked} · best "
            f"{self.objective} {best}",
        )

    def verify_done(self, key: str, outcome: TrialOutcome) -> None:
        self.progress.update(
            self.verify_task,
            visible=True,
            advance=1,
            status=f"last: {key.split('-')[-1]} "
            + (f"{outcome.value:,.6g}" if outcome.ok else str(outcome.failure_class)),
        )


def print_summary(console: Console, summary: RunSummary) -> None:
    """The human-readable result of a job."""
    if not summary.best_config:
        console.print(
            f"[red]No trial completed[/red] ({summary.n_failed} failed: "
            f"{summary.failure_classes}). See the trial logs under the job folder."
        )
        return
    console.print(f"job {summary.study_name}")
    table = Table(title="best config")
    table.add_column("knob")
    table.add_column("value")
    for k, v in summary.best_config.items():
        table.add_row(k, str(v))
    console.print(table)
    console.print(
        f"trials: {summary.n_trials} ({summary.n_failed} failed"
        + (f": {summary.failure_classes}" if summary.failure_classes else "")
        + ")"
    )
    if summary.noise:
        console.print(summary.noise["message"])
    if summary.gain is None:
        console.print("[red]verification failed:[/red] " + "; ".join(summary.verify_failures))
        return
    _print_gain(console, summary)
    if summary.verify_stop:
        console.print(f"verification stopped: {summary.verify_stop}")
    _print_rules(console, summary)
    _print_learning(console, summary)
    for path, label in ((summary.best_config_file, "best config file"),
                        (summary.native_config_file, "native config file")):
        if path:
            console.print(f"{label}: {path}")
    console.print(
        f"MLflow run {summary.mlflow_run_id}: open the UI with "
        f"`mlflow ui --backend-store-uri {summary.tracking_uri} --host 127.0.0.1`"
    )


def _print_gain(console: Console, s: RunSummary) -> None:
    verdict = (
        "[green]better than the default[/green]"
        if s.gain_significant
        else "[yellow]not clearly better than the default (the interval includes 1)[/yellow]"
    )
    assert s.default_value is not None and s.best_value is not None
    console.print(
        f"{s.objective}: default {s.default_value:,.6g} -> best {s.best_value:,.6g}"
        f"  gain [bold]{s.gain:.2f}x[/bold] "
        f"(95% interval {s.gain_low:.2f}-{s.gain_high:.2f}, "
        f"{s.verify_repeats} interleaved repeats): {verdict}"
    )
    if s.known_optimum_value is not None and s.best_true_value is not None:
        console.print(
            f"true value of best: {s.best_true_value:,.6g} "
            f"(known optimum {s.known_optimum_value:,.6g})"
        )


def _print_rules(console: Console, s: RunSummary) -> None:
    if s.n_blocked:
        by_rule = ", ".join(f"{k} {v}" for k, v in s.blocked_by.items())
        console.print(f"candidates blocked by rules (never run): {s.n_blocked} ({by_rule})")
    review = f"knobflow rules list {s.target}" + (
        f" --service {s.service}" if s.service and s.service != s.target else "")
    for rule in s.learned_rules:
        console.print(f"[yellow]learned rule[/yellow] {rule} (review: {review})")
    for text in s.rule_warnings + s.range_hints:
        console.print(f"[yellow]warning:[/yellow] {text}")


def _print_learning(console: Console, s: RunSummary) -> None:
    transfer = s.transfer or {}
    if transfer.get("n_seeds"):
        model = (f", model {transfer['model']} v{transfer['model_version']}"
                 if transfer.get("model") else "")
        console.print(f"transfer: {transfer['n_seeds']} configs queued first from "
                      f"{', '.join(transfer['from_instances']) or 'siblings'}{model} "
                      f"(trials {', '.join(map(str, transfer['trials']))})")
    model_report = s.model or {}
    if model_report.get("error"):
        console.print(f"[yellow]warning:[/yellow] models not trained: {model_report['error']}")
    elif model_report.get("line"):
        console.print(f"models: {model_report['line']}")
