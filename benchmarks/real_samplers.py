"""The samplers side by side on real SQLite and RocksDB: the surrogate, TPE, random and CMA-ES,
one real tuning job each, then every job's best config re-measured beside the default in one
interleaved run.

    nice -n 5 python benchmarks/real_samplers.py --trials 30 --rounds 3 \\
        [--targets sqlite,rocksdb] [--tuners surrogate,tpe,random,cmaes] [--seed 0] \\
        [--plot benchmarks/real-samplers.png]

Per target, per tuner: one job of the real tune flow (``flows.tune.tune``, in this process,
under Prefect's test harness: a temporary API server and database), ``--trials`` trials, the
same seed and workload for every tuner, each job in its own home with its own service and
instance (no shared study, store or learned rules), without transfer, training or the noise
check, and with the flow's own verification at its minimum (2 pairs; it is not what is
compared). Per job: the best observed value and its config, the job's wall time (its home's
MLflow store created, the flow's verification included; the first job also pays first-use
imports) and the exploration's own time, its failed and blocked trials. With one seed, TPE's
first 10 trials (its random start-up) are random's first 10.

Then, per target, one interleaved run on one fresh instance (its own data directory, through the
trial machinery the jobs use: ``tasks.runner.TrialRunner`` and ``run_trial``): the default
config and each tuner's best config, ``--rounds`` rounds, the order rotated every round (ABCDE,
BCDEA, CDEAB, ...) so that no contender always runs first or right after the same neighbour; all
runs of a round share one workload seed. Per contender: the mean of the objective and each
round's value, its ratio to the default's mean over the same rounds (> 1: better than the
default, in the objective's direction), the geometric mean of the per-round ratios with a
Student-t 95 % interval (``tasks.verify.gain_interval``), and in how many rounds it beat the
default.

Workloads: SQLite at its defaults (50,000 rows loaded, 100,000 operations, 80 % reads); RocksDB
through db_bench (rocksdb-tools) at its defaults (300,000 keys filled, 300,000 random reads).
Prints a table per target and the load average at the start and the end; saves a bar chart of
the verified ratios with each round's ratio as dots.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this tree's modules, whatever is installed

#: Per target: the workload every job and the final run use.
WORKLOADS: dict[str, dict[str, Any]] = {
    "sqlite": {},
    "rocksdb": {"driver": "db_bench"},
}
TUNER_NAMES = ("surrogate", "tpe", "random", "cmaes")
DEFAULT = "default"


@dataclass
class JobResult:
    """What one tuner's job found, and what it cost."""

    tuner: str
    best_value: float | None
    best_config: dict[str, Any] | None
    wall_s: float
    trials_s: float | None  # the exploration's part of the job (the flow's own clock)
    n_trials: int
    n_failed: int
    n_blocked: int
    failure_classes: dict[str, int]
    workload: dict[str, Any]
    objective: str
    direction: str
    error: str = ""


