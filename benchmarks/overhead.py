"""Per-trial overhead of knobflow against a bare Optuna loop calling the same target, in one run.

Both loops tune the synthetic target over the same search space (its crash and hang regions left
out, so the bare in-process loop survives) with the same sampler and seed. The bare loop calls
start/run/stop in-process with an in-memory study; knobflow runs the Prefect flow: a trial
process with a hard timeout per trial, the Optuna journal on disk, cleaning, and MLflow child runs.
knobflow's per-trial time is the difference between two jobs that differ only in their budget
(after a warm-up job), so fixed costs (Prefect API, MLflow store, verification) cancel out.

    python benchmarks/overhead.py --trials 15 --duration 2.0
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

import optuna
from rich.console import Console
from rich.table import Table

import tuners.study  # noqa: F401 - Optuna's per-trial log lines off
from targets.common.settings import quiet_environment
from targets.synthetic import SyntheticTarget
from tuners.samplers import make_sampler
from tuners.space import parse_space

SPACE = {
    "knobs": {"x": None, "y": {"range": [0.001, 100.0]}, "threads": None, "buffer_kb": None},
    "fixed": {"mode": "alpha", "compress": False},
}


def bare_loop(n: int, workload: dict, seed: int, data_dir: Path) -> list[float]:
    """Completion times of ``n`` trials of a plain Optuna loop calling the target in-process."""
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


def knobflow_job(n: int, workload: dict, seed: int, home: Path) -> float:
    """Wall time of one tune flow of ``n`` trials (with 2 x 2 verification runs)."""
    import yaml

    from flows.tune import tune

    home.mkdir(parents=True, exist_ok=True)
    space_file = home / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    began = time.perf_counter()
    summary = tune(
        "synthetic",
        budget=n,
        seed=seed,
        workload=workload,
        verify_repeats=2,
        space_file=str(space_file),
        home=str(home),
    )
    assert summary.n_failed == 0, summary.failure_classes
    return time.perf_counter() - began


def main() -> None:
    quiet_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", type=int, default=3, help="budget of the shorter job")
    args = parser.parse_args()
    workload = SyntheticTarget.parse_workload({"duration": args.duration, "noise": 0.03})
    console = Console(width=130)
    with tempfile.TemporaryDirectory(prefix="knobflow-overhead-") as tmp:
        bare = bare_loop(args.trials, workload, args.seed, Path(tmp) / "bare")
        # a warm-up job pays the one-time costs (Prefect API, MLflow store, GE import); two jobs
        # that differ only in their budget then give the cost of a trial, fixed costs cancelled
        warmup = knobflow_job(2, workload, args.seed, Path(tmp) / "kf")
        small = knobflow_job(args.small, workload, args.seed, Path(tmp) / "kf")
        large = knobflow_job(args.small + args.trials, workload, args.seed, Path(tmp) / "kf")
    bare_s = (bare[-1] - bare[0]) / (len(bare) - 1)
    flow_s = (large - small) / args.trials
    overhead = flow_s - bare_s
    table = Table(
        title=f"knobflow per-trial overhead ({args.trials} trials of "
        f"{args.duration:g} s, synthetic target)"
    )
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("bare Optuna loop, per trial", f"{bare_s * 1000:,.1f} ms")
    table.add_row(
        f"knobflow, per trial: (job of {args.small + args.trials} - job of {args.small}) "
        f"/ {args.trials}",
        f"{flow_s * 1000:,.1f} ms",
    )
    table.add_row("overhead per trial", f"{overhead * 1000:,.1f} ms")
    table.add_row("overhead, % of the bare trial", f"{100 * overhead / bare_s:.2f} %")
    table.add_row("first job (one-time start-up included), 2 trials", f"{warmup:.1f} s")
    table.add_row(
        f"job of {args.small} trials (fixed costs: verification 2 x 2, report)", f"{small:.1f} s"
    )
    console.print(table)


if __name__ == "__main__":
    main()
