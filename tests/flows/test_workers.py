"""``knobflow tune --workers N``: one study on the shared stack, explored by 3 Prefect workers.

One worker's flow-run process (and its trial process) is killed with SIGKILL mid-trial: the
study still completes its budget, every finished trial is stored once, the killed trial is failed
by heartbeat and its config retried by another worker, and MLflow has a child run of the job's
run for every finished trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.conftest import CLI, REPO, SharedStack, run_cli, trial_processes, wait_for

BUDGET = 12
#: Heartbeats every second; a trial without one for 6 s is dead (a loaded machine: not less).
HEARTBEAT = {"KNOBFLOW_OPTUNA_HEARTBEAT_S": "1", "KNOBFLOW_OPTUNA_GRACE_S": "6"}


def test_workers_refused_without_the_shared_stack(home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KNOBFLOW_CONFIG", "KNOBFLOW_OPTUNA_STORAGE", "PREFECT_API_URL"):
        monkeypatch.delenv(key, raising=False)
    done = run_cli(["tune", "synthetic", "--workers", "2", "--budget", "3", "--home", str(home)],
                   timeout=120)
    assert done.returncode != 0
    assert "--workers 2" in done.stderr and "infra/stack start" in done.stderr
    assert "eval $(infra/stack env)" in done.stderr


def _killed_trial(worker_home: Path) -> int:
    """SIGKILL one worker's flow-run process and its trial process mid-trial; the trial's
    number."""
    def running_trial() -> list[tuple[int, int, int]]:
        found = []
        for pid in trial_processes(str(worker_home)):
            with contextlib.suppress(psutil.Error):
                cmd = psutil.Process(pid).cmdline()
                if time.time() - psutil.Process(pid).create_time() > 0.2:  # under way
                    found.append((pid, int(cmd[-1]), int(Path(cmd[-2]).parent.name)))
        return found

    pid, flow_run_pid, number = wait_for(running_trial, "a worker's trial", timeout=150,
                                         interval=0.05)[0]
    os.kill(flow_run_pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    return number


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_three_workers_one_study_one_killed(shared_stack: SharedStack, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    began = time.monotonic()
    worker_home = tmp_path / "worker-home"
    env = {**HEARTBEAT, "PYTHONPATH": str(REPO), "KNOBFLOW_HOME": str(worker_home),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    workers = shared_stack.stack.start_workers(3, env_extra=env, cwd=REPO)
    print(f"workers up: {time.monotonic() - began:.0f} s", file=sys.stderr)
    job = None
    try:
        job = subprocess.Popen(
            [*CLI, "tune", "synthetic", "--workers", "3",
             "--budget", str(BUDGET), "--set-workload", "duration=1",
             "--set-workload", "noise=0", "--noise-runs", "0", "--no-train", "--verify-repeats",
             "2", "--home", str(tmp_path / "job-home"), "--json"],
            cwd=REPO, env={**os.environ, **shared_stack, **HEARTBEAT}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        killed = _killed_trial(worker_home)
        print(f"trial {killed} killed: {time.monotonic() - began:.0f} s", file=sys.stderr)
        out, err = job.communicate(timeout=240)
        assert job.returncode == 0, err[-3000:]
    finally:
        if job is not None and job.poll() is None:
            job.kill()
            job.communicate()
        shared_stack.stack.stop_workers([w.pid for w in workers])
    summary = json.loads(out.strip().splitlines()[-1])

    monkeypatch.setenv("KNOBFLOW_CONFIG", shared_stack["KNOBFLOW_CONFIG"])
    from tuners.study import shared_storage_url
    from tuners.trials import finished_trials

    url = shared_storage_url()
    assert url is not None
    study = optuna.load_study(study_name=summary["study_name"], storage=url)
    finished = finished_trials(study)
    assert len(finished) == BUDGET  # the budget, no more, no less
    assert len({t.number for t in study.trials}) == len(study.trials)
    dead = study.trials[killed]
    assert dead.state == TrialState.FAIL
    retries = [t for t in study.trials
               if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1 and retries[0] in finished
    assert retries[0].params == dead.params
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = Counter(RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in finished)
    assert all(n == 1 for k, n in retried.items() if k is not None)  # each retried once
    by_worker = Counter(t.user_attrs["knobflow"]["instance"] for t in finished)
    assert len(by_worker) >= 2, by_worker  # the killed one may have finished none

    from mlflow.tracking import MlflowClient

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, shared_stack[key])
    client = MlflowClient(tracking_uri=shared_stack["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("knobflow/synthetic")
    runs = client.search_runs(
        [experiment.experiment_id], max_results=1000,
        filter_string=f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}' "
        "and tags.`knobflow.phase` = 'explore'")
    logged = Counter(r.data.tags["knobflow.trial"] for r in runs)
    assert set(logged) == {str(t.number) for t in finished}
    assert max(logged.values()) == 1
    print(f"3 workers, {BUDGET} trials, trial {killed} killed and retried as trial "
          f"{retries[0].number}: {time.monotonic() - began:.0f} s")
