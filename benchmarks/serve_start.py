"""What a served flow run costs to start: ``knobflow serve`` forking each run from a process that
has loaded knobflow (the default), beside ``knobflow serve --no-fork`` (a new interpreter per
run, as Prefect's runner starts them), in one run.

Two ``knobflow serve --target synthetic`` processes run side by side, each with its own home and
Prefect server. Each round asks each server for a run of ``watch/synthetic-watch`` (no live
instance: the run itself does almost nothing, so what is measured is its start), then of
``tune/synthetic-nightly`` with a budget of 8 (a job: it imports what cleaning, tracking and
training need), the order turning every round, one run at a time. For each run, from the flow
run's state history: ``start_s`` (Pending, when the runner took it, to Running, when the flow's
code began), ``run_s`` (Running to its end), ``taken_s`` (Pending to its end) and ``total_s``
(created to its end: with the runner's poll for new runs, every 10 s); and the CPU time of the
run's process with its children (read once it has ended and been reaped by its parent: the serve
process with ``--no-fork``, the fork server without), beside the whole machine's load.

    python benchmarks/serve_start.py --rounds 6 --tune-rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's code, whatever the installed one is
from flows.server import PrefectServer  # noqa: E402

ENTRY = "import sys; from flows.entry import main; sys.exit(main())"
#: The deployments measured, and the parameters of their runs: the watch (no live instance, so
#: the run itself does almost nothing) and a short tuning job of the synthetic target.
RUNS = {"watch": ("watch/synthetic-watch", {}),
        "tune": ("tune/synthetic-nightly", {"budget": 8})}


class Served:
    """One ``knobflow serve`` process, its API and the process that reaps its flow runs."""

    def __init__(self, mode: str, root: Path) -> None:
        self.mode, self.home = mode, root / mode
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(PREFECT_HOME=str(root / f"{mode}-prefect"), DO_NOT_TRACK="true",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true",
                   PYTHONPATH=str(REPO))
        args = ["--no-fork"] if mode == "no-fork" else []
        self.log = (root / f"{mode}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "serve", "--target", "synthetic", "--home",
             str(self.home), *args], cwd=REPO, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.api: httpx.Client | None = None
        self.deployments: dict[str, str] = {}

    def ready(self) -> bool:
        """Serving, its deployment registered; then its API client is made."""
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.mode}: serve exited:\n{Path(self.log.name).read_text()}")
        if "serving " not in Path(self.log.name).read_text():
            return False
        env = PrefectServer(self.home).env()  # the server serve started: its URL, its secret
        user, _, password = env["PREFECT_API_AUTH_STRING"].partition(":")
        self.api = httpx.Client(base_url=env["PREFECT_API_URL"], auth=(user, password),
                                timeout=60)
        for kind, (name, _) in RUNS.items():
            found = self.api.get(f"/deployments/name/{name}")
            if found.status_code != 200:
                return False
            self.deployments[kind] = found.json()["id"]
        return True

    def reaper(self) -> psutil.Process:
        """The process whose children the flow runs are: the fork server, or serve itself."""
        me = psutil.Process(self.proc.pid)
        if self.mode == "fork":
            for child in me.children():
                if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                    return child
            raise SystemExit("fork: no fork server among serve's children")
        return me

    def run(self, kind: str) -> dict[str, float]:
        """One flow run of the deployment of ``kind``, waited for; its times from its state
        history."""
        assert self.api is not None
        reaper = self.reaper()
        before, known = reaper.cpu_times(), {c.pid for c in reaper.children()}
        asked = self.api.post(f"/deployments/{self.deployments[kind]}/create_flow_run",
                              json={"parameters": RUNS[kind][1]})
        if asked.status_code >= 300:
            raise SystemExit(f"{self.mode}: no flow run of {kind}: {asked.status_code} "
                             f"{asked.text[:500]}")
        run = asked.json()
        deadline = time.monotonic() + 600
        while True:
            state = self.api.get(f"/flow_runs/{run['id']}").json()["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.mode}: the flow run did not end: {state}")
            time.sleep(0.1)
        if state["type"] != "COMPLETED":
            raise SystemExit(f"{self.mode}: the flow run ended {state['type']}: {state}")
        while _runs(reaper, known) and time.monotonic() < deadline:
            time.sleep(0.05)  # its process ends after its state (~0.6 s)
        time.sleep(0.2)  # and is reaped
        after = reaper.cpu_times()
        history = self.api.get("/flow_run_states/", params={"flow_run_id": run["id"]})
        at = {s["type"]: datetime.fromisoformat(s["timestamp"]) for s in history.json()}
        created = datetime.fromisoformat(run["created"])
        return {
            "start_s": (at["RUNNING"] - at["PENDING"]).total_seconds(),
            "run_s": (at["COMPLETED"] - at["RUNNING"]).total_seconds(),
            "taken_s": (at["COMPLETED"] - at["PENDING"]).total_seconds(),
            "total_s": (at["COMPLETED"] - created).total_seconds(),
            "cpu_s": (after.children_user + after.children_system)
            - (before.children_user + before.children_system),
        }

    def stop(self) -> None:
        """SIGINT, as Ctrl-C."""
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _runs(reaper: psutil.Process, known: set[int]) -> list[psutil.Process]:
    """The flow-run processes among ``reaper``'s children (not multiprocessing's own helpers,
    which the first run starts), other than ``known``, still running."""
    found = []
    for child in reaper.children():
        try:
            if child.pid in known or child.status() == psutil.STATUS_ZOMBIE or \
                    "multiprocessing.resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        found.append(child)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="watch runs of each (default 6)")
    parser.add_argument("--tune-rounds", type=int, default=2,
                        help="tuning-job runs of each (default 2)")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        kind: {"fork": [], "no-fork": []} for kind in RUNS}
    with tempfile.TemporaryDirectory(prefix="serve-start-") as tmp:
        served = [Served("fork", Path(tmp)), Served("no-fork", Path(tmp))]
        try:
            deadline = time.monotonic() + 600
            while not all(s.ready() for s in served):
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not start within 600 s")
                time.sleep(1)
            for s in served:  # one run each first, not counted: the fork server's preload
                s.run("watch")
            plan = ["watch"] * args.rounds + ["tune"] * args.tune_rounds
            for r, kind in enumerate(plan):
                order = served if r % 2 == 0 else served[::-1]
                for s in order:
                    results[kind][s.mode].append(s.run(kind))
                print(f"{kind} {r + 1}: " + ", ".join(
                    f"{m} start {v[-1]['start_s']:.2f} s taken {v[-1]['taken_s']:.2f} s "
                    f"cpu {v[-1]['cpu_s']:.2f} s" for m, v in results[kind].items()), flush=True)
        finally:
            for s in served:
                s.stop()
    load_end = os.getloadavg()[0]
    for kind, by_mode in results.items():
        if not by_mode["fork"]:
            continue
        print(f"\nserved flow runs of {RUNS[kind][0]} {RUNS[kind][1] or ''}, median of "
              f"{len(by_mode['fork'])} each, 2 cores, load {load_start:.2f} -> {load_end:.2f}")
        print("| figure (s) | fork (default) | --no-fork | fork / no-fork |")
        print("| --- | --- | --- | --- |")
        for key, label in (("start_s", "Pending to Running (the run's process starts)"),
                           ("run_s", "Running to Completed"),
                           ("taken_s", "Pending to Completed"),
                           ("total_s", "created to Completed (with the runner's poll)"),
                           ("cpu_s", "CPU of the run's process (with its children)")):
            a = statistics.median(x[key] for x in by_mode["fork"])
            b = statistics.median(x[key] for x in by_mode["no-fork"])
            print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
