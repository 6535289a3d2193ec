"""Important knobs first: what `--knobs auto` buys against tuning every knob from the start.

For each target: one trained job of a service (its model ranks the knobs), then, per seed, two
jobs on new instances of that service side by side, the same seed, budget and workload, without
transfer (so only the search differs): `--knobs auto --top-knobs K` and all knobs. The figure is
the best config found after N trials (the best observed value's config): on the synthetic target
its noiseless value over the known optimum; on SQLite its observed value over the default's
(trial 0). Medians over the seeds; one png of the median best-so-far curves.

    nice -n 10 python benchmarks/important_knobs.py --seeds 5 --budget 30 --top-knobs 2 \\
        [--targets synthetic,sqlite] [--plot benchmarks/important_knobs.png]

Every job is the real tune flow (`flows.tune.tune`, in this process, one temporary Prefect API
server for all of them): trial processes, cleaning, rules, MLflow; `--no-train` and
`--no-learned-rules` for the compared jobs (a rule one job learned would steer the next).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

#: Per target: the workload, the trained job's budget, the trial timeout.
SETUPS: dict[str, dict[str, Any]] = {
    "synthetic": {"workload": {"duration": 0.0, "noise": 0.03}, "train_budget": 40,
                  "trial_timeout": 1.0},
    "sqlite": {"workload": {"rows": 5000, "ops": 10000}, "train_budget": 40,
               "trial_timeout": 20.0},
}
CONTENDERS = ("all knobs", "--knobs auto")


@dataclass
class Curve:
    """One job's best-so-far figure after each trial, and what it cost."""

    values: list[float]
    seconds: float
    focus: dict[str, Any] = field(default_factory=dict)


def _job(target: str, home: Path, instance: str, seed: int, budget: int, *, auto: bool,
         top: int, train: bool) -> Any:
    from flows.tune import tune

    setup = SETUPS[target]
    options: dict[str, Any] = {
        "instance": instance, "budget": budget, "seed": seed, "workload": setup["workload"],
        "trial_timeout": setup["trial_timeout"], "noise_runs": 0, "verify_repeats": 2,
        "transfer": False, "train": train, "learn_rules": train, "home": str(home)}
    if auto:
        options.update(knobs=["auto"], top_knobs=top)
    return tune(target, **options)


def _curve(target: str, home: Path, summary: Any, budget: int) -> list[float]:
    """The figure of the best observed trial after each trial of the job."""
    from targets.registry import load_target
    from tuners.samplers import make_sampler
    from tuners.study import open_study
    from tuners.trials import ATTR, finished_trials

    study = open_study(home, summary.study_name, summary.direction, make_sampler("random"),
                       create=False)
    trials = sorted(finished_trials(study), key=lambda t: t.number)[:budget]
    maximize = summary.direction == "maximize"
    target_cls = load_target(target)
    default = next((t.value for t in trials if t.number == 0 and t.value is not None), None)
    best, best_cfg, out = None, None, []
    for t in trials:
        if t.value is not None and (best is None or (t.value > best if maximize
                                                     else t.value < best)):
            best, best_cfg = t.value, t.user_attrs[ATTR]["config"]
        if hasattr(target_cls, "true_value"):
            workload = summary.workload
            out.append(target_cls.true_value(best_cfg, workload)
                       / target_cls.known_optimum_value(workload) if best_cfg else 0.0)
        else:
            ratio = (best / default if maximize else default / best) if best and default else 0.0
            out.append(ratio)
    return out + [out[-1]] * (budget - len(out)) if out else [0.0] * budget


