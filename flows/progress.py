"""What an operator sees while a job runs: a live bar (trials, failures, the best trial so far),
and a summary at the end. The bar's "best trial" is one trial's measurement (the mean of its
repeats with ``--repeats``); the summary's "verified" values are the means of the re-measurement
of the best config and the default, interleaved (``tasks/verify.py``), and it says which is which.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
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
from flows.report import NO_GAIN, WORSE, RunSummary, TuneListener, is_default_config
from flows.spec import JobSpec
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
        self.ratio = False
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
        self.ratio = job.baseline_every > 0  # the tuner is told ratios to the default
        label = f"{job.target}/{job.instance}" + (" (resumed)" if resume else "")
        self.progress.update(self.explore_task, description=f"tuning {label}",
                             total=job.budget, status="starting")
        self.progress.update(self.verify_task, total=2 * job.verify_repeats)

    def trial_done(self, key: str, outcome: TrialOutcome, stats: ExploreStats) -> None:
        # with baselines on (--baseline-every, or a noisy machine) the tuner is told ratios
        self.ratio = self.ratio or outcome.baseline_value is not None
        if stats.best_value is None:
            best = f"{self.objective} -"
        elif self.ratio:
            best = f"{stats.best_value:.3g}x the default"
        else:
            best = f"{self.objective} {stats.best_value:,.6g}"
        self.progress.update(
            self.explore_task,
            completed=stats.done,
            total=stats.budget,
            status=f"failed {stats.failed} · blocked {stats.blocked}"
            + (f" · pruned {stats.pruned}" if stats.pruned else "") + f" · best trial {best}",
        )

    def verify_done(self, key: str, outcome: TrialOutcome) -> None:
        self.progress.update(
            self.verify_task,
            visible=True,
            advance=1,
            status=f"last: {key.split('-')[-1]} "
            + (f"{outcome.value:,.6g}" if outcome.ok else str(outcome.failure_class)),
        )


def _bounds_line(summary: RunSummary) -> str:
    """What a constrained job's SLA bounds did."""
    met = all(summary.constraints_verified.values()) if summary.constraints_verified else None
    return (f"SLA bounds: {escape('; '.join(summary.constraints))}; {summary.n_infeasible} "
            "clean trials broke one; the best config met every bound in the search"
            + ("" if met is None else ", and in its verified means" if met
               else ", not in all its verified means (see the warning above)"))


def print_summary(console: Console, summary: RunSummary) -> None:
    """The human-readable result of a job."""
    if summary.pareto_front:
        console.print(_front_table(summary))
    for bound, met in summary.constraints_verified.items():
        if not met:
            console.print(f"[yellow]warning:[/yellow] the best config met {escape(bound)} in "
                          "the search, but not in the mean of its verification runs: it lies "
                          "near the bound")
    if not summary.best_config and summary.n_infeasible:
        console.print(
            f"[red]No config met every --constraint[/red] ({escape('; '.join(summary.constraints))}"
            f"): {summary.n_infeasible} clean trials broke one, {summary.n_failed} failed; no "
            "config file written. Loosen a bound or widen the budget.")
        return
    if not summary.best_config:
        console.print(
            f"[red]No trial completed[/red] ({summary.n_failed} failed: "
            f"{escape(str(summary.failure_classes))}). See the trial logs under the job folder."
        )
        return
    console.print(f"job {summary.study_name}")
    if summary.best_is_default:
        console.print(f"[yellow]{NO_GAIN}[/yellow]: the best trial ({summary.best_trial}) ran "
                      f"the default config ({_search_value(summary)}); keep the default "
                      "(nothing verified, no config file written)")
    else:
        console.print(_config_table(summary))
    console.print(
        f"trials: {summary.n_trials} ({summary.n_failed} failed"
        + (f": {escape(str(summary.failure_classes))}" if summary.failure_classes else "")
        + ")"
    )
    if summary.constraints:
        console.print(_bounds_line(summary))
    if summary.pruner != "none":
        console.print(f"pruner {summary.pruner}: pruned {summary.n_pruned}, saved "
                      f"{summary.pruned_saved_s:.1f} s of trial time (stopped early: neither "
                      "failures nor measurements)")
    if summary.noise:
        console.print(escape(summary.noise["message"]))
    if not summary.best_is_default:
        if summary.gain is None:
            console.print("[red]verification failed:[/red] "
                          + escape("; ".join(summary.verify_failures)))
            return
        _print_gain(console, summary)
        if summary.verify_stop:
            console.print(f"verification stopped: {escape(summary.verify_stop)}")
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


