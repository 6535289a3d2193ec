"""Does the gain a job reports hold up? Re-measure the best config of a job afterwards.

For each target and seed: a 30-trial job (``tune``), then, after it ended, the best config and
the default re-measured ``--repeats`` times each, interleaved (ABBA), on the same instance. The
re-measured gain should lie inside the 95 % interval the job reported. Prints a table and saves
``benchmarks/remeasure.png``.

    python benchmarks/remeasure.py --targets sqlite,rocksdb --seeds 2 --budget 30 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent


def run(target: str, seed: int, budget: int, repeats: int, home: Path) -> dict:
    from flows.job import Job
    from flows.tune import tune
    from tasks.verify import verify_best

    summary = tune(target, budget=budget, seed=seed, home=str(home))
    if summary.best_is_default:  # nothing was reported to hold up
        return {"target": target, "seed": seed, "reported": (None, None, None),
                "again": (None, None, None), "failures": [summary.verdict]}
    job = Job.load(home / "jobs" / summary.study_name / "job.json", home)
    runner = job.trial_runner()
    again = verify_best.fn(runner, job.target_cls.knob_spec().defaults(), summary.best_config,
                           job.direction, repeats, next(iter(runner.instance_dirs)))
    return {"target": target, "seed": seed, "reported": (summary.gain, summary.gain_low,
            summary.gain_high), "again": (again.gain, again.gain_low, again.gain_high),
            "failures": again.failures}


def main() -> None:
    from targets.common.settings import quiet_environment

    quiet_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="sqlite,rocksdb")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="knobflow-remeasure-") as tmp:
        for target in args.targets.split(","):
            for seed in range(args.seeds):
                results.append(run(target, seed, args.budget, args.repeats,
                                   Path(tmp) / f"{target}-{seed}"))
    table = Table(title=f"reported gain vs re-measured ({args.budget}-trial jobs, "
                        f"{args.repeats} interleaved repeats afterwards)")
    for col in ("target", "seed", "reported gain [95 % interval]", "re-measured gain [interval]",
                "inside"):
        table.add_column(col)
    inside = 0
    for r in results:
        g, lo, hi = r["reported"]
        a, alo, ahi = r["again"]
        if g is None:
            table.add_row(r["target"], str(r["seed"]), "; ".join(r["failures"]), "", "")
            continue
        ok = a is not None and lo <= a <= hi
        inside += ok
        table.add_row(r["target"], str(r["seed"]), f"{g:.2f}x [{lo:.2f}, {hi:.2f}]",
                      f"{a:.2f}x [{alo:.2f}, {ahi:.2f}]" if a else f"failed: {r['failures']}",
                      "yes" if ok else "NO")
    Console(width=130).print(table)
    print(f"{inside} of {len(results)} re-measured gains inside the reported interval")
    _plot(results)


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    for i, r in enumerate(results):
        g, lo, hi = r["reported"]
        if g is None:
            continue
        ax.errorbar([i - 0.1], [g], yerr=[[g - lo], [hi - g]], fmt="o", color="#4477aa",
                    capsize=4, label="reported by the job" if i == 0 else None)
        a, alo, ahi = r["again"]
        if a:
            ax.errorbar([i + 0.1], [a], yerr=[[a - alo], [ahi - a]], fmt="s", color="#ee7733",
                        capsize=4, label="re-measured afterwards" if i == 0 else None)
    ax.axhline(1.0, color="#777777", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(results)), [f"{r['target']}\nseed {r['seed']}" for r in results])
    ax.set_ylabel("gain over the default (x)")
    ax.set_title("Best config of a job: reported gain (95 % interval) vs re-measured", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "remeasure.png")


if __name__ == "__main__":
    main()
