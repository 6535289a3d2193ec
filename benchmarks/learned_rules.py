"""Learned rules on the synthetic target: how many trials crash or hang with them, and without.

Runs the real command (``knobflow tune synthetic --budget 60 --json --seed S --tuner T``) once
per seed and tuner with learned rules and once with ``--no-learned-rules``, every job in a fresh
``--home`` so rules learned by one job never reach another. Counts the trials that crashed or hung
(failure classes ``crash`` and ``timeout``) per job. Goal: the median with learned rules at most
half the median without, per tuner.

The rules each job learned are also scored on 20,000 random configs of the space: the share of
the crash and hang regions they forbid (coverage), and the share of the configs outside those
regions (and outside the shipped rules) they forbid too (collateral: good configs lost).

    python benchmarks/learned_rules.py --seeds 5 --budget 60 [--tuners tpe,random] [--jobs 2]

Jobs run two at a time (``--jobs``); the trial timeout is 1 s (``--trial-timeout``; a synthetic
trial takes ~0.2 s) so hangs cost little. Prints a table and saves ``benchmarks/learned_rules.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ARMS = ("learned", "none")  # with learned rules / --no-learned-rules
SCORE_SAMPLES = 20_000


@dataclass
class Job:
    tuner: str
    seed: int
    arm: str
    summary: dict
    rules: list[str]
    coverage: float | None = None
    collateral: float | None = None
    stray: list[str] | None = None  # crashes and hangs outside the target's failure regions

    @property
    def crashed(self) -> int:
        return int(self.summary["failure_classes"].get("crash", 0))

    @property
    def hung(self) -> int:
        return int(self.summary["failure_classes"].get("timeout", 0))

    @property
    def bad(self) -> int:
        return self.crashed + self.hung


def run_job(tuner: str, seed: int, arm: str, budget: int, timeout: float, home: Path) -> Job:
    cmd = [sys.executable, "-m", "flows.cli", "tune", "synthetic", "--budget", str(budget),
           "--tuner", tuner, "--seed", str(seed), "--home", str(home), "--json",
           "--trial-timeout", str(timeout)]
    if arm == "none":
        cmd.append("--no-learned-rules")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    summary = json.loads(done.stdout)
    learned = home / "rules" / "synthetic.learned.yaml"
    job = Job(tuner, seed, arm, summary, [], stray=_stray(summary["trial_table"]))
    if learned.exists():
        _score(job, learned)
    return job


def _regions(frame: Any, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Rows in the synthetic target's crash region, and in its hang region."""
    crash = frame[f"{prefix}compress"].to_numpy(bool) & (frame[f"{prefix}threads"].to_numpy() > 48)
    hang = (frame[f"{prefix}mode"].to_numpy() == "beta") & (frame[f"{prefix}y"].to_numpy() > 200)
    return crash, hang


def _stray(table_path: str) -> list[str]:
    """Trials that crashed or hung outside the regions where the target does (e.g. a trial
    timeout too short for a loaded machine): they would skew the count."""
    import pandas as pd

    table = pd.read_parquet(table_path)
    crash, hang = _regions(table, "knob.")
    cls = table["failure_class"].to_numpy()
    stray = ((cls == "crash") & ~crash) | ((cls == "timeout") & ~hang)
    return [f"trial {t} {c}" for t, c in zip(table["trial"][stray], cls[stray], strict=True)]


