"""A killed job leaves nothing running and loses nothing (issue 12, items 5 and 9).

* SIGKILL of the CLI at 10 random moments (seeded) of a SQLite job: after each, nothing the job
  started runs 2 s later, and ``--resume`` goes on; at the end every finished trial is kept once.
* SIGKILL of a CLI that started its own Prefect server, while a PostgreSQL trial measures: the
  server, PostgreSQL and its shared memory, socket and lock files are gone within 2 s.
* A kill during training or verification: the resumed job closes the runs the killed one left
  open, and keeps the verification runs that finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
from conftest import (
    CLI,
    JobProcesses,
    invoke_cli,
    require,
    running,
    start_cli,
    wait_for,
)
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tuners.study import open_study, study_names

#: (no training after the last resume: the test checks the trials and their runs, not models)
SQLITE = ["--set-workload", "rows=3000", "--set-workload", "ops=3000", "--verify-repeats", "2",
          "--no-train"]
GONE_WITHIN = 2.0  # seconds after the kill


def _job(home: Path) -> dict | None:
    records = list((home / "jobs").glob("*/job.json")) if (home / "jobs").exists() else []
    return json.loads(records[0].read_text()) if records else None


def _finished(home: Path) -> dict[int, tuple[dict, float | None]]:
    job = _job(home)
    if job is None or job["study_name"] not in study_names(home):
        return {}
    try:
        study = open_study(home, job["study_name"], job["direction"],
                           optuna.samplers.RandomSampler(), create=False)
    except KeyError:  # the journal exists, the study is not in it yet
        return {}
    return {t.number: (t.params, t.value) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL) and "knobflow" in t.user_attrs}


def _kill_and_check(proc: subprocess.Popen[str], seen: JobProcesses) -> None:
    """SIGKILL the CLI; within ``GONE_WITHIN`` s no process of its job may be running."""
    seen.record()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed = time.monotonic()
    seen.record()
    while time.monotonic() - killed < GONE_WITHIN:
        alive = [p for p in seen.seen if running(p)]
        if not alive:
            return
        time.sleep(0.05)
    alive = {p.pid: seen.seen[p] for p in seen.seen if running(p)}
    for pid in alive:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    pytest.fail(f"{GONE_WITHIN:g} s after the kill these still ran: {alive}")


def test_ten_random_kills_of_a_sqlite_job_lose_nothing_and_leave_nothing(
    prefect_api: str, home: Path
) -> None:
    rng = random.Random(20261201)
    # 1000 trials outlast ten kills, each at most 9 s after its start, on any machine (40 did
    # not on a fast one: the job ended before kill 4); the last resume sets a budget just above
    # what the kills left, so that it has trials to run and ends soon
    base = ["tune", "sqlite", "--budget", "1000", "--home", str(home), *SQLITE]
    kept: dict[int, tuple[dict, float | None]] = {}
    for kill in range(10):
        resume = ["tune", "sqlite", "--resume", "--home", str(home)]
        fresh = _job(home) is None
        proc = start_cli(base if fresh else resume, prefect_api)
        seen = JobProcesses(proc.pid, home)
        if fresh:  # a loaded machine can take longer than 9 s to record the job: the first
            # kill comes after the record, or no kill would leave anything to resume
            wait_for(lambda p=proc: _job(home) is not None or p.poll() is not None,
                     "the job's record", timeout=180)
        moment = time.monotonic() + rng.uniform(0.5, 9.0)
        while time.monotonic() < moment and proc.poll() is None:
            seen.record()
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before kill {kill}: {proc.stderr.read()}"
        _kill_and_check(proc, seen)
        now = _finished(home)
        assert all(now.get(n) == v for n, v in kept.items()), f"kill {kill} lost trials"
        kept = now
    # in this process: the kills were of processes of their own, the last resume need not be
    budget = len(kept) + 3  # kept: at least the trials that count against the budget
    final = invoke_cli(["tune", "sqlite", "--resume", "--budget", str(budget), "--home",
                        str(home), "--json"])
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    study = _finished(home)
    assert all(study.get(n) == v for n, v in kept.items()), "the resume lost trials"
    table = pd.read_parquet(summary["trial_table"])
    assert len(table) == summary["n_trials"] == budget
    assert table["trial"].is_unique, "a trial is in the table twice"
    client = _client(home)
    runs = _children(client, summary["mlflow_run_id"])
    explore = [r.data.tags["knobflow.trial"] for r in runs
               if r.data.tags["knobflow.phase"] == "explore"]
    assert len(explore) == len(set(explore)), "a trial was logged twice"
    assert not [r for r in runs if r.info.status == "RUNNING"], "runs left open"


def _client(home: Path) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _children(client: MlflowClient, parent: str) -> list:
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              max_results=5000)


def test_a_killed_cli_takes_its_prefect_server_and_postgres_with_it(home: Path) -> None:
    from targets import postgres_cluster as pgc

    require("postgres", [] if pgc.find_bindir() else ["PostgreSQL's binaries"])
    shm_before = set(Path("/dev/shm").glob("PostgreSQL.*"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own server
    proc = subprocess.Popen(
        [*CLI, "tune", "postgres", "--budget", "5", "--home",
         str(home), "--set-workload", "scale=1", "--set-workload", "duration=20"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    seen = JobProcesses(proc.pid, home)
    try:
        wait_for(lambda: {"postgres", "pgbench"} <= {seen.seen.get(p) for p in seen.record()},
                 "pgbench running against the trial's PostgreSQL", timeout=240)
        server = [p for p in seen.seen if "uvicorn" in " ".join(_cmdline(p))]
        assert server, "the CLI started no Prefect server of its own"
        _kill_and_check(proc, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
    data = home / "instances" / "postgres" / "local"
    left = [p for p in data.rglob("*") if p.name == "postmaster.pid" or p.name.startswith(
        ".s.PGSQL.")]
    assert not left, f"files of the killed server left behind: {left}"
    assert not set(Path("/dev/shm").glob("PostgreSQL.*")) - shm_before, "shared memory left"


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _running_model_runs(home: Path) -> list:
    client = _client(home)
    exp = client.get_experiment_by_name("knobflow/synthetic/models")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id],
                              filter_string="attributes.status = 'RUNNING'")


#: The synthetic target without its crash and hang regions: every trial is clean, so the job
#: has enough rows to train on.
CLEAN_SPACE = {"knobs": {"x": None, "y": {"range": [0.001, 100.0]}, "threads": None,
                         "buffer_kb": None}, "fixed": {"mode": "alpha", "compress": False}}


@pytest.mark.parametrize("phase", ["training", "verification"])
def test_a_job_killed_in_training_or_verification_is_resumed_cleanly(
    prefect_api: str, mlflow_store: Path, home: Path, tmp_path: Path, phase: str
) -> None:
    # the store made once per session (tests/conftest.py): the kill comes long after the job
    # made its store; no noise check (three runs of the default nothing here looks at); 14
    # trials give training its 12 clean rows, a kill in verification needs a best and a default
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps(CLEAN_SPACE))  # JSON is YAML
    budget = "14" if phase == "training" else "6"
    args = ["tune", "synthetic", "--budget", budget, "--home", str(home), "--set-workload",
            "duration=0", "--verify-repeats", "3", "--noise-runs", "0", "--space", str(space)]
    proc = start_cli(args, prefect_api)
    try:
        if phase == "training":
            wait_for(lambda: _running_model_runs(home), "a model run to start", timeout=240)
        else:
            wait_for(lambda: list((home / "jobs").glob("*/verify.json")),
                     "the first verification run to end", timeout=240, interval=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = json.loads(next((home / "jobs").glob("*/verify.json")).read_text())["runs"] \
        if phase == "verification" else {}
    # in this process: the killed one was a process of its own, the resumed one need not be
    resumed = invoke_cli(["tune", "synthetic", "--resume", "--home", str(home), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert not _running_model_runs(home), "the killed job's model runs are still RUNNING"
    runs = _children(_client(home), summary["mlflow_run_id"])
    verify = [r.data.tags["mlflow.runName"] for r in runs
              if r.data.tags["knobflow.phase"] == "verify"]
    assert len(verify) == len(set(verify)) <= 6, f"verification ran twice: {verify}"
    assert summary["verify_repeats"] == 3
    if kept:  # what finished before the kill was kept, not measured again
        again = json.loads(next((home / "jobs").glob("*/verify.json")).read_text())["runs"]
        assert all(again[k] == v for k, v in kept.items())
