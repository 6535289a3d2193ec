"""Does a gain a job calls significant hold up on a loaded machine? Before and after issue 13.

A deliberate background load runs the whole time: a CPU hog pinned to one core
(``os.sched_setaffinity``) that is busy and idle in random bursts of 0.1-1.5 s, so runs of the
same config see different machines. Under it, for each seed, one tuning job of this tree and one
of ``--compare REV`` (checked out into a temporary ``git worktree``; the order alternates per
seed, so a change of the machine's load falls on both alike) run on a fresh home each. After each
job its best config and the default are re-measured ``--remeasure`` times, interleaved ABBA on the
job's instance (independent of the job's own verification). A claim (the job said its best is
significantly better than the default) is confirmed when the re-measured 95 % interval lies above
1.0 as well. Prints a table per job and a summary per tree, and saves ``benchmarks/noise.png``.

    python benchmarks/noise.py --seeds 4 --budget 10      # this tree against 34ab8f2, hog on
    python benchmarks/noise.py --one --seed 0 --budget 10   # one job of this tree, JSON out
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

HERE = Path(__file__).resolve().parent
BEFORE = "34ab8f2"  # main before issue 13: one run of the default, a fixed 3-pair verification


def hog(core: int, seed: int) -> None:
    """Busy, then idle, in random bursts, on ``core`` only (until killed)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    rng = random.Random(seed)
    while True:
        end = time.perf_counter() + rng.uniform(0.1, 1.5)
        while time.perf_counter() < end:
            pass
        time.sleep(rng.uniform(0.1, 1.5))


def one_job(args: argparse.Namespace) -> dict[str, Any]:
    """One job of the tree on PYTHONPATH, then its best and the default re-measured."""
    try:
        from targets.common.settings import quiet_environment
    except ImportError:  # pragma: no cover - an old checkout
        from flows.settings import quiet_environment  # type: ignore[no-redef]
    quiet_environment()
    from flows.job import Job
    from flows.tune import tune
    from tasks.verify import gain_interval

    workload = dict(kv.split("=", 1) for kv in args.workload)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="knobflow-noise-") as tmp:
        summary = tune(args.target, budget=args.budget, seed=args.seed, workload=workload,
                       policies=args.policy, train=False, home=tmp)
        took = time.perf_counter() - began
        job = Job.load(Path(tmp) / "jobs" / summary.study_name / "job.json", Path(tmp))
        result: dict[str, Any] = {
            "seed": args.seed, "duration_s": took, "n_trials": summary.n_trials,
            "claimed": bool(summary.gain_significant), "gain": summary.gain,
            "gain_low": summary.gain_low, "gain_high": summary.gain_high,
            "verify_pairs": summary.verify_repeats,
            "noise": (getattr(summary, "noise", None) or {}).get("message", ""),
            "repeats": job.repeats, "baseline_every": job.baseline_every,
            "best_is_default": summary.best_config == job.target_cls.knob_spec().defaults(),
        }
        if summary.best_config is None:
            return result
        runner = job.trial_runner()
        instance = next(iter(runner.instance_dirs))
        defaults, best = job.target_cls.knob_spec().defaults(), summary.best_config
        values: dict[str, list[float]] = {"default": [], "best": []}
        for r in range(args.remeasure):
            order = [("default", defaults), ("best", best)][:: -1 if r % 2 else 1]
            pair = {}
            for label, config in order:
                outcome = runner.run(f"again-{r}-{label}", dict(config), instance,
                                     runner.trial_seed(3 * 10**6 + 2 * r + (label == "best")))
                pair[label] = outcome.value if outcome.ok else None
            if None not in pair.values():
                for label, value in pair.items():
                    values[label].append(value)
        again = gain_interval(values["default"], values["best"], job.direction)
        result["again"] = list(again) if again else None
        result["again_pairs"] = len(values["best"])
    return result


def _run_in(tree: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    flags = ["--one", "--seed", str(seed), "--budget", str(args.budget), "--target",
             args.target, "--remeasure", str(args.remeasure),
             *(x for kv in args.workload for x in ("--workload", kv)),
             *(x for p in args.policy for x in ("--policy", p))]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *flags], cwd=tree,
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"job in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Jobs of ``args.compare`` and of this tree under the hog, alternating per seed."""
    repo = HERE.parent
    results: dict[str, list[dict[str, Any]]] = {f"before ({args.compare})": [],
                                                 "after (this tree)": []}
    load = [os.getloadavg()[0]]
    hogger = None
    if args.hog:
        hogger = multiprocessing.Process(target=hog, args=(0, 1), daemon=True)
        hogger.start()
    try:
        with tempfile.TemporaryDirectory(prefix="knobflow-noise-cmp-") as tmp:
            other = Path(tmp) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(other), args.compare],
                           cwd=repo, check=True, capture_output=True)
            try:
                trees = dict(zip(results, (other, repo), strict=True))
                for seed in range(args.seeds):
                    order = list(trees) if seed % 2 == 0 else list(trees)[::-1]
                    for label in order:
                        results[label].append(_run_in(trees[label], args, seed))
                        load.append(os.getloadavg()[0])
                        r = results[label][-1]
                        print(f"seed {seed} {label}: claimed {r['claimed']} gain {r['gain']} "
                              f"again {r.get('again')} ({r['duration_s']:.0f} s)", flush=True)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(other)],
                               cwd=repo, check=False, capture_output=True)
    finally:
        if hogger is not None:
            hogger.kill()
    results["_load"] = [{"min": min(load), "max": max(load)}]
    return results


