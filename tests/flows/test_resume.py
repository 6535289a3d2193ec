"""A tuning job killed with SIGKILL continues with --resume and keeps every finished trial."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import invoke_cli, start_cli, trial_processes, wait_for
from optuna.trial import TrialState

from tuners.study import open_study, study_names

# a store made once per session (tests/conftest.py): the kills below come long after a job
# made its store; these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")
#: What these tests do not look at, left out of their jobs: the noise check, more than two
#: pairs of verification, training the service's models.
LEAN = ["--noise-runs", "0", "--verify-repeats", "2", "--no-train"]


def _study(home: Path) -> optuna.Study | None:
    names = study_names(home)  # the studies in the home's one Optuna journal
    if not names:
        return None
    return open_study(home, names[0], "maximize", optuna.samplers.RandomSampler(), create=False)


def test_sigkill_then_resume_keeps_every_finished_trial(prefect_api: str, home: Path) -> None:
    args = [
        "tune",
        "synthetic",
        "--budget",
        "16",
        "--seed",
        "4",
        "--home",
        str(home),
        "--set-workload",
        "duration=0.3",
        "--json",
        *LEAN,
    ]
    proc = start_cli(args, prefect_api)
    deadline = time.monotonic() + 180
    before: dict[int, tuple[dict, float | None]] = {}
    while time.monotonic() < deadline:
        study = _study(home)
        if study is not None:
            done = [t for t in study.trials if t.state == TrialState.COMPLETE]
            if len(done) >= 6:
                break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("the job did not finish 6 trials in time")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    study = _study(home)
    before = {t.number: (t.params, t.value) for t in study.trials if t.state.is_finished()}
    # the 6th completes as the 10th trial ends (4 others failed or were blocked): the kill comes
    # within a poll of it, long before 16 have run (each lasts 0.3 s)
    assert 6 <= len(before) < 16

    # the orphaned trial notices its parent died within 0.25 s and kills its process group
    wait_for(lambda: not trial_processes(str(home)),
             "the trial processes to end after the tuner was killed (did one outlive it?)")

    resumed = invoke_cli(["tune", "synthetic", "--resume", "--home", str(home), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["n_trials"] == 16

    study = _study(home)
    after = {t.number: (t.params, t.value) for t in study.trials}
    for number, (params, value) in before.items():
        assert after[number] == (params, value), f"trial {number} changed after --resume"

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
        "and tags.`knobflow.phase` = 'explore'",
        max_results=1000,
    )
    logged = sorted(int(r.data.tags["knobflow.trial"]) for r in runs)
    assert len(logged) == len(set(logged)), "a trial was logged twice"
    # every trial counted in the summary has its child run, including those the kill cut short
    assert len(logged) == 16


def test_resume_without_a_job_is_bad_input(home: Path) -> None:
    result = invoke_cli(["tune", "synthetic", "--resume", "--home", str(home)])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"knobflow: error: --resume: no job of target 'synthetic' on instance 'local' under "
        f"{home}; start one without --resume"
    ]


def test_sigterm_stops_the_job_and_resume_finishes_it(prefect_api: str, home: Path) -> None:
    # 8 trials of 0.5 s each (seed 2: the first 3 complete): 5 are left when SIGTERM comes
    args = [
        "tune",
        "synthetic",
        "--budget",
        "8",
        "--seed",
        "2",
        "--home",
        str(home),
        "--set-workload",
        "duration=0.5",
        *LEAN,
    ]
    proc = start_cli(args, prefect_api)

    def three_done() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        study = _study(home)
        return bool(study and sum(t.state == TrialState.COMPLETE for t in study.trials) >= 3)

    try:
        wait_for(three_done, "the job to finish 3 trials", timeout=120, interval=0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; finished trials are kept (continue with --resume)" in stderr
    job = json.loads(next((home / "jobs").glob("*/job.json")).read_text())
    assert job["status"] == "interrupted"
    assert trial_processes(str(home)) == []

    resumed = invoke_cli(["tune", "synthetic", "--resume", "--home", str(home), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["n_trials"] == 8


@pytest.mark.parametrize(("task_name", "nth"), [("transfer-from-siblings", 1), ("run-trial", 2)])
def test_an_interrupt_as_prefect_creates_a_task_run_stops_the_job_as_interrupted(
        prefect_api: str, home: Path, monkeypatch: pytest.MonkeyPatch, task_name: str,
        nth: int) -> None:
    """Prefect's task engine, interrupted while it creates a task run, raises ``ValueError:
    Task run is not set`` from its crash handler in the interrupt's place (a warm job stopped
    4 s in, under load, in CI): the command says interrupted (130), not failed, and --resume
    finishes the job. The interrupt comes before the job's trials (transfer) and in them."""
    import prefect.task_engine as engine

    create = engine._create_task_run_locally
    calls: list[str] = []

    def interrupted(*args: object, task: object, **kwargs: object) -> object:
        calls.append(task.name)  # type: ignore[attr-defined]
        if task.name == task_name and calls.count(task_name) == nth:  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        return create(*args, task=task, **kwargs)

    monkeypatch.setattr(engine, "_create_task_run_locally", interrupted)
    args = ["tune", "synthetic", "--budget", "4", "--seed", "1", "--home", str(home),
            "--set-workload", "duration=0", "--json", *LEAN]
    first = invoke_cli(args)
    assert calls.count(task_name) == nth, calls
    assert first.returncode == 130, first.stderr
    assert "interrupted; finished trials are kept (continue with --resume)" in first.stderr
    assert "knobflow: failed" not in first.stderr
    monkeypatch.undo()
    # before the trials (transfer) as in them: recorded as interrupted (it was left "running")
    job = json.loads(next((home / "jobs").glob("*/job.json")).read_text())
    assert job["status"] == "interrupted"
    resumed = invoke_cli(["tune", "synthetic", "--resume", "--home", str(home), "--json"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["n_trials"] == 4
