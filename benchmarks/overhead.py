"""Per-trial overhead of knobflow against a bare Optuna loop calling the same target, in one run.

Both loops tune the synthetic target over the same search space (its crash and hang regions left
out, so the bare in-process loop survives) with the same sampler and seed. The bare loop calls
start/run/stop in-process with an in-memory study; knobflow runs the Prefect flow: a trial
process with a hard timeout per trial, the Optuna journal on disk, cleaning, and MLflow child runs.
knobflow's per-trial time is the difference between two jobs that differ only in their budget
(after a warm-up job), so fixed costs (Prefect API, MLflow store, verification) cancel out. Both
jobs neither train the service's models nor transfer (``train=False``, ``transfer=False``): a
job trains only from a few trials on, so the larger job alone trained and its training (seconds)
was counted as per-trial cost (657 ms per trial before, 133 ms with training off in both;
issue 17). ``benchmarks/job_cost.py`` measures the fixed parts themselves.

Two figures per measurement: from the jobs' wall times (as before), and from their ``trials_s``
(the exploration alone). The wall times also hold the end of the Prefect flow run after the
job's work, which took 0.1 to 1.0 s per job here (2026-12-03: not per trial; it depends on
where Prefect's background workers are in their cycle), so the wall figure jumped between ~0 and
~60 ms per trial from one round to the next; ``trials_s`` leaves that out, and is the headline.

    python benchmarks/overhead.py --trials 15 --duration 2.0
    python benchmarks/overhead.py --compare 84a6d56 --rounds 3   # this tree against a commit

``--compare REV`` measures this checkout and ``REV`` (checked out into a temporary worktree)
side by side, alternating A B B A ... so the machine's load falls on both alike; it prints both
per round, their medians and the ratio, and saves ``benchmarks/overhead-compare.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

HERE = Path(__file__).resolve().parent
SPACE = {
    "knobs": {"x": None, "y": {"range": [0.001, 100.0]}, "threads": None, "buffer_kb": None},
    "fixed": {"mode": "alpha", "compress": False},
}


def _quiet() -> None:
    try:
        from targets.common.settings import quiet_environment
    except ImportError:  # a checkout from before targets/common (--compare with an old commit)
        from flows.settings import quiet_environment  # type: ignore[no-redef]
    quiet_environment()


def bare_loop(n: int, workload: dict, seed: int, data_dir: Path) -> list[float]:
    """Completion times of ``n`` trials of a plain Optuna loop calling the target in-process."""
    import optuna

    from targets.synthetic import SyntheticTarget
    from tuners.samplers import make_sampler
    from tuners.space import parse_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = parse_space(SPACE, SyntheticTarget.knob_spec(), "benchmark space")
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", seed))
    study.enqueue_trial(space.default_params())
    stamps = []
    for number in range(n):
        trial = study.ask(space.distributions())
        target = SyntheticTarget(data_dir, workload, seed=seed * 1_000_003 + number)
        with target:
            target.start(space.config(trial.params))
            study.tell(trial, target.run().metrics["throughput"])
        stamps.append(time.perf_counter())
    return stamps


def knobflow_job(n: int, workload: dict, seed: int, home: Path) -> tuple[float, float | None]:
    """Wall time of one tune flow of ``n`` trials (with 2 x 2 verification runs), neither
    training nor transferring (where this checkout's flow has those options), and its
    exploration's time (``trials_s``; None where this checkout's summary has none)."""
    import inspect

    import yaml

    from flows.tune import tune

    given = inspect.signature(tune.fn).parameters
    fixed_off = {k: False for k in ("train", "transfer") if k in given}

    home.mkdir(parents=True, exist_ok=True)
    space_file = home / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    began = time.perf_counter()
    summary = tune("synthetic", budget=n, seed=seed, workload=workload, verify_repeats=2,
                   space_file=str(space_file), home=str(home), **fixed_off)
    wall = time.perf_counter() - began
    failed = summary["n_failed"] if isinstance(summary, dict) else summary.n_failed
    assert failed == 0, summary
    explored = (summary.get("trials_s") if isinstance(summary, dict)
                else getattr(summary, "trials_s", None))
    return wall, explored


def measure(trials: int, duration: float, seed: int, small: int) -> dict[str, float]:
    """The figures of one measurement, in seconds."""
    from targets.synthetic import SyntheticTarget

    workload = SyntheticTarget.parse_workload({"duration": duration, "noise": 0.03})
    with tempfile.TemporaryDirectory(prefix="knobflow-overhead-") as tmp:
        bare = bare_loop(trials, workload, seed, Path(tmp) / "bare")
        # a warm-up job pays the one-time costs (Prefect API, MLflow store, GE import); two jobs
        # that differ only in their budget then give the cost of a trial, fixed costs cancelled
        warmup, _ = knobflow_job(2, workload, seed, Path(tmp) / "kf")
        small_job, small_explore = knobflow_job(small, workload, seed, Path(tmp) / "kf")
        large_job, large_explore = knobflow_job(small + trials, workload, seed, Path(tmp) / "kf")
    bare_s = (bare[-1] - bare[0]) / (len(bare) - 1)
    flow_s = (large_job - small_job) / trials
    figures = {"bare_s": bare_s, "wall_flow_s": flow_s, "wall_overhead_s": flow_s - bare_s,
               "warmup_s": warmup, "small_job_s": small_job}
    if small_explore is not None and large_explore is not None:
        flow_s = (large_explore - small_explore) / trials
    return {**figures, "flow_s": flow_s, "overhead_s": flow_s - bare_s}


def print_one(m: dict[str, float], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"knobflow per-trial overhead ({args.trials} trials of "
                        f"{args.duration:g} s, synthetic target)")
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("bare Optuna loop, per trial", f"{m['bare_s'] * 1000:,.1f} ms")
    table.add_row(f"knobflow, per trial: (exploration of {args.small + args.trials} - of "
                  f"{args.small}) / {args.trials}", f"{m['flow_s'] * 1000:,.1f} ms")
    table.add_row("overhead per trial", f"{m['overhead_s'] * 1000:,.1f} ms")
    table.add_row("the same from the jobs' wall times (Prefect's end included)",
                  f"{m['wall_overhead_s'] * 1000:,.1f} ms")
    table.add_row("overhead, % of the bare trial", f"{100 * m['overhead_s'] / m['bare_s']:.2f} %")
    table.add_row("first job (one-time start-up included), 2 trials", f"{m['warmup_s']:.1f} s")
    table.add_row(f"job of {args.small} trials (fixed costs: verification 2 x 2, report)",
                  f"{m['small_job_s']:.1f} s")
    Console(width=130).print(table)


def compare(args: argparse.Namespace) -> None:
    """This checkout and ``args.compare`` measured alternately, ``args.rounds`` times each."""
    repo = HERE.parent
    script = Path(__file__).resolve()
    flags = ["--json", "--trials", str(args.trials), "--duration", str(args.duration),
             "--seed", str(args.seed), "--small", str(args.small)]
    here = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, text=True,
                          capture_output=True, check=False).stdout.strip() or "this tree"
    results: dict[str, list[dict[str, float]]] = {args.compare: [], here: []}
    with tempfile.TemporaryDirectory(prefix="knobflow-compare-") as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.compare],
                       cwd=repo, check=True, capture_output=True)
        try:
            trees = {args.compare: other, here: repo}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]  # A B, B A, ...
                for label in order:
                    results[label].append(_run_in(trees[label], script, flags))
                    print(f"round {r + 1}: {label}: overhead per trial "
                          f"{results[label][-1]['overhead_s'] * 1000:.1f} ms", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=repo,
                           check=False, capture_output=True)
    _print_comparison(results, args)
    _plot_comparison(results, args)


def _run_in(tree: Path, script: Path, flags: list[str]) -> dict[str, float]:
    """One measurement with the packages of ``tree`` (this script, that checkout's code)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(script), *flags], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_comparison(results: dict[str, list[dict[str, float]]],
                      args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    labels = list(results)
    table = Table(title=f"per-trial overhead, {args.rounds} alternating rounds of {args.trials} "
                        f"trials of {args.duration:g} s (load at start: "
                        f"{os.getloadavg()[0]:.2f})")
    table.add_column("measure")
    for label in labels:
        table.add_column(label, justify="right")
    for key, name in (("overhead_s", "overhead per trial"), ("bare_s", "bare trial"),
                      ("flow_s", "knobflow trial"),
                      ("wall_overhead_s", "overhead from wall times (Prefect's end in)")):
        for r in range(args.rounds):
            table.add_row(f"{name}, round {r + 1}",
                          *(f"{results[lb][r][key] * 1000:,.1f} ms" for lb in labels))
        table.add_row(f"[bold]{name}, median[/bold]", *(
            f"[bold]{statistics.median(m[key] for m in results[lb]) * 1000:,.1f} ms[/bold]"
            for lb in labels))
    old, new = (statistics.median(m["overhead_s"] for m in results[lb]) for lb in labels)
    table.add_row("overhead, this tree / the other", "", f"{new / old:.2f}" if old else "-")
    Console(width=140).print(table)


def _plot_comparison(results: dict[str, list[dict[str, float]]],
                     args: argparse.Namespace) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    for i, (label, runs) in enumerate(results.items()):
        values = [m["overhead_s"] * 1000 for m in runs]
        ax.scatter([i] * len(values), values, s=30, label=label, zorder=3)
        ax.hlines(statistics.median(values), i - 0.2, i + 0.2, color="black")
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylabel("overhead per trial (ms)")
    ax.set_title(f"knobflow per-trial overhead, {args.rounds} alternating rounds", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "overhead-compare.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", type=int, default=3, help="budget of the shorter job")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--compare", metavar="REV", help="measure against this git revision")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: rounds each")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    _quiet()
    figures = measure(args.trials, args.duration, args.seed, args.small)
    if args.json:
        print(json.dumps(figures))
    else:
        print_one(figures, args)


if __name__ == "__main__":
    main()