def _score(job: Job, path: Path) -> None:
    """Coverage of the failure regions and collateral outside them, of the rules a job learned."""
    from rules.learn import LearnedRules
    from rules.review import sample_space
    from rules.ruleset import RuleSet
    from targets.synthetic import SyntheticTarget
    from tuners.space import SearchSpace

    spec = SyntheticTarget.knob_spec()
    learned = LearnedRules(path, spec).rules()
    job.rules = [r.expression.text for r in learned]
    shipped = RuleSet.for_target(SyntheticTarget)
    frame = sample_space(SearchSpace.full(spec), SCORE_SAMPLES, seed=12345)
    allowed = ~shipped.check_frame(frame)["blocked"].to_numpy()
    blocked = RuleSet(spec=spec, rules=learned).check_frame(frame)["blocked"].to_numpy()
    crash, hang = _regions(frame)
    bad = (crash | hang) & allowed
    good = ~(crash | hang) & allowed
    job.coverage = float(blocked[bad].mean())
    job.collateral = float(blocked[good].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--tuners", default="tpe,random")
    parser.add_argument("--trial-timeout", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=2, help="jobs running at once")
    args = parser.parse_args()
    tuners = args.tuners.split(",")
    plan = [(t, s, a) for t in tuners for s in range(args.seeds) for a in ARMS]
    with tempfile.TemporaryDirectory(prefix="knobflow-learned-") as tmp, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, t, s, a, args.budget, args.trial_timeout,
                               Path(tmp) / f"{t}-{s}-{a}") for t, s, a in plan]
        jobs = [f.result() for f in futures]

    console = Console(width=150)
    table = Table(title=f"synthetic target, --budget {args.budget}, --trial-timeout "
                        f"{args.trial_timeout:g}: trials that crashed or hung, with learned rules "
                        "and without (--no-learned-rules)")
    for col in ("tuner", "seed", "crash+hang learned", "(crash, hang)", "crash+hang none",
                "(crash, hang)", "blocked", "rules", "coverage", "collateral", "ratio true value",
                "job s"):
        table.add_column(col)
    medians: dict[str, tuple[float, float]] = {}
    for tuner in tuners:
        mine = {(j.seed, j.arm): j for j in jobs if j.tuner == tuner}
        for seed in range(args.seeds):
            on, off = mine[seed, "learned"], mine[seed, "none"]
            table.add_row(
                tuner, str(seed), str(on.bad), f"({on.crashed}, {on.hung})", str(off.bad),
                f"({off.crashed}, {off.hung})", str(on.summary.get("n_blocked", 0)),
                str(len(on.rules)), _pct(on.coverage), _pct(on.collateral),
                f"{_true_ratio(on)} / {_true_ratio(off)}",
                f"{on.summary['duration_s']:.0f} / {off.summary['duration_s']:.0f}")
        learned = statistics.median(mine[s, "learned"].bad for s in range(args.seeds))
        without = statistics.median(mine[s, "none"].bad for s in range(args.seeds))
        medians[tuner] = (learned, without)
        ratio = learned / without if without else float("nan")
        verdict = "[green]goal met[/green]" if learned <= without / 2 else "[red]goal: <= 0.5[/red]"
        table.add_row(tuner, "median", f"[bold]{learned:g}[/bold]", "", f"[bold]{without:g}[/bold]",
                      "", "", "", _pct(statistics.median(_scores(mine, args.seeds, "coverage"))),
                      _pct(statistics.median(_scores(mine, args.seeds, "collateral"))),
                      f"ratio {ratio:.2f} {verdict}", "", end_section=True)
    console.print(table)
    for j in jobs:
        if j.arm == "learned":
            console.print(f"{j.tuner} seed {j.seed}: " + " | ".join(j.rules), soft_wrap=True)
    stray = [f"{j.tuner} seed {j.seed} {j.arm}: {', '.join(j.stray)}" for j in jobs if j.stray]
    console.print("crashes and hangs outside the target's regions: " + ("; ".join(stray) or "none"))
    _plot(jobs, tuners, args.seeds, args.budget)


def _scores(mine: dict, seeds: int, what: str) -> list[float]:
    values = [getattr(mine[s, "learned"], what) for s in range(seeds)]
    return [v for v in values if v is not None] or [float("nan")]


def _pct(value: float | None) -> str:
    return "" if value is None or value != value else f"{100 * value:.0f}%"


def _true_ratio(job: Job) -> str:
    s = job.summary
    if not s.get("best_true_value"):
        return "-"
    return f"{s['best_true_value'] / s['known_optimum_value']:.3f}"


def _plot(jobs: list[Job], tuners: list[str], seeds: int, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=110)
    colours = {"learned": "#0077bb", "none": "#cc3311"}
    labels = {"learned": "learned rules", "none": "--no-learned-rules"}
    rng = np.random.default_rng(0)
    for i, tuner in enumerate(tuners):
        for k, arm in enumerate(ARMS):
            x = i * 3 + k
            values = [j.bad for j in jobs if j.tuner == tuner and j.arm == arm]
            ax.scatter(x + rng.uniform(-0.12, 0.12, len(values)), values, color=colours[arm],
                       label=labels[arm] if i == 0 else None, zorder=3)
            ax.hlines(statistics.median(values), x - 0.3, x + 0.3, color="black")
        without = statistics.median(j.bad for j in jobs if j.tuner == tuner and j.arm == "none")
        ax.hlines(without / 2, i * 3 - 0.4, i * 3 + 0.4, color="#009988", linestyle="--",
                  label="goal: half the median without" if i == 0 else None)
    ax.set_xticks([i * 3 + 0.5 for i in range(len(tuners))], tuners)
    ax.set_ylabel("trials that crashed or hung")
    ax.set_ylim(bottom=0)
    ax.set_title(f"synthetic, {budget} trials, seeds 0..{seeds - 1}, one point per job "
                 "(bar: median)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "learned_rules.png")


if __name__ == "__main__":
    main()