def _interval(g: float | None, lo: float | None, hi: float | None) -> str:
    return "-" if g is None else f"{g:.2f}x [{lo:.2f}, {hi:.2f}]"


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    load = results.pop("_load", [{}])[0]
    console = Console(width=160)
    table = Table(title=f"{args.target} jobs of {args.budget} trials under a CPU hog on one core "
                        f"({'on' if args.hog else 'off'}); best vs default re-measured "
                        f"{args.remeasure} pairs afterwards")
    for col in ("tree", "seed", "noise check", "verify pairs", "reported gain [95%]", "claimed",
                "re-measured gain [95%]", "confirmed", "job s"):
        table.add_column(col)
    for label, runs in results.items():
        for r in runs:
            again = r.get("again") or [None, None, None]
            table.add_row(label, str(r["seed"]), r["noise"] or "-", str(r["verify_pairs"]),
                          _interval(r["gain"], r["gain_low"], r["gain_high"]),
                          "yes" if r["claimed"] else "no", _interval(*again),
                          _confirmed(r), f"{r['duration_s']:.0f}")
    console.print(table)
    summary = Table(title="claims of a significant gain, and how many re-measurement confirmed")
    for col in ("tree", "jobs", "claimed", "confirmed", "claimed, not confirmed",
                "median |reported/re-measured - 1|", "median job s"):
        summary.add_column(col)
    for label, runs in results.items():
        claimed = [r for r in runs if r["claimed"]]
        confirmed = [r for r in claimed if _confirmed(r) == "yes"]
        errors = [abs(r["gain"] / r["again"][0] - 1) for r in runs
                  if r.get("again") and r["gain"]]
        summary.add_row(label, str(len(runs)), str(len(claimed)), str(len(confirmed)),
                        str(len(claimed) - len(confirmed)),
                        f"{100 * statistics.median(errors):.1f} %" if errors else "-",
                        f"{statistics.median(r['duration_s'] for r in runs):.0f}")
    console.print(summary)
    print(f"load average (1 min) during the runs: {load.get('min', 0):.2f}-"
          f"{load.get('max', 0):.2f} on {os.cpu_count()} cores")
    _plot(results, args)


def _confirmed(r: dict[str, Any]) -> str:
    if not r.get("again"):
        return "-"
    return "yes" if r["again"][1] > 1.0 else "no"


def _plot(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    colors = ("#ee7733", "#4477aa")
    for k, (label, runs) in enumerate(results.items()):
        for i, r in enumerate(runs):
            x = i + (k - 0.5) * 0.3
            if r["gain"]:
                ax.errorbar([x - 0.05], [r["gain"]], yerr=[[r["gain"] - r["gain_low"]],
                            [r["gain_high"] - r["gain"]]], fmt="o", color=colors[k], capsize=3,
                            label=f"{label}: reported" if i == 0 else None)
            if r.get("again"):
                g, lo, hi = r["again"]
                ax.errorbar([x + 0.05], [g], yerr=[[g - lo], [hi - g]], fmt="s", mfc="white",
                            color=colors[k], capsize=3,
                            label=f"{label}: re-measured" if i == 0 else None)
    ax.axhline(1.0, color="#777777", linestyle="--", linewidth=1)
    ax.set_xticks(range(args.seeds), [f"seed {s}" for s in range(args.seeds)])
    ax.set_ylabel("gain of best over default (x, 95 % interval)")
    ax.set_title(f"{args.target}, CPU hog on one core: reported vs re-measured gain", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "noise.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sqlite")
    parser.add_argument("--workload", action="append", default=[], metavar="K=V")
    parser.add_argument("--policy", action="append", default=[])
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="with --one")
    parser.add_argument("--remeasure", type=int, default=8, help="pairs re-measured after")
    parser.add_argument("--compare", default=BEFORE, metavar="REV")
    parser.add_argument("--no-hog", dest="hog", action="store_false")
    parser.add_argument("--one", action="store_true", help="one job of this tree; JSON out")
    parser.add_argument("--save", metavar="FILE", help="keep the raw results as JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_job(args), default=str))
        return
    results = compare(args)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1, default=str))
    report(results, args)


if __name__ == "__main__":
    main()
