"""Continual tuning end to end, through a real Prefect server: ``knobflow serve`` serves the
deployments of prefect.yaml, a watch run sees a live synthetic instance's workload change and emits
the drift event, the re-tune deployment's trigger (a Prefect automation) starts the re-tune, which
tunes the service for the observed workload, registers a model and applies the recommendation;
the instance ends on an applied, verified (kept) config. Each flow run is forked from the fork
server ``knobflow serve`` started (``flows.serve_fork``), not a new interpreter. ``knobflow serve``
stops on SIGINT with nothing left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.tracking import MlflowClient

from flows.lifeline import WATCHDOG
from flows.server import api_client
from tasks.instances import InstanceStore
from tests.conftest import CLI, REPO, invoke_cli, wait_for
from tests.flows.test_live_apply import history, start_instance


def flow_runs(env: dict[str, str], deployment: str) -> list[Any]:
    """The flow runs of ``deployment`` (flow/name), newest first."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with api_client(env) as api:
        runs = api.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[deployment.split("/")[1]])))
    return sorted(runs, key=lambda r: r.created, reverse=True)


def start_serve(home: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``knobflow serve`` in the background with exactly the environment ``env``."""
    proc = subprocess.Popen(
        [*CLI, "serve", "--home", str(home), *args], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    return proc


def wait_serving(proc: subprocess.Popen[str], timeout: float = 480) -> str:
    """The serve process's output up to its 'serving' line."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail("knobflow serve exited:\n" + "".join(seen))
        seen.append(line)
        if line.startswith("serving "):
            return "".join(seen)
    pytest.fail("knobflow serve did not start serving:\n" + "".join(seen))


def stop_serve(proc: subprocess.Popen[str]) -> tuple[int, str, list[psutil.Process]]:
    """SIGINT, as Ctrl-C; its exit code, the rest of its output, and what it left running."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)  # the runner pauses its deployments first
    psutil.wait_procs(tree, timeout=60)
    return proc.returncode, rest, [p for p in tree if p.is_running()
                                   and p.status() != psutil.STATUS_ZOMBIE]


def fork_server(serve: subprocess.Popen[str]) -> psutil.Process:
    """The fork server ``knobflow serve`` started (``flows.serve_fork``), which has loaded
    knobflow and what a job imports."""
    found = [p for p in psutil.Process(serve.pid).children()
             if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    assert len(found) == 1, [p.cmdline() for p in psutil.Process(serve.pid).children()]
    preload = " ".join(found[0].cmdline())
    assert all(f"'{m}'" in preload for m in ("flows.tune", "tasks.gate", "great_expectations"))
    return found[0]


def reaped_cpu(parent: psutil.Process) -> float:
    """CPU seconds of the children ``parent`` has waited for, once its running ones, other than
    the servers, the server's lifeline watchdog and multiprocessing's helpers, have ended (a
    run's process ends just after its state)."""
    def running(child: psutil.Process) -> bool:
        try:
            command = child.cmdline()
            return child.status() != psutil.STATUS_ZOMBIE and WATCHDOG not in command and not any(
                w in " ".join(command) for w in ("prefect server", "multiprocessing."))
        except psutil.NoSuchProcess:  # ended meanwhile
            return False

    def busy() -> list[psutil.Process]:
        return [c for c in parent.children() if running(c)]

    wait_for(lambda: not busy(), lambda: f"the flow runs' processes to end: {busy()}",
             timeout=60)
    times = parent.cpu_times()
    return times.children_user + times.children_system


def prefect(env: dict[str, str], *args: str, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    """The Prefect CLI, as an operator or CI would run it."""
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def own_server_env(home: Path) -> dict[str, str]:
    """The client environment of the Prefect server ``knobflow serve`` started under ``home``."""
    server = json.loads((home / "prefect-server" / "server.json").read_text())
    assert server["url"].startswith("http://127.0.0.1:")
    auth = home / "prefect-server" / "auth"
    assert auth.stat().st_mode & 0o777 == 0o600
    return {"PREFECT_API_URL": server["url"], "PREFECT_API_AUTH_STRING": auth.read_text().strip()}


def check_served(shown: str, env: dict[str, str]) -> None:
    """What ``knobflow serve`` listed, and what it put on the server: the synthetic target's
    deployments with their schedules, the re-tune's trigger as an automation; the server
    admits knobflow only."""
    for name in ("tune/synthetic-nightly", "watch/synthetic-watch", "retune/synthetic-on-drift",
                 "recommend/synthetic-recommend", "apply/synthetic-apply"):
        assert name in shown
    assert "every 300 s" in shown and "cron 30 4 * * * UTC" in shown
    assert "on knobflow.drift.detected" in shown
    wanted = {"synthetic-nightly", "synthetic-watch", "synthetic-on-drift"}

    def served() -> tuple[dict[str, Any], list[Any]] | None:
        with api_client(env) as api:  # the runner registers them after serve says "serving"
            deployments = {d.name: d for d in api.read_deployments()}
            automations = api.read_automations()
        done = wanted <= set(deployments) and any("synthetic-on-drift" in a.name
                                                  for a in automations)
        return (deployments, automations) if done else None

    deployments, automations = wait_for(served, "the served deployments and the re-tune's "
                                        "automation on the server", timeout=120, interval=1)
    assert {"synthetic-nightly", "synthetic-watch", "synthetic-on-drift"} <= set(deployments)
    assert deployments["synthetic-watch"].schedules[0].schedule.interval.total_seconds() == 300
    assert any("synthetic-on-drift" in a.name for a in automations)
    outsider = prefect({**env, "PREFECT_API_AUTH_STRING": "knobflow:wrong"}, "deployment",
                       "ls", timeout=120)
    assert outsider.returncode != 0


def test_a_workload_change_is_detected_retuned_and_applied_through_prefect(home: Path) -> None:
    """The loop closes through Prefect's automations, not a loop of knobflow's own: ``knobflow
    serve`` (its own server: no PREFECT_API_URL), a watch run that records the reference, the
    workload change, a watch run that emits the drift event, the re-tune its trigger starts
    (tune, then the canary apply); SIGINT stops the runner and the server, nothing is left."""
    instance = start_instance(home, "syn-1", service="syn", workload={"shift": 0.1})
    try:
        # all six knobs per actuation: the re-tune's best measured config is applied whole. With
        # three, the champion picks which three, and a pick of threads without the mode it suits
        # can be worse (CI once: rolled back); that choice is test_recommend's, not this loop's
        policy = invoke_cli(["instance", "policy", "syn-1", "windows=3", "window_s=0.6",
                             "max_knobs=6", "--home", str(home)])
        assert policy.returncode == 0, policy.stderr
        serve = start_serve(home, {k: v for k, v in os.environ.items()
                                   if not k.startswith("PREFECT_API")}, "--target", "synthetic")
        try:
            shown = wait_serving(serve)
            assert "each flow run forked from a process that has loaded knobflow" in shown
            forks = fork_server(serve)
            env = own_server_env(home)
            check_served(shown, env)
            before = {"fork server": reaped_cpu(forks),
                      "serve": reaped_cpu(psutil.Process(serve.pid))}
            first = prefect(env, "deployment", "run", "watch/synthetic-watch", "--watch")
            assert first.returncode == 0, first.stdout + first.stderr
            changed = invoke_cli(["instance", "workload", "syn-1", "shift=0.9",
                                  "--home", str(home)])
            assert changed.returncode == 0, changed.stderr
            began = time.monotonic()
            second = prefect(env, "deployment", "run", "watch/synthetic-watch", "--watch")
            assert second.returncode == 0, second.stdout + second.stderr
            drift = [json.loads(line) for line in
                     (InstanceStore(home).dir("syn-1") / "drift.jsonl").read_text().splitlines()]
            assert drift[-1]["drifted"] and drift[-1]["event"], drift[-1]
            retune = wait_for(lambda: [r for r in flow_runs(env, "retune/synthetic-on-drift")
                                       if r.state and r.state.is_final()],
                              "the re-tune the drift event triggers", timeout=900, interval=2)
            print(f"workload change to applied config: {time.monotonic() - began:.0f} s")
            reaped = {"fork server": reaped_cpu(forks) - before["fork server"],
                      "serve": reaped_cpu(psutil.Process(serve.pid)) - before["serve"]}
        finally:
            code, rest, left = stop_serve(serve)
        # the three runs were forks of the fork server, which reaped them; serve reaped none
        assert reaped["fork server"] > 0 and reaped["serve"] == 0, reaped
        assert code == 0 and "knobflow serve: stopped" in rest, rest
        assert not left, [p.cmdline() for p in left]
        assert not (home / "prefect-server" / "server.json").exists()
        assert retune[0].state.is_completed(), retune[0].state
        assert retune[0].parameters["instance"] == "syn-1"
        assert abs(retune[0].parameters["workload"]["shift"] - 0.9) < 0.1
        acts = history(home, "syn-1")
        log = (InstanceStore(home).dir("syn-1") / "actuations.jsonl").read_text()
        decided = [line for line in log.splitlines() if '"decided"' in line]
        assert acts[-1]["outcome"] == "kept" and acts[-1]["knobs"] != "0", (acts[-1], decided)
        assert "kept" in json.loads(
            (InstanceStore(home).dir("syn-1") / "reference.json").read_text())["source"]
        models = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_model_versions()
        assert models, "the re-tune registered no model"
    finally:
        from targets.live_daemon import stop_launched

        stop_launched(Path(str(instance.data_dir)))
