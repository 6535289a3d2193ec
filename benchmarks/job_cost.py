"""What a tuning job costs on an instant target: its fixed part, by part, and its cost per trial,
beside a bare Optuna loop with the same trials, in one run.

Each knobflow job is the command a user types (``knobflow tune synthetic ... --json``, the
console script's entry, ``KNOBFLOW_NO_WARM`` set) in a fresh process with Prefect's temporary
server (its own ``PREFECT_HOME``, made warm by a first job that is not counted, as a user's
second job finds it), on the synthetic target with
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

``--warm`` runs, in each round beside it, the same command with ``knobflow warm`` serving the
home (``flows/warm.py``: knobflow loaded once, each command forked from it; its own
``PREFECT_HOME`` and server, started before the rounds, a first job not counted). The command
is started as the console script starts it (``flows.entry``); its CPU time is the command's
and the job's (the warm process's child), not the warm process's own or its server's.

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
#: What the ``knobflow`` console script runs (``flows.entry``), as a user's shell starts it.
ENTRY = "import sys; from flows.entry import main; sys.exit(main())"


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


def job_env(prefect_home: Path) -> dict[str, str]:
    """The environment of the commands (and of the warm process, which must match its
    commands'): their own Prefect home, telemetry off, no configured Prefect API."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO),
           "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env.pop("PREFECT_API_URL", None)
    env.pop("KNOBFLOW_NO_WARM", None)
    return env


def run_tune(n: int, seed: int, home: Path, service: str, space_file: Path,
             env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """``knobflow tune synthetic`` of ``n`` instant trials as the console script runs it, and
    its wall time as seen from outside."""
    command = [sys.executable, "-c", ENTRY, "tune", "synthetic", "--budget", str(n),
               "--seed", str(seed), "--set-workload", "duration=0", "--space",
               str(space_file), "--service", service, "--home", str(home), "--json"]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    return done, time.perf_counter() - began


def knobflow_job(n: int, seed: int, home: Path, service: str, prefect_home: Path,
                 space_file: Path) -> dict:
    """One ``knobflow tune`` command in a fresh process: its ``--json`` result, the wall time
    of the process as seen from outside (``wall_s``) and the CPU time it and its children (the
    server, the trial processes) used (``cpu_s``: what the job costs whatever else runs)."""
    env = {**job_env(prefect_home), "KNOBFLOW_NO_WARM": "1"}  # the console script's, cold
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done, wall = run_tune(n, seed, home, service, space_file, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"the job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall, "cpu_s": cpu}


def start_warm(home: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``knobflow warm --home HOME``, once it says it is ready."""
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "warm", "--home", str(home)],
                            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "ready in" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the warm process did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    print(log.read_text().strip().splitlines()[-1], flush=True)
    return proc


def warm_job(n: int, seed: int, home: Path, service: str, space_file: Path,
             env: dict[str, str], warm: subprocess.Popen) -> dict:
    """The same ``knobflow tune`` command, served by the warm process: its ``--json`` with
    ``wall_s`` and ``cpu_s`` (the command's and its job's: the warm process's ended child)."""
    import psutil

    def cpu() -> float:
        times = psutil.Process(warm.pid).cpu_times()
        return times.children_user + times.children_system

    before, own = cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done, wall = run_tune(n, seed, home, service, space_file, env)
    time.sleep(0.5)  # the job's process reaped by the warm process: its CPU time counted
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or "warm process" in done.stderr:
        raise SystemExit(f"the warm job failed or ran cold ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cpu_s = cpu() - before + (after.ru_utime - own.ru_utime) + (after.ru_stime - own.ru_stime)
    return {**result, "wall_s": wall, "cpu_s": cpu_s}


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
        warm, env = None, job_env(root / "prefect-warm")
        if args.warm:
            warm = start_warm(home, env, root / "warm.log")
            warm_job(15, args.seed, home, "warm-up-warm", space_file, env, warm)  # not counted
        try:
            for r in range(args.rounds):
                rounds.append(one_round(args, r, home, prefect_home, space_file, root, env,
                                        warm))
        finally:
            if warm is not None:
                warm.terminate()
                warm.wait(timeout=120)
    loads.append(os.getloadavg()[0])
    return {"rounds": rounds, "loads": loads, "trials": args.trials}


def one_round(args: argparse.Namespace, r: int, home: Path, prefect_home: Path,
              space_file: Path, root: Path, env: dict[str, str],
              warm: subprocess.Popen | None) -> dict:
    """One round: the command's job (then the warm process's, if any; the order alternates
    between rounds) and the bare loop."""
    rnd: dict = {}
    order = ["job", "warm"] if r % 2 == 0 else ["warm", "job"]
    for kind in order:
        if kind == "job":
            rnd["job"] = knobflow_job(args.trials, args.seed + r, home, f"svc-{r}",
                                      prefect_home, space_file)
        elif warm is not None:
            rnd["warm"] = warm_job(args.trials, args.seed + r, home, f"warm-{r}", space_file,
                                   env, warm)
    rnd["bare_s"] = bare_loop(args.trials, args.seed + r, root / f"bare-{r}")
    print(f"round {r + 1}: " + "; ".join(
        f"{kind} {rnd[kind]['duration_s']:.1f} s (fixed "
        f"{rnd[kind]['fixed_s']['total']:.1f} s, trials {rnd[kind]['trials_s']:.1f} s)"
        for kind in ("job", "warm") if kind in rnd)
        + f"; bare {rnd['bare_s'] * 1000:.1f} ms per trial", flush=True)
    return rnd


def figures(m: dict, kind: str = "job") -> dict[str, list[float]]:
    """One row per figure, one value per round, of the command's jobs (``kind`` "job") or of
    the same commands served by the warm process ("warm")."""
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
    bars = [("command", rows)] + ([("warm command", warm)] if warm else [])
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
    ax2.set_xticks(range(len(per)), [n.replace(" ", "\n") for n in names], fontsize=7)
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
                        help="also run each round's command with `knobflow warm` serving it")
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
        print_table(warm, m, "the same command served by `knobflow warm`")
    plot(rows, m, warm)
    if args.json:
        print(json.dumps({"command": rows, "warm": warm} if warm is not None else rows))


if __name__ == "__main__":
    main()