def _front_table(s: RunSummary) -> Table:
    """The Pareto front: each point's values in the search, its verified gains over the
    default, and the point --prefer picked."""
    table = Table(title=f"Pareto front ({len(s.pareto_front)} points; --prefer "
                  f"{','.join(f'{k}:{v:g}' for k, v in s.prefer.items())})",
                  caption="gain: verified mean over the default's, > 1 is better")
    table.add_column("trial")
    for name, direction in zip(s.objectives, s.directions, strict=True):
        table.add_column(f"{name} ({direction[:3]})", justify="right")
        table.add_column("gain", justify="right")
    table.add_column("picked")
    for row in s.pareto_front:
        cells = [str(row["trial"]) + (" (default)" if row["is_default"] else "")]
        for name in s.objectives:
            verified = row["verified"].get(name) or {}
            gain = verified.get("gain")
            cells += [f"{row['observed'][name]:,.6g}",
                      f"{gain:.2f} ({verified['gain_low']:.2f}-{verified['gain_high']:.2f})"
                      if gain is not None else "-"]
        table.add_row(*map(escape, cells), "*" if row["chosen"] else "")
    return table


def _config_table(s: RunSummary) -> Table:
    """The best config, with the default beside each knob it changes."""
    table = Table(title=f"best config (trial {s.best_trial})",
                  caption="default: shown for changed knobs")
    table.add_column("knob")
    table.add_column("value")
    table.add_column("default")
    for k, v in (s.best_config or {}).items():
        default = s.default_config.get(k, v)
        changed = not is_default_config({k: v}, {k: default})
        table.add_row(escape(k), escape(str(v)), escape(str(default)) if changed else "")
    return table


def _search_value(s: RunSummary) -> str:
    """The best trial's value in the search, and what it is (the bar's "best trial")."""
    runs = "one run" if s.best_observed_runs <= 1 else f"the mean of {s.best_observed_runs} runs"
    assert s.best_observed_value is not None
    if s.best_observed_raw is not None:
        return (f"{s.best_observed_value:.3g}x the default measured beside it, {s.objective} "
                f"{s.best_observed_raw:,.6g}, {runs}")
    return f"{s.objective} {s.best_observed_value:,.6g}, {runs}"


def _print_gain(console: Console, s: RunSummary) -> None:
    verdict = (
        "[green]better than the default[/green]" if s.gain_significant
        else f"[red]{WORSE} (the whole interval is below 1): keep the default[/red]"
        if s.verdict == WORSE
        else "[yellow]not clearly better than the default (the interval includes 1)[/yellow]"
    )
    assert s.default_value is not None and s.best_value is not None
    console.print(f"search: best trial {s.best_trial} ({_search_value(s)}; the bar's "
                  "\"best trial\")")
    console.print(
        f"verified, means of {s.verify_repeats} interleaved re-measurements of each: "
        f"{s.objective} default {s.default_value:,.6g} -> best {s.best_value:,.6g}"
        f"  gain [bold]{s.gain:.2f}x[/bold] "
        f"(95% interval {s.gain_low:.2f}-{s.gain_high:.2f}): {verdict}"
    )
    if s.known_optimum_value is not None and s.best_true_value is not None:
        console.print(
            f"true value of best: {s.best_true_value:,.6g} "
            f"(known optimum {s.known_optimum_value:,.6g})"
        )


def _print_rules(console: Console, s: RunSummary) -> None:
    for text in s.policy_warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(text)}")
    if s.n_blocked:
        by_rule = ", ".join(f"{k} {v}" for k, v in s.blocked_by.items())
        several = (" (a candidate that breaks several rules is counted once, under all of them)"
                   if any(" + " in k for k in s.blocked_by) else "")
        console.print(f"candidates blocked by rules (never run): {s.n_blocked}: "
                      f"{escape(by_rule)}{several}")
    review = f"knobflow rules list {s.target}" + (
        f" --service {s.service}" if s.service and s.service != s.target else "")
    for rule in s.learned_rules:
        console.print(f"[yellow]learned rule[/yellow] {escape(rule)} (review: {review})")
    for text in s.rule_warnings + s.range_hints:
        console.print(f"[yellow]warning:[/yellow] {escape(text)}")


def _print_learning(console: Console, s: RunSummary) -> None:
    transfer = s.transfer or {}
    if transfer.get("n_seeds"):
        model = (f", model {transfer['model']} v{transfer['model_version']}"
                 if transfer.get("model") else "")
        console.print(f"transfer: {transfer['n_seeds']} configs queued first from "
                      f"{', '.join(transfer['from_instances']) or 'siblings'}{model} "
                      f"(trials {', '.join(map(str, transfer['trials']))})")
    model_report = s.model or {}
    if s.model is None:
        console.print(f"models: not trained: turned off ({JobSpec.flag('train')})")
    elif model_report.get("error"):
        console.print("[yellow]warning:[/yellow] models not trained: "
                      + escape(str(model_report["error"])))
    elif model_report.get("skipped"):
        console.print(f"models: not trained: {escape(str(model_report['skipped']))}")
    elif model_report.get("line"):
        console.print(f"models: {model_report['line']}")
