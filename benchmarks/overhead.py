"""Per-trial overhead of knobflow against a bare Optuna loop calling the same target, in one run.

Both loops tune the synthetic target over the same search space (its crash and hang regions left
out, so the bare in-process loop survives) with the same sampler and seed. The bare loop calls
start/run/stop in-process with an in-memory study; knobflow runs the Prefect flow: a trial
process with a hard timeout per trial, the Optuna journal on disk, cleaning, and MLflow child runs.
Per-trial time is measured between the first and the last trial's completion, so fixed start-up
(Prefect server, MLflow store) and the final verification are reported apart.

    python benchmarks/overhead.py --trials 15 --duration 2.0
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

import optuna
from rich.console import Console
from rich.table import Table

import flows.settings  # noqa: F401 - telemetry off
import tuners.study  # noqa: F401 - Optuna's per-trial log lines off
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


def knobflow_loop(n: int, workload: dict, seed: int, home: Path) -> tuple[list[float], dict]:
    """Completion times of ``n`` trials of the tune flow, and the job's timings."""
    import yaml

    from flows.tune import listeners, tune

    space_file = home / "space.yaml"
    home.mkdir(parents=True, exist_ok=True)
    space_file.write_text(yaml.safe_dump(SPACE))
    stamps: list[float] = []
    verify: list[float] = []

    def listen(key, outcome, stats) -> None:
        (stamps if stats is not None else verify).append(time.perf_counter())

    listeners.append(listen)
    began = time.perf_counter()
    try:
        summary = tune("synthetic", budget=n, seed=seed, workload=workload, verify_repeats=2,
                       space_file=str(space_file), home=str(home))
    finally:
        listeners.remove(listen)
    ended = time.perf_counter()
    timings = {
        "start_up_s": stamps[0] - began - (stamps[1] - stamps[0]) if len(stamps) > 1 else None,
        "verify_and_report_s": ended - stamps[-1],
        "n_failed": summary["n_failed"],
    }
    return stamps, timings


def per_trial(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per trial")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workload = SyntheticTarget.parse_workload({"duration": args.duration, "noise": 0.03})
    console = Console(width=130)
    with tempfile.TemporaryDirectory(prefix="knobflow-overhead-") as tmp:
        bare = bare_loop(args.trials, workload, args.seed, Path(tmp) / "bare")
        flow, timings = knobflow_loop(args.trials, workload, args.seed, Path(tmp) / "kf")
    bare_s, flow_s = per_trial(bare), per_trial(flow)
    gaps = [b - a for a, b in itertools.pairwise(flow)]
    overhead = flow_s - bare_s
    table = Table(title=f"knobflow per-trial overhead ({args.trials} trials of "
                        f"{args.duration:g} s, synthetic target)")
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("bare Optuna loop, per trial", f"{bare_s * 1000:,.1f} ms")
    table.add_row("knobflow flow, per trial (mean)", f"{flow_s * 1000:,.1f} ms")
    table.add_row(
        "knobflow flow, per trial (median gap)", f"{statistics.median(gaps) * 1000:,.1f} ms"
    )
    table.add_row("overhead per trial", f"{overhead * 1000:,.1f} ms")
    table.add_row("overhead, % of the bare trial", f"{100 * overhead / bare_s:.2f} %")
    if timings["start_up_s"] is not None:
        table.add_row(
            "fixed start-up (Prefect API, MLflow store)", f"{timings['start_up_s']:.1f} s"
        )
    table.add_row("verification (2 x 2 runs) and report", f"{timings['verify_and_report_s']:.1f} s")
    table.add_row("failed trials (must be 0)", str(timings["n_failed"]))
    console.print(table)


if __name__ == "__main__":
    main()
