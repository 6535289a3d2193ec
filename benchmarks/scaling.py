"""Scaling out: trials per minute with 1, 2 and 4 workers, and the shared study's own ceiling.

(a) ``knobflow tune synthetic --workers N`` on the shared stack (``flows.stack``: PostgreSQL,
    Prefect and MLflow servers, 4 process workers on the ``knobflow`` pool) with a fixed
    1-second trial (noise off), for N in 1, 2, 4: the trials per minute of the exploration, from
    the study's own timestamps: over the whole span (first trial started to last finished) and
    in steady state (from the moment every worker has finished a trial; the flow runs start
    one after another, each a new process). Speed-up is against N = 1; the goal is >= 0.8 x N.
(b) The ceiling of the shared study itself: asks and tells per second that Optuna's
    ``RDBStorage`` on the stack's PostgreSQL sustains with 1-32 concurrent client processes
    doing zero-second trials (RandomSampler and TPE, a fresh study per point), and the same
    with knobflow's shared-budget ask (``tasks.explore``: advisory lock, stale-trial check and
    a count of the study's trials before each ask) with RandomSampler.

    python benchmarks/scaling.py                        # both, on a stack of its own
    python benchmarks/scaling.py --part ceiling --clients 1,2,4 --seconds 5
    python benchmarks/scaling.py --stack-dir .knobflow-stack   # a running stack (infra/stack)

Prints both tables and the machine's load, and saves ``benchmarks/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
HEARTBEAT = {"KNOBFLOW_OPTUNA_HEARTBEAT_S": "2", "KNOBFLOW_OPTUNA_GRACE_S": "20"}


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of whole numbers >= 1")
    return values


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


# -- (a) trials per minute with N workers ------------------------------------------------------
def rates(study: Any) -> dict[str, float]:
    """A fanned-out job's exploration rate from its study: over the span, and steady."""
    from tuners.trials import finished_trials

    done = finished_trials(study)
    starts = [t.datetime_start.timestamp() for t in done]
    ends = sorted(t.datetime_complete.timestamp() for t in done)
    first_of: dict[str, float] = {}
    for t in sorted(done, key=lambda t: t.datetime_complete):
        first_of.setdefault(t.user_attrs["knobflow"]["instance"], t.datetime_complete.timestamp())
    steady_from = max(first_of.values())
    later = [e for e in ends if e > steady_from]
    return {
        "trials": len(done), "workers_seen": len(first_of),
        "span_s": ends[-1] - min(starts),
        "per_min": 60 * len(done) / (ends[-1] - min(starts)),
        "steady_per_min": 60 * len(later) / (ends[-1] - steady_from) if len(later) >= 2
        else float("nan"),
    }


