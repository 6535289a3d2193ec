"""Continual tuning: the time from a live instance's workload change to an applied, verified
config, through Prefect (``knobflow serve``, the watch deployment, the drift event, the re-tune
deployment's automation, the tune job, the canary apply), cold and with transfer.

    python benchmarks/continual.py --budget 15 --windows 3 --window-s 1

Starts knobflow's own Prefect server and ``knobflow serve --target synthetic`` in a temporary
home, and a live synthetic instance under load. Per case: the watch runs once (the reference),
the instance's workload moves (``shift`` 0.1 -> 0.9), the watch deployment runs again at once
(in service the watch runs every 5 minutes: add up to that interval), and the clock stops when the
re-tune the event triggered ends. ``cold``: the service has no history; ``transfer``: the service
was tuned before at two other workloads (shift 0.3 and 0.6), so the re-tune starts from their
best configs and the champion model. Prints each phase and the applied config's measured gain
(windows after / before, from the actuation's record).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="continual.py", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=15, help="trials of the re-tune")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--cases", default="cold,transfer")
    parser.add_argument("--home", help="knobflow home (default: a temporary directory)")
    parser.add_argument("--no-fork", action="store_true",
                        help="serve with --no-fork: each flow run in a new interpreter")
    return parser.parse_args(argv)


def _knobflow(home: Path, env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--home", str(home)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"knobflow {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def _prefect(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"prefect {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def _runs(env: dict[str, str], flow: str, after: float) -> list[Any]:
    """Flow runs of ``flow`` created after epoch ``after``, oldest first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from flows.server import api_client

    with api_client(env) as api:
        runs = api.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
    return sorted((r for r in runs if r.created.timestamp() >= after), key=lambda r: r.created)


def _logs(env: dict[str, str], runs: list[Any]) -> list[str]:
    """The log lines of flow ``runs``."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.server import api_client

    with api_client(env) as api:
        logs = api.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[r.id for r in runs])), limit=200)
    return [entry.message for entry in logs]


def _case(name: str, home: Path, env: dict[str, str], args: argparse.Namespace
          ) -> dict[str, Any]:
    from targets.live_daemon import launch, stop_launched
    from tasks.instances import Instance, InstanceStore

    service = f"svc-{name}"
    if name == "transfer":  # the service's history: two earlier workloads
        for shift in (0.3, 0.6):
            _knobflow(home, env, "tune", "synthetic", "--service", service, "--instance",
                      f"hist-{shift}", "--budget", "20", "--set-workload", f"shift={shift}")
    system = home / "systems" / f"live-{name}"
    conn = launch("synthetic", system, {"shift": 0.1})
    inst = f"live-{name}"
    InstanceStore(home).add(Instance(name=inst, service=service, target="synthetic",
                                     url=conn.url, secret_file=conn.secret_file, launched=True,
                                     data_dir=system, workload={"shift": 0.1}))
    try:
        _knobflow(home, env, "instance", "policy", inst, f"windows={args.windows}",
                  f"window_s={args.window_s}")
        _prefect(env, "deployment", "run", "watch/synthetic-watch", "--param",
                 f"instance={inst}", "--watch")
        t0 = time.time()
        _knobflow(home, env, "instance", "workload", inst, "shift=0.9")
        _prefect(env, "deployment", "run", "watch/synthetic-watch", "--param",
                 f"instance={inst}", "--watch")
        detected = time.time()
        while True:
            done = [r for r in _runs(env, "retune", t0) if r.state and r.state.is_final()]
            if done:
                break
            if time.time() - t0 > 1800:
                raise SystemExit("no re-tune ended within 30 minutes")
            time.sleep(2)
        retune = done[0]
        tune = _runs(env, "tune", t0)[0]
        log = InstanceStore(home).dir(inst) / "actuations.jsonl"
        acts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if not acts:  # nothing was actuated: say what the apply said
            print(f"{name}: re-tune {retune.state.name} ({retune.state.message}); apply said:")
            for line in _logs(env, _runs(env, "apply", t0)):
                print("   ", line)
        ratio = next((a.get("test", {}).get("ratio") for a in reversed(acts)
                      if a.get("test")), None)
        return {"case": name, "state": retune.state.name, "detect_s": detected - t0,
                "event_to_run_s": retune.start_time.timestamp() - detected,
                "tune_s": (tune.end_time - tune.start_time).total_seconds(),
                "apply_s": retune.end_time.timestamp() - tune.end_time.timestamp(),
                "total_s": retune.end_time.timestamp() - t0,
                "outcome": next((a.get("outcome") for a in reversed(acts)
                                 if a.get("outcome")), "-"), "ratio": ratio}
    finally:
        stop_launched(system)


def main(argv: list[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    from flows.server import PrefectServer
    from targets.common.settings import quiet_environment

    quiet_environment()
    home = Path(args.home or tempfile.mkdtemp(prefix="kf-continual-")).resolve()
    server = PrefectServer(home)
    env = {**os.environ, **server.start(), "KNOBFLOW_HOME": str(home)}
    fork = ["--no-fork"] if args.no_fork else []
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--target",
                              "synthetic", "--home", str(home), *fork], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = []
    try:
        assert serve.stdout is not None
        while not serve.stdout.readline().startswith("serving"):
            if serve.poll() is not None:
                raise SystemExit("knobflow serve exited")
        for case in args.cases.split(","):
            rows.append(_case(case, home, env, args))
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=120)
        server.stop()
    how = "--no-fork" if args.no_fork else "forked runs"
    table = Table(title=f"workload change to applied config ({how}, load "
                        f"{os.getloadavg()[0]:.1f})")
    for col in ("case", "state", "detect s", "event to run s", "tune s", "apply s", "total s",
                "outcome", "after/before"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["case"], r["state"], f"{r['detect_s']:.0f}", f"{r['event_to_run_s']:.0f}",
                      f"{r['tune_s']:.0f}", f"{r['apply_s']:.0f}", f"{r['total_s']:.0f}",
                      str(r["outcome"]), "-" if r["ratio"] is None else f"{r['ratio']:.2f}")
    Console(width=150).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