@dataclass
class Verified:
    """One contender's runs in the final interleaved run (None: that run failed)."""

    name: str
    config: dict[str, Any]
    values: list[float | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class TargetResult:
    target: str
    jobs: dict[str, JobResult]
    verified: dict[str, Verified]  # the default first, then the tuners
    orders: list[list[str]]
    direction: str
    objective: str
    final_s: float


def _csv(kind: str, valid: tuple[str, ...]) -> Any:
    """An argparse type: a comma-separated list of names out of ``valid``."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"no {kind} given; valid: {', '.join(valid)}")
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} '{name}'; valid: {', '.join(valid)}")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"a {kind} is named twice in '{text}'")
        return names

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def run_job(target: str, tuner: str, trials: int, seed: int, home: Path) -> JobResult:
    """One real tuning job of ``tuner`` on ``target``: its best observed value and config."""
    from flows.tune import JobFailed, tune

    began = time.monotonic()
    error = ""
    try:
        summary = tune(target, service=f"{target}-{tuner}", instance=f"{tuner}-1", tuner=tuner,
                       budget=trials, seed=seed, workload=WORKLOADS[target], noise_runs=0,
                       verify_repeats=2, transfer=False, train=False, home=str(home))
    except JobFailed as exc:  # no usable result: what it did is still in the summary
        summary, error = exc.summary, str(exc)
    wall = time.monotonic() - began
    return JobResult(
        tuner=tuner, best_value=summary.best_observed_value,
        best_config=dict(summary.best_config) if summary.best_config is not None else None,
        wall_s=wall, trials_s=summary.trials_s, n_trials=summary.n_trials,
        n_failed=summary.n_failed,
        n_blocked=summary.n_blocked, failure_classes=dict(summary.failure_classes),
        workload=dict(summary.workload), objective=summary.objective,
        direction=summary.direction, error=error)


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """Round r runs ``names`` rotated left by r: ABCDE, BCDEA, CDEAB, ..."""
    n = len(names)
    return [names[r % n:] + names[:r % n] for r in range(rounds)]


def final_run(target: str, jobs: dict[str, JobResult], rounds: int, seed: int,
              root: Path) -> tuple[dict[str, Verified], list[list[str]]]:
    """The default and each job's best config, measured interleaved on one fresh instance."""
    from prefect import flow

    from targets.registry import load_target, target_ref
    from tasks.runner import TrialRunner, run_trial

    target_cls = load_target(target)
    any_job = next(iter(jobs.values()))
    verified = {DEFAULT: Verified(DEFAULT, target_cls.knob_spec().defaults())}
    for tuner, job in jobs.items():
        if job.best_config is not None:
            verified[tuner] = Verified(tuner, dict(job.best_config))
    instance = "final-1"
    runner = TrialRunner(
        target_cls=target_cls, target_ref=target_ref(target), workload=any_job.workload,
        objective=any_job.objective, timeout_s=float(target_cls.trial_timeout_s),
        job_dir=root / "final", instance_dirs={instance: root / "instances" / instance},
        seed=seed)
    orders = rotations(list(verified), rounds)

    @flow(name=f"real-samplers-final-{target}")
    def interleaved() -> None:
        for r, order in enumerate(orders):
            for name in order:  # one workload seed per round: the round's runs are paired
                outcome = run_trial(runner, f"final-{r}-{name}", dict(verified[name].config),
                                    instance, runner.trial_seed(7 * 10**6 + r), single=True)
                verified[name].values.append(outcome.value if outcome.ok else None)
                if not outcome.ok:
                    verified[name].failures.append(
                        f"round {r}: {outcome.failure_class}: {outcome.message}")
                shown = f"{outcome.value:,.0f}" if outcome.ok else "failed"
                print(f"  {target} round {r} {name}: {shown}", flush=True)
            print(f"  {target} round {r} done; load {_load()}", flush=True)

    interleaved()
    return verified, orders


def ratios(default: Verified, other: Verified, direction: str) -> list[float | None]:
    """Per round: the contender's gain over the default of the same round (> 1: better)."""
    out: list[float | None] = []
    for d, v in zip(default.values, other.values, strict=True):
        if d is None or v is None or d <= 0 or v <= 0:
            out.append(None)
        else:
            out.append(v / d if direction == "maximize" else d / v)
    return out


def figures(res: TargetResult, name: str) -> dict[str, Any]:
    """A contender's verified figures, over the rounds in which it and the default both ran."""
    from tasks.verify import gain_interval

    default, mine = res.verified[DEFAULT], res.verified[name]
    both = [(d, v) for d, v in zip(default.values, mine.values, strict=True)
            if d is not None and v is not None]
    per_round = ratios(default, mine, res.direction)
    out: dict[str, Any] = {"rounds": len(both), "per_round": per_round,
                           "values": mine.values, "mean": None, "ratio": None,
                           "gain": None, "better_rounds": 0}
    if not both:
        return out
    d_mean = statistics.fmean(d for d, _ in both)
    v_mean = statistics.fmean(v for _, v in both)
    out["mean"] = v_mean
    out["ratio"] = v_mean / d_mean if res.direction == "maximize" else d_mean / v_mean
    out["better_rounds"] = sum(1 for r in per_round if r is not None and r > 1.0)
    out["gain"] = gain_interval([d for d, _ in both], [v for _, v in both], res.direction)
    return out


def _fmt(value: float | None, digits: str = ",.0f") -> str:
    return "-" if value is None else format(value, digits)


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def print_tables(results: list[TargetResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    for res in results:
        table = Table(title=f"{res.target}: {res.objective} ({res.direction}); final run: "
                            f"{len(res.orders)} rounds, order rotated each round "
                            f"({', '.join(''.join(n[0].upper() for n in o) for o in res.orders)})")
        for column in ("tuner", "best observed in its job", "verified mean",
                       "ratio to default", "per round", "gain (95 % interval)",
                       "rounds better", "job wall s", "trials s", "trials", "failed",
                       "blocked"):
            table.add_column(column, justify="left" if column in ("tuner", "per round")
                             else "right")
        d = res.verified[DEFAULT]
        d_ok = [v for v in d.values if v is not None]
        table.add_row(DEFAULT, "-", _fmt(statistics.fmean(d_ok) if d_ok else None), "1.000",
                      " ".join(_fmt(v) for v in d.values), "-", "-", "-", "-", "-", "-", "-")
        for tuner, job in res.jobs.items():
            if tuner not in res.verified:
                table.add_row(tuner, _fmt(job.best_value), "no config", "-", "-", "-", "-",
                              f"{job.wall_s:.0f}", _fmt(job.trials_s), str(job.n_trials),
                              str(job.n_failed), str(job.n_blocked))
                continue
            f = figures(res, tuner)
            gain = f["gain"]
            table.add_row(
                tuner, _fmt(job.best_value), _fmt(f["mean"]), _fmt(f["ratio"], ".3f"),
                " ".join(_fmt(r, ".3f") for r in f["per_round"]),
                f"{gain[0]:.3f} ({gain[1]:.3f}-{gain[2]:.3f})" if gain and f["rounds"] > 1
                else (f"{gain[0]:.3f}" if gain else "-"),
                f"{f['better_rounds']}/{f['rounds']}", f"{job.wall_s:.0f}", _fmt(job.trials_s),
                str(job.n_trials),
                str(job.n_failed), str(job.n_blocked))
        console.print(table)
        defaults = res.verified[DEFAULT].config
        for tuner, v in res.verified.items():
            if tuner == DEFAULT:
                continue
            changed = {k: val for k, val in v.config.items() if defaults.get(k) != val}
            console.print(f"  {tuner} best config (knobs off their default): "
                          + (", ".join(f"{k}={_short(val)}" for k, val in changed.items())
                             or "the default"))
            if v.failures or res.jobs[tuner].error or res.jobs[tuner].failure_classes:
                console.print(f"    failures: {v.failures or '-'}; job: "
                              f"{res.jobs[tuner].error or '-'} {res.jobs[tuner].failure_classes}")
        console.print(f"  final run: {res.final_s:.0f} s")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot(results: list[TargetResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.8), dpi=110,
                             squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        names = [n for n in res.verified if n != DEFAULT]
        xs = list(range(len(names)))
        figs = [figures(res, n) for n in names]
        ax.bar(xs, [f["ratio"] or 0.0 for f in figs], color="tab:blue", alpha=0.6,
               label="mean / default's mean")
        for x, f in zip(xs, figs, strict=True):
            if f["ratio"] is not None:
                ax.annotate(f"{f['ratio']:.2f}", (x, f["ratio"]), ha="center", va="bottom",
                            xytext=(0, 2), textcoords="offset points", fontsize=8)
            dots = [r for r in f["per_round"] if r is not None]
            ax.scatter([x] * len(dots), dots, color="black", s=14, zorder=3,
                       label="each round" if x == 0 else None)
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        ax.set_xticks(xs, names)
        ax.set_ylabel(f"verified {res.objective} / default")
        ax.set_title(f"{res.target}: best of each job, {len(res.orders)} interleaved rounds",
                     fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--targets", type=_csv("target", tuple(WORKLOADS)),
                        default=list(WORKLOADS), help="comma-separated: sqlite,rocksdb")
    parser.add_argument("--tuners", type=_csv("tuner", TUNER_NAMES), default=list(TUNER_NAMES),
                        help="comma-separated: " + ",".join(TUNER_NAMES))
    parser.add_argument("--trials", type=_at_least(2), default=30, help="trials per job")
    parser.add_argument("--seed", type=_at_least(0), default=0)
    parser.add_argument("--rounds", type=_at_least(1), default=3,
                        help="rounds of the final interleaved run")
    parser.add_argument("--plot", type=Path, default=HERE / "real-samplers.png")
    args = parser.parse_args()
    if "rocksdb" in args.targets and shutil.which("db_bench") is None:
        parser.error("--targets rocksdb runs db_bench (Debian: rocksdb-tools), not found on "
                     "PATH; install it or leave rocksdb out")
    if not args.plot.parent.is_dir():
        parser.error(f"--plot: directory {args.plot.parent} does not exist")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("KNOBFLOW_HOME", None)  # every job gets its home from this script

    from prefect.testing.utilities import prefect_test_harness

    print(f"load average at start: {_load()}  ({_now()})", flush=True)
    results: list[TargetResult] = []
    with tempfile.TemporaryDirectory(prefix="knobflow-real-samplers-") as tmp, \
            prefect_test_harness(server_startup_timeout=90):
        for target in args.targets:
            root = Path(tmp) / target
            jobs: dict[str, JobResult] = {}
            for tuner in args.tuners:
                job = run_job(target, tuner, args.trials, args.seed, root / tuner)
                jobs[tuner] = job
                print(f"{target} {tuner}: best observed {_fmt(job.best_value)} {job.objective} "
                      f"in {job.n_trials} trials ({job.n_failed} failed, {job.n_blocked} "
                      f"blocked), {job.wall_s:.0f} s; load {_load()}", flush=True)
            began = time.monotonic()
            verified, orders = final_run(target, jobs, args.rounds, args.seed,
                                         root / "final")
            any_job = next(iter(jobs.values()))
            results.append(TargetResult(target, jobs, verified, orders, any_job.direction,
                                        any_job.objective, time.monotonic() - began))
    print_tables(results)
    plot(results, args.plot)
    print(f"plot: {args.plot}")
    print(f"load average at end: {_load()}  ({_now()})")


if __name__ == "__main__":
    main()
