"""What a job's trial records cost on the shared stack's MLflow server, with MLflow's credential
cache off and on (``flows.stack_services.AUTH_CACHE_S``).

Two tracking servers started as ``knobflow stack`` starts its own (``start_mlflow``: basic auth,
one worker, served artifacts), each on its own SQLite store, one with ``auth_cache_ttl_seconds``
0 (MLflow's default) and one with knobflow's. Each round, in alternating order, a
``JobTracker`` writes ``--trials`` trial records (a child run, its params and metrics,
trial.json and validation.json, its end: five requests each, as a job writes them) to each server
and waits for them. Prints per server the time per trial record (median over rounds, and each
round) and the server's CPU per record.

    python benchmarks/stack_tracking.py --trials 30 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's code, whatever the installed one is

from flows.stack_services import AUTH_CACHE_S, USER, start_mlflow, wait_mlflow  # noqa: E402
from targets.process import free_port, kill_tree, new_secret, write_private  # noqa: E402
from tasks.track import JobTracker  # noqa: E402

KNOBS = {"buffer_kb": 2048, "threads": 8, "mode": "gamma", "ratio": 0.25, "cache": True,
         "batch": 64}


def record(trial: int) -> dict[str, Any]:
    """A trial's record as the exploration writes it (six knobs, a dozen counters)."""
    now = time.time()
    return {"status": "ok", "config": KNOBS, "effective_config": KNOBS, "value": 100.0 + trial,
            "workload_features": {"read_ratio": 0.5, "clients": 4},
            "counters": {f"counter_{i}": float(i * trial) for i in range(12)},
            "metrics": {"ops_per_s": 100.0 + trial, "p99_ms": 2.5}, "elapsed_s": 0.01,
            "started_at": now - 0.01, "finished_at": now, "instance": "bench-1",
            "row": {"ops_per_s": 100.0 + trial}, "reasons": [], "changed_knobs": ["threads"]}


def write_records(uri: str, n: int, round_no: int) -> float:
    """Seconds to write ``n`` trial records to ``uri`` and have them all done."""
    tracker = JobTracker(uri, f"bench-{round_no}", Path(tempfile.gettempdir()))
    tracker.start_job(f"round-{round_no}", {}, {})
    start = time.perf_counter()
    for i in range(n):
        tracker.log_trial(str(i), record(i), validation={"success": True})
    tracker.flush()
    took = time.perf_counter() - start
    tracker.close()
    if tracker.errors:
        raise SystemExit(f"{uri}: {tracker.errors[0]}")
    return took


def server_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the server and its children (the tracking server's worker)."""
    procs = [proc, *proc.children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="trial records per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.trials < 1 or args.rounds < 1:
        parser.error("--trials and --rounds must be at least 1")
    secret = new_secret()
    os.environ.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=secret,
                      MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    servers: dict[str, tuple[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kf-stack-tracking-") as tmp:
        try:
            for label, cache_s in (("cache off (MLflow's default)", 0),
                                   (f"cache {AUTH_CACHE_S} s (knobflow)", AUTH_CACHE_S)):
                home = Path(tmp) / str(cache_s)
                (home / "logs").mkdir(parents=True)
                pgpass = home / "pgpass"
                write_private(pgpass, "")
                port = free_port()
                proc = start_mlflow(home, backend_uri=f"sqlite:///{home / 'mlflow.db'}",
                                    host="127.0.0.1", port=port, secret=secret, pgpass=pgpass,
                                    auth_cache_s=cache_s)
                url = f"http://127.0.0.1:{port}"
                wait_mlflow(proc, url, secret, home / "logs" / "mlflow.log")
                servers[label] = (url, proc)
            times: dict[str, list[float]] = {label: [] for label in servers}
            cpu: dict[str, list[float]] = {label: [] for label in servers}
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                for label in order:
                    url, proc = servers[label]
                    ps = psutil.Process(proc.pid)
                    before = server_cpu(ps)
                    times[label].append(write_records(url, args.trials, r) / args.trials)
                    cpu[label].append((server_cpu(ps) - before) / args.trials)
                    print(f"round {r + 1}: {label}: {times[label][-1] * 1000:.0f} ms per record",
                          file=sys.stderr)
        finally:
            for _, proc in servers.values():
                kill_tree(proc.pid)
    table = Table(title=f"{args.trials} trial records per round, {args.rounds} rounds "
                  f"(load {os.getloadavg()[0]:.2f} at the end)")
    for col in ("server", "ms per record (median)", "each round", "server CPU ms per record"):
        table.add_column(col)
    for label in servers:
        table.add_row(label, f"{statistics.median(times[label]) * 1000:.0f}",
                      " / ".join(f"{t * 1000:.0f}" for t in times[label]),
                      f"{statistics.median(cpu[label]) * 1000:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
