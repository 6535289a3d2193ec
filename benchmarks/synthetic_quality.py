"""Tuning quality on the synthetic target: how close `knobflow tune synthetic --budget 60` gets.

Runs the real command once per seed (``knobflow tune synthetic --budget 60 --json --seed S``) and
compares the noiseless value of the config it reports with the target's known optimum. Goal: the
median over 5 seeds within 5% of the optimum, with crashed and hung trials recorded as failures.

    python benchmarks/synthetic_quality.py --seeds 5 --budget 60 [--tuners tpe,random]

Prints a table and saves ``benchmarks/synthetic_quality.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent


def run_job(tuner: str, seed: int, budget: int, home: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "tune", "synthetic", "--budget", str(budget),
           "--tuner", tuner, "--seed", str(seed), "--home", str(home), "--json", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--tuners", default="tpe")
    parser.add_argument("--set-workload", action="append", default=[])
    args = parser.parse_args()
    extra = [x for kv in args.set_workload for x in ("--set-workload", kv)]
    console = Console(width=130)
    table = Table(title=f"synthetic target, --budget {args.budget}: true value of the reported "
                        "config / known optimum")
    for col in ("tuner", "seed", "ratio", "failed", "failure classes", "verified gain", "job s"):
        table.add_column(col)
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="knobflow-quality-") as tmp:
        for tuner in args.tuners.split(","):
            for seed in range(args.seeds):
                s = run_job(tuner, seed, args.budget, Path(tmp) / f"{tuner}-{seed}", extra)
                ratio = s["best_true_value"] / s["known_optimum_value"]
                ratios.setdefault(tuner, []).append(ratio)
                table.add_row(tuner, str(seed), f"{ratio:.3f}", str(s["n_failed"]),
                              json.dumps(s["failure_classes"]),
                              f"{s['gain']:.2f} [{s['gain_low']:.2f}, {s['gain_high']:.2f}]"
                              if s["gain"] is not None else s["verdict"],
                              f"{s['duration_s']:.0f}")
            table.add_row(tuner, "median", f"[bold]{statistics.median(ratios[tuner]):.3f}[/bold]",
                          "", "", "", "", end_section=True)
    console.print(table)
    _plot(ratios, args.budget)


def _plot(ratios: dict[str, list[float]], budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for i, (tuner, values) in enumerate(ratios.items()):
        ax.scatter([i] * len(values), values, label=tuner, zorder=3)
        ax.hlines(statistics.median(values), i - 0.25, i + 0.25, color="black")
    ax.axhline(0.95, color="#cc3311", linestyle="--", label="goal: 95% of the optimum")
    ax.set_xticks(range(len(ratios)), list(ratios))
    ax.set_ylabel("true value / known optimum")
    ax.set_title(f"synthetic, {budget} trials, one point per seed (bar: median)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "synthetic_quality.png")


if __name__ == "__main__":
    main()