def run_target(target: str, seeds: int, budget: int, top: int, root: Path
               ) -> tuple[dict[str, list[Curve]], dict[str, Any]]:
    """The trained job, then both contenders per seed; their curves and the ranking used."""
    from model_registry.importance import champion_importance
    from targets.common.settings import tracking_uri

    home = root / target
    t0 = time.monotonic()
    trained = _job(target, home, "trainer", 1000, SETUPS[target]["train_budget"], auto=False,
                   top=top, train=True)
    ranked = champion_importance(tracking_uri(home), trained.service, trained.objective)
    if ranked is None:
        raise SystemExit(f"important_knobs.py: {target}: the trained job left no champion "
                         f"model ({trained.model}); raise its budget")
    info = {"model": ranked.model, "importance": ranked.knobs,
            "train_s": time.monotonic() - t0}
    curves: dict[str, list[Curve]] = {c: [] for c in CONTENDERS}
    for seed in range(seeds):
        for name in CONTENDERS:  # side by side: the same seed, one after the other
            began = time.monotonic()
            auto = name != "all knobs"
            summary = _job(target, home, f"{'auto' if auto else 'all'}-{seed}", seed, budget,
                           auto=auto, top=top, train=False)
            curves[name].append(Curve(_curve(target, home, summary, budget),
                                      time.monotonic() - began, summary.knob_focus or {}))
            print(f"{target} seed {seed} {name}: best after {budget} "
                  f"{curves[name][-1].values[-1]:.3f} ({curves[name][-1].seconds:.0f} s)",
                  flush=True)
    return curves, info


def _median_at(curves: list[Curve], n: int) -> float:
    return statistics.median(c.values[n - 1] for c in curves)


def print_table(target: str, curves: dict[str, list[Curve]], info: dict[str, Any],
                checkpoints: list[int], top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    figure = ("true value / known optimum" if target == "synthetic"
              else "best observed / default")
    table = Table(title=f"{target}: {figure} of the best config after N trials, median over "
                        f"{len(next(iter(curves.values())))} seeds (--top-knobs {top})")
    table.add_column("contender")
    for n in checkpoints:
        table.add_column(f"N={n}", justify="right")
    table.add_column("per seed at the end")
    table.add_column("job s", justify="right")
    for name, runs in curves.items():
        table.add_row(name, *(f"{_median_at(runs, n):.3f}" for n in checkpoints),
                      " ".join(f"{c.values[-1]:.3f}" for c in runs),
                      f"{statistics.median(c.seconds for c in runs):.0f}")
    console = Console(width=140)
    console.print(table)
    focus = curves["--knobs auto"][0].focus
    ranked = ", ".join(f"{k} {v:.3g}" for k, v in info["importance"].items())
    effect = ", ".join(f"{k} {v:.3g}" for k, v in focus.get("effect_from_default", {}).items())
    widened = [c.focus.get("widened_at_trial") for c in curves["--knobs auto"]]
    console.print(f"{info['model']}: recorded importance {ranked}; effect from the default "
                  f"{effect or '-'}; first: {focus.get('top')} (by {focus.get('ranked_by')}); "
                  f"widened at trials {widened}; trained job {info['train_s']:.0f} s")


def plot(results: dict[str, tuple[dict[str, list[Curve]], dict[str, Any]]], path: Path,
         top: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.6), dpi=110,
                             squeeze=False)
    for ax, (target, (curves, _)) in zip(axes[0], results.items(), strict=True):
        for name, runs in curves.items():
            n = len(runs[0].values)
            med = [statistics.median(c.values[i] for c in runs) for i in range(n)]
            (line,) = ax.plot(range(1, n + 1), med, label=f"{name} (median of {len(runs)})")
            for c in runs:
                ax.plot(range(1, n + 1), c.values, alpha=0.15, color=line.get_color())
        ax.set_xlabel("trials")
        ax.set_ylabel("true value / optimum" if target == "synthetic"
                      else "best observed / default")
        ax.set_title(f"{target}: best so far (--top-knobs {top})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--top-knobs", type=int, default=2)
    parser.add_argument("--targets", default="synthetic")
    parser.add_argument("--plot", type=Path, default=HERE / "important_knobs.png")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for target in targets:
        if target not in SETUPS:
            parser.error(f"--targets: unknown target '{target}'; one of {', '.join(SETUPS)}")
    if args.seeds < 1 or args.budget < 4 or args.top_knobs < 1:
        parser.error("--seeds >= 1, --budget >= 4 and --top-knobs >= 1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    checkpoints = sorted({n for n in (10, 20, args.budget) if n <= args.budget})
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="knobflow-knobs-") as tmp:
        for target in targets:
            results[target] = run_target(target, args.seeds, args.budget, args.top_knobs,
                                         Path(tmp))
    for target, (curves, info) in results.items():
        print_table(target, curves, info, checkpoints, args.top_knobs)
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    plot(results, args.plot, args.top_knobs)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
