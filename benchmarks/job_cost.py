"""What a tuning job costs on an instant target: its fixed part, by part, and its cost per trial,
beside a bare Optuna loop with the same trials, in one run.

Each knobflow job is the command a user types (``python -m flows.cli tune synthetic ... --json``)
in a fresh process with Prefect's temporary server (its own ``PREFECT_HOME``, made warm by a
first job that is not counted, as a user's second job finds it), on the synthetic target with
``duration=0``: a trial does nothing but start its process, measure and be cleaned. Each job is
the first of a new service in the home (transfer finds no sibling) and trains the service's
models, as a user's job does. The job's ``--json`` gives the whole command's time from the
process start (``duration_s``), its fixed parts (``fixed_s``: imports, server start, transfer,
training, verification, ...), the exploration's time (``trials_s``) and the tell lag. The bare
loop asks and tells an in-memory TPE study and calls the same target in-process, trial after
trial, over the same search space: its time per trial is the floor.

    python benchmarks/job_cost.py --trials 50 --rounds 2
    python benchmarks/job_cost.py --trials 30 --rounds 3 --warm
    python benchmarks/job_cost.py --trials 30 --rounds 2 --tell-modes

``--warm`` runs, in each round beside the command, the same job in one long-lived process (this
benchmark's: ``flows.tune.tune`` called from Python after an uncounted warm-up job of 15 trials,
enough to train; one Prefect temporary server for all), which is what a process that runs many
jobs pays: no imports, no server start, MLflow's store already open. Its process CPU time
counts the trial processes but not the server's.

``--tell-modes`` compares instead, in one process (one Prefect server), TPE's trials told with
cleaning beside the next run (what a sampler that takes pending trials gets) and told before
every ask (what any other sampler gets), alternating, with training and transfer off: the time
of the exploration per trial and the tell lag of each.

Goals (issue 17): fixed cost <= 10 s on an idle machine, per-trial overhead <= 40 ms (2 % of a
2 s trial), tell lag <= 1. The table and ``benchmarks/job-cost.png`` show each part per round and
the median; the load average at the start and the end is in the title.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's code, whatever the installed one is
from overhead import SPACE  # noqa: E402  (this folder; the crash and hang regions left out)

PARTS = ("imports", "server", "start", "transfer", "tracking", "noise_probe", "verification",
         "training", "report", "other")
GOALS = {"fixed": 10.0, "overhead_ms": 40.0, "lag": 1}


def bare_loop(n: int, seed: int, data_dir: Path) -> float:
    """Seconds per trial of a plain Optuna loop calling the target in-process (the loop of
    ``benchmarks/overhead.py``, on instant runs)."""
    import optuna  # noqa: F401  (imported before the clock starts, as the loop's own are)
    from overhead import bare_loop as completion_times

    import tuners.samplers
    import tuners.space  # noqa: F401
    from targets.synthetic import SyntheticTarget

    workload = SyntheticTarget.parse_workload({"duration": 0.0})
    began = time.perf_counter()
    return (completion_times(n, workload, seed, data_dir)[-1] - began) / n


def knobflow_job(n: int, seed: int, home: Path, service: str, prefect_home: Path,
                 space_file: Path) -> dict:
    """One ``knobflow tune`` command in a fresh process: its ``--json`` result, the wall time
    of the process as seen from outside (``wall_s``) and the CPU time it and its children (the
    server, the trial processes) used (``cpu_s``: what the job costs whatever else runs)."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO),
           "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", "tune", "synthetic", "--budget", str(n),
               "--seed", str(seed), "--set-workload", "duration=0", "--space",
               str(space_file), "--service", service, "--home", str(home), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"the job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall, "cpu_s": cpu}


def warm_job(n: int, seed: int, home: Path, service: str, space_file: Path) -> dict:
    """The same job in this process (``flows.tune.tune``): what a process that has run jobs
    before pays. Its figures as the command's ``--json`` has them, with ``wall_s`` and ``cpu_s``
    (this process and its ended children: the trial processes, not the server)."""
    from flows.tune import tune

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    before, began = cpu(), time.perf_counter()
    summary = tune("synthetic", budget=n, seed=seed, workload={"duration": 0.0},
                   space_file=str(space_file), service=service, home=str(home))
    return {"duration_s": summary.duration_s, "fixed_s": dict(summary.fixed_s),
            "trials_s": summary.trials_s, "tell_lag_max": summary.tell_lag_max,
            "tell_lag_median": summary.tell_lag_median,
            "wall_s": time.perf_counter() - began, "cpu_s": cpu() - before}