def workers_part(stack: Any, counts: list[int], per_worker: int, work: Path) -> list[dict]:
    """Run one fanned-out job per count of workers; their rates."""
    import optuna

    from tuners.study import shared_storage_url

    env = {**os.environ, **stack.client_env(), **HEARTBEAT}
    procs = stack.start_workers(max(counts), env_extra={
        **HEARTBEAT, "PYTHONPATH": str(REPO), "KNOBFLOW_HOME": str(work / "worker-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}, cwd=REPO)
    rows = []
    try:
        for n in counts:
            began, before = time.monotonic(), load()
            done = subprocess.run(
                [sys.executable, "-m", "flows.cli", "tune", "synthetic", "--workers", str(n),
                 "--budget", str(per_worker * n), "--set-workload", "duration=1",
                 "--set-workload", "noise=0", "--noise-runs", "0", "--no-train",
                 "--verify-repeats", "2", "--instance", f"scale{n}",
                 "--home", str(work / f"job-{n}"), "--json"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode != 0:
                raise SystemExit(f"scaling.py: the job with {n} workers failed:\n"
                                 f"{done.stderr[-3000:]}")
            summary = json.loads(done.stdout)
            os.environ["KNOBFLOW_CONFIG"] = str(stack.config_file)
            study = optuna.load_study(study_name=summary["study_name"],
                                      storage=shared_storage_url())
            rows.append({"workers": n, "job_s": time.monotonic() - began, **rates(study),
                         "load_before": before, "load_after": load()})
            print_workers(rows[-1:], rows[0])
    finally:
        stack.stop_workers([p.pid for p in procs])
    return rows


def print_workers(rows: list[dict], base: dict) -> None:
    for r in rows:
        speed = r["steady_per_min"] / base["steady_per_min"]
        print(f"{r['workers']:>7} {r['trials']:>6} {r['job_s']:>7.0f} {r['span_s']:>7.1f} "
              f"{r['per_min']:>10.1f} {r['steady_per_min']:>12.1f} {speed:>8.2f} "
              f"{speed / r['workers']:>10.2f}   {r['load_after']}", flush=True)


# -- (b) the shared study's ceiling ------------------------------------------------------------
def _client(url: str, study_name: str, sampler: str, locked: bool, seconds: float,
            start_at: float, out: Any) -> None:
    """One client process: ask and tell zero-second trials for ``seconds``; how many."""
    import warnings

    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler_obj = (optuna.samplers.TPESampler(seed=os.getpid()) if sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=os.getpid()))
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=60 if locked else None)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler_obj)
    space = {"x": FloatDistribution(0, 1), "y": FloatDistribution(1e-3, 100, log=True),
             "threads": IntDistribution(1, 64)}
    ask: Callable[[], Any] = lambda: study.ask(space)  # noqa: E731
    if locked:
        from optuna.storages import fail_stale_trials

        from tuners.study import stored_trials, study_lock
        from tuners.trials import finished_trials

        def ask() -> Any:
            with study_lock(study):
                fail_stale_trials(study)
                len(finished_trials(study, stored_trials(study)))
                trial = study.ask(space)
                study._storage.record_heartbeat(trial._trial_id)
                return trial

    time.sleep(max(0.0, start_at - time.time()))
    n, end = 0, time.time() + seconds
    while time.time() < end:
        trial = ask()
        study.tell(trial, trial.params["x"])
        n += 1
    out.put(n)


def ceiling_point(url: str, clients: int, sampler: str, locked: bool, seconds: float) -> float:
    """Asks+tells per second of ``clients`` processes on a fresh study."""
    import optuna

    name = f"ceiling-{sampler}-{'lock' if locked else 'plain'}-{clients}-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=url)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 2.0 + 0.1 * clients  # every client connected before the clock
    procs = [ctx.Process(target=_client, args=(url, name, sampler, locked, seconds, start_at,
                                                out)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def ceiling_part(url: str, counts: list[int], seconds: float) -> dict[str, list[float]]:
    import optuna

    optuna.storages.RDBStorage(url)  # the schema, once
    variants = {"random": ("random", False), "tpe": ("tpe", False),
                "random+knobflow lock": ("random", True)}
    table: dict[str, list[float]] = {k: [] for k in variants}
    print(f"{'clients':>7} " + " ".join(f"{k:>22}" for k in variants) + "   load", flush=True)
    for n in counts:
        for key, (sampler, locked) in variants.items():
            table[key].append(ceiling_point(url, n, sampler, locked, seconds))
        print(f"{n:>7} " + " ".join(f"{table[k][-1]:>22.1f}" for k in variants)
              + f"   {load()}", flush=True)
    return table


def plot(workers: list[dict], counts: list[int], ceiling: dict[str, list[float]],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if workers:
        ax = axes[0]
        ns = [r["workers"] for r in workers]
        base = workers[0]["steady_per_min"] / workers[0]["workers"]
        ax.plot(ns, [r["steady_per_min"] for r in workers], "o-", label="steady")
        ax.plot(ns, [r["per_min"] for r in workers], "s--", label="whole span")
        ax.plot(ns, [base * n for n in ns], ":", color="grey", label="linear (from 1)")
        ax.plot(ns, [0.8 * base * n for n in ns], ":", color="red", label="goal 0.8 x N")
        ax.set(xlabel="workers", ylabel="trials per minute", xticks=ns,
               title="1-second synthetic trials, one shared study")
        ax.legend()
    if ceiling:
        ax = axes[1]
        for key, values in ceiling.items():
            ax.plot(counts, values, "o-", label=key)
        ax.set(xscale="log", xlabel="concurrent clients", ylabel="asks+tells per second",
               title="RDBStorage on PostgreSQL, zero-second trials")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "workers", "ceiling"), default="all")
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4],
                        help="counts of workers for (a) (1,2,4)")
    parser.add_argument("--per-worker", type=int, default=10,
                        help="budget of a job per worker (10: 40 trials with 4)")
    parser.add_argument("--clients", type=_ints, default=[1, 2, 4, 8, 16, 32],
                        help="counts of client processes for (b) (1,2,4,8,16,32)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="seconds each point of (b) runs (8)")
    parser.add_argument("--stack-dir", type=Path,
                        help="a running stack (infra/stack start); default: one of its own")
    parser.add_argument("--plot", type=Path, default=HERE / "scaling.png")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.workers[0] != 1 and args.part != "ceiling":
        parser.error("--workers: the first count must be 1 (the speed-up's base)")

    from targets.common.settings import quiet_environment

    quiet_environment()
    from flows.stack import Stack

    own = args.stack_dir is None
    stack = Stack(Path(tempfile.mkdtemp(prefix="knobflow-scaling-")) if own else args.stack_dir)
    work = Path(tempfile.mkdtemp(prefix="knobflow-scaling-work-"))
    print(f"scaling.py on {os.cpu_count()} cores; {load()}", flush=True)
    if own:
        stack.start(workers=0)
    try:
        workers: list[dict] = []
        ceiling: dict[str, list[float]] = {}
        if args.part in ("all", "workers"):
            print(f"(a) {args.per_worker} trials per worker, 1-second trials\n"
                  f"{'workers':>7} {'trials':>6} {'job s':>7} {'span s':>7} {'trials/min':>10} "
                  f"{'steady t/min':>12} {'speed-up':>8} {'per worker':>10}   load after",
                  flush=True)
            workers = workers_part(stack, args.workers, args.per_worker, work)
        if args.part in ("all", "ceiling"):
            os.environ["KNOBFLOW_CONFIG"] = str(stack.config_file)
            from tuners.study import shared_storage_url

            url = shared_storage_url()
            assert url is not None
            print(f"(b) asks+tells per second, {args.seconds:g} s per point", flush=True)
            ceiling = ceiling_part(url, args.clients, args.seconds)
    finally:
        if own:
            stack.stop()
    plot(workers, args.clients, ceiling, args.plot)
    print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps({"workers": workers, "ceiling": ceiling, "clients": args.clients}))


if __name__ == "__main__":
    main()
