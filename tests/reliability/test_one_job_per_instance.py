"""One job per instance at a time, and a fresh home's stores created by one job at a time
(issue 12, item 4): a second job on a busy instance says which job holds it and exits 2; two
jobs starting together on a fresh home both run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import optuna
import pytest
from conftest import invoke_cli, start_cli, trial_processes, wait_for
from optuna.trial import TrialState

from tuners.study import JOURNAL, storage_of

FAST = ["--set-workload", "duration=0", "--verify-repeats", "2", "--no-train"]


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_a_second_job_on_a_busy_instance_is_refused_and_the_first_goes_on(
    prefect_api: str, home: Path
) -> None:
    first = start_cli(["tune", "synthetic", "--instance", "kv", "--budget", "200", "--home",
                       str(home), "--set-workload", "duration=0.5", "--no-train"], prefect_api)
    try:
        wait_for(lambda: trial_processes(str(home)), "the first job's first trial", timeout=120)
        second = invoke_cli(["tune", "synthetic", "--instance", "kv", "--budget", "2",
                             "--home", str(home), *FAST])
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.strip() == (
            "knobflow: error: instance 'kv' of service 'synthetic' is in use by a job of "
            f"process {first.pid} (since " + second.stderr.split("(since ")[1].split(")")[0]
            + "); wait for it to end, or tune another --instance")
        jobs = list((home / "jobs").glob("*/job.json"))
        assert len(jobs) == 1, "the refused job left a record behind"
        assert first.poll() is None, "the first job was disturbed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # a job that died lets its instance go: the next one runs
    wait_for(lambda: not trial_processes(str(home)), "the killed job's trial to end", timeout=30)
    third = invoke_cli(["tune", "synthetic", "--instance", "kv", "--budget", "2", "--home",
                        str(home), *FAST, "--json"])
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["n_trials"] == 2


def test_two_jobs_starting_together_on_a_fresh_home_both_run(
    prefect_api: str, home: Path
) -> None:
    jobs = [start_cli(["tune", "synthetic", "--instance", name, "--budget", "3", "--home",
                       str(home), *FAST, "--json"], prefect_api) for name in ("a", "b")]
    summaries = []
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
        summaries.append(json.loads(out))
        assert summaries[-1]["n_trials"] == 3
    # both jobs wrote, at the same time, to the home's one Optuna journal (optuna-dashboard
    # shows them together), and each kept its own trials
    storage = storage_of(home / JOURNAL)
    assert sorted(optuna.get_all_study_names(storage)) == sorted(
        s["study_name"] for s in summaries)
    assert not (home / "studies").exists()
    for summary in summaries:
        study = optuna.load_study(study_name=summary["study_name"], storage=storage)
        assert study.metric_names == ["throughput"]
        ran = [t for t in study.trials if t.state.is_finished() and t.state != TrialState.PRUNED]
        assert len(ran) == 3