def measure(args: argparse.Namespace) -> dict:
    """Every round's job figures and bare loop, and the loads."""
    import yaml

    loads = [os.getloadavg()[0]]
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="knobflow-job-cost-") as tmp:
        root = Path(tmp)
        space_file = root / "space.yaml"
        space_file.write_text(yaml.safe_dump(SPACE))
        prefect_home, home = root / "prefect", root / "home"
        print("warm-up job (not counted): Prefect's database, MLflow's store template, .pyc",
              flush=True)
        knobflow_job(3, args.seed, home, "warm-up", prefect_home, space_file)
        if args.warm:  # this process's own warm-up: imports, its server, the store opened
            os.environ.update({"PREFECT_HOME": str(root / "prefect-warm"),
                               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
            os.environ.pop("PREFECT_API_URL", None)
            warm_job(15, args.seed, home, "warm-up-in-process", space_file)  # it trains
        for r in range(args.rounds):
            job = knobflow_job(args.trials, args.seed + r, home, f"svc-{r}", prefect_home,
                               space_file)
            rnd = {"job": job}
            if args.warm:
                rnd["warm"] = warm_job(args.trials, args.seed + r, home, f"warm-{r}",
                                       space_file)
            rnd["bare_s"] = bare_loop(args.trials, args.seed + r, root / f"bare-{r}")
            rounds.append(rnd)
            print(f"round {r + 1}: " + "; ".join(
                f"{kind} {rnd[kind]['duration_s']:.1f} s (fixed "
                f"{rnd[kind]['fixed_s']['total']:.1f} s, trials {rnd[kind]['trials_s']:.1f} s)"
                for kind in ("job", "warm") if kind in rnd)
                + f"; bare {rnd['bare_s'] * 1000:.1f} ms per trial", flush=True)
    loads.append(os.getloadavg()[0])
    return {"rounds": rounds, "loads": loads, "trials": args.trials}


def figures(m: dict, kind: str = "job") -> dict[str, list[float]]:
    """One row per figure, one value per round, of the command's jobs (``kind`` "job") or of
    the jobs in this process ("warm")."""
    rows: dict[str, list[float]] = {f"fixed: {p}": [] for p in PARTS}
    for key in ("fixed total", "trials", "whole command (duration_s)", "process wall time",
                "process CPU time (with its children)",
                "knobflow per trial (ms)", "bare Optuna loop per trial (ms)",
                "overhead per trial (ms)", "tell lag, max", "tell lag, median"):
        rows[key] = []
    n = m["trials"]
    for rnd in m["rounds"]:
        job = rnd[kind]
        for p in PARTS:
            rows[f"fixed: {p}"].append(job["fixed_s"].get(p, 0.0))
        per_trial = job["trials_s"] / n
        rows["fixed total"].append(job["fixed_s"]["total"])
        rows["trials"].append(job["trials_s"])
        rows["whole command (duration_s)"].append(job["duration_s"])
        rows["process wall time"].append(job["wall_s"])
        rows["process CPU time (with its children)"].append(job["cpu_s"])
        rows["knobflow per trial (ms)"].append(per_trial * 1000)
        rows["bare Optuna loop per trial (ms)"].append(rnd["bare_s"] * 1000)
        rows["overhead per trial (ms)"].append((per_trial - rnd["bare_s"]) * 1000)
        rows["tell lag, max"].append(job["tell_lag_max"])
        rows["tell lag, median"].append(job["tell_lag_median"])
    return rows


def print_table(rows: dict[str, list[float]], m: dict, what: str = "the command") -> None:
    from rich.console import Console
    from rich.table import Table

    n = len(m["rounds"])
    table = Table(title=f"job cost of {what}, {m['trials']} instant trials (synthetic, duration "
                        f"0), load {m['loads'][0]:.2f} -> {m['loads'][1]:.2f}, 2 cores")
    table.add_column("figure (s unless said)")
    for r in range(n):
        table.add_column(f"round {r + 1}", justify="right")
    table.add_column("median", justify="right")
    table.add_column("goal", justify="right")
    goals = {"fixed total": f"<= {GOALS['fixed']:g} s idle",
             "overhead per trial (ms)": f"<= {GOALS['overhead_ms']:g} ms",
             "tell lag, max": f"<= {GOALS['lag']}"}
    for name, values in rows.items():
        table.add_row(name, *(f"{v:,.2f}" for v in values), f"{statistics.median(values):,.2f}",
                      goals.get(name, ""))
    Console(width=140).print(table)


def plot(rows: dict[str, list[float]], m: dict,
         warm: dict[str, list[float]] | None = None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    colours = plt_colours(len(PARTS))
    bars = [("command", rows)] + ([("warm process", warm)] if warm else [])
    for x, (_, figs) in enumerate(bars):
        bottom = 0.0
        for i, p in enumerate((*PARTS, "trials")):
            key = "trials" if p == "trials" else f"fixed: {p}"
            v = statistics.median(figs[key])
            ax.bar(x, v, bottom=bottom, label=p if x == 0 else None,
                   hatch="//" if p == "trials" else None,
                   color="white" if p == "trials" else colours[i], edgecolor="black",
                   linewidth=0.4)
            bottom += v
    ax.axhline(GOALS["fixed"], color="black", linestyle="--", linewidth=1)
    ax.text(len(bars) - 0.55, GOALS["fixed"], "fixed-cost goal", fontsize=8, va="bottom")
    ax.set_xticks(range(len(bars)), [f"{name}\n{m['trials']} trials" for name, _ in bars],
                  fontsize=8)
    ax.set_xlim(-0.6, len(bars) + 1.0)
    ax.set_ylabel("seconds (median of rounds)")
    ax.legend(fontsize=7, loc="center right")
    names = [name for name, _ in bars] + ["bare Optuna"]
    per = [statistics.median(figs["knobflow per trial (ms)"]) for _, figs in bars]
    per.append(statistics.median(rows["bare Optuna loop per trial (ms)"]))
    ax2.bar(range(len(per)), per, color=[*["tab:blue", "tab:green"][:len(bars)], "tab:gray"])
    ax2.set_xticks(range(len(per)), names, fontsize=7)
    ax2.set_ylabel("ms per trial")
    fig.suptitle(f"job cost on an instant target (load {m['loads'][0]:.1f} -> "
                 f"{m['loads'][1]:.1f}, 2 cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "job-cost.png", dpi=110)


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""
    def whole(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"'{text}': a whole number >= {low}")
        return int(text)
    return whole


def plt_colours(n: int) -> list[tuple[float, ...]]:
    """``n`` distinct colours (matplotlib's tab20)."""
    from matplotlib import colormaps

    return [colormaps["tab20"](i / 20) for i in range(n)]


def tell_modes(args: argparse.Namespace) -> None:
    """TPE jobs with cleaning beside the next run and with every result told before the next
    ask, alternating; the exploration's time per trial and the tell lag of each."""
    import yaml
    from rich.console import Console
    from rich.table import Table

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    import tasks.explore
    from flows.tune import tune

    pending = tasks.explore.takes_pending
    results: dict[str, list[dict]] = {"beside the next run": [], "before every ask": []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="knobflow-tell-") as tmp:
        space_file = Path(tmp) / "space.yaml"
        space_file.write_text(yaml.safe_dump(SPACE))
        for r in range(args.rounds + 1):  # round 0 warms up (server, imports) and is not kept
            modes = list(results) if r % 2 else list(results)[::-1]
            for mode in modes:
                tasks.explore.takes_pending = pending if mode == "beside the next run" \
                    else (lambda sampler: False)
                summary = tune("synthetic", budget=args.trials if r else 3, seed=args.seed + r,
                               workload={"duration": 0.0}, space_file=str(space_file),
                               train=False, transfer=False, noise_runs=0, verify_repeats=2,
                               home=str(Path(tmp) / f"home-{r}-{len(mode)}"))
                if r:
                    results[mode].append({"ms": 1000 * summary.trials_s / args.trials,
                                          "lag_max": summary.tell_lag_max,
                                          "lag_median": summary.tell_lag_median})
                    print(f"round {r}: {mode}: {results[mode][-1]}", flush=True)
    tasks.explore.takes_pending = pending
    loads.append(os.getloadavg()[0])
    table = Table(title=f"TPE, {args.trials} instant trials: when results are told (load "
                        f"{loads[0]:.2f} -> {loads[1]:.2f}, 2 cores)")
    for col in ("told", "exploration per trial (ms), each round", "median", "tell lag max",
                "tell lag median"):
        table.add_column(col)
    for mode, runs in results.items():
        table.add_row(mode, ", ".join(f"{m['ms']:.0f}" for m in runs),
                      f"{statistics.median(m['ms'] for m in runs):.0f}",
                      str(max(m["lag_max"] for m in runs)),
                      f"{statistics.median(m['lag_median'] for m in runs):g}")
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=_at_least(2), default=50)
    parser.add_argument("--rounds", type=_at_least(1), default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--warm", action="store_true",
                        help="also run each round's job in this process, after a warm-up job")
    parser.add_argument("--tell-modes", action="store_true",
                        help="compare results told beside the next run and before every ask")
    args = parser.parse_args()
    if args.tell_modes:
        tell_modes(args)
        return
    m = measure(args)
    rows = figures(m)
    print_table(rows, m)
    warm = figures(m, "warm") if args.warm else None
    if warm is not None:
        print_table(warm, m, "the same job in a warm process")
    plot(rows, m, warm)
    if args.json:
        print(json.dumps({"command": rows, "warm": warm} if warm is not None else rows))


if __name__ == "__main__":
    main()
