"""A job on a noisy machine notices it: the default runs 3 times before the search (not counted in
the budget), a spread above 10 % switches on repeats and baselines, and the job says so in its
summary, its record and its MLflow run; a quiet machine changes nothing; what a user gave stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke_cli
from mlflow.tracking import MlflowClient

from tasks.noise import spread

# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")

FAST = ["--set-workload", "duration=0", "--set-workload", "intervals=1", "--budget", "3",
        "--verify-repeats", "2", "--no-train", "--no-learned-rules"]


def _job(home: Path, args: list[str]) -> tuple[str, dict, dict]:
    """Run ``knobflow tune synthetic ARGS``; its printed text (spaces folded), result, record."""
    done = invoke_cli(["tune", "synthetic", "--home", str(home), *FAST, *args])
    assert done.returncode == 0, done.stdout + done.stderr
    (job_dir,) = (home / "jobs").iterdir()
    result = json.loads((job_dir / "result.json").read_text())
    record = json.loads((job_dir / "job.json").read_text())
    return " ".join(done.stdout.split()), result, record


def _runs(home: Path, parent: str, phase: str) -> list:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("knobflow/synthetic")
    return client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent}' and tags.`knobflow.phase` = '{phase}'"))


def test_a_noisy_machine_switches_on_repeats_and_says_so(prefect_api: str, home: Path) -> None:
    text, result, record = _job(home, ["--set-workload", "noise=0.5"])
    values = result["noise"]["values"]
    assert len(values) == 3 and spread(values) > 0.1
    message = (f"noisy machine: default varied {100 * spread(values):.0f} % over 3 runs; "
               "repeating each trial 2x and the default every 5 trials")
    assert result["noise"]["message"] == message
    assert message in text
    assert (record["repeats"], record["baseline_every"]) == (2, 5)  # kept for --resume
    assert result["n_trials"] == 3  # the default's 3 runs are not trials of the budget
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.data.tags["knobflow.noise"] == message
    assert (parent.data.params["repeats"], parent.data.params["baseline_every"]) == ("2", "5")
    assert parent.data.params["noise.runs"] == "3"
    assert len(_runs(home, result["mlflow_run_id"], "noise")) == 3
    trial_dirs = {p.name for p in (home / "jobs" / result["study_name"] / "trials").iterdir()}
    assert {"0", "0.r1"} <= trial_dirs  # trial 0 ran twice
    assert "verification stopped: " + result["verify_stop"] in text


def test_a_quiet_machine_changes_nothing(prefect_api: str, home: Path) -> None:
    text, result, record = _job(home, ["--set-workload", "noise=0"])
    message = ("quiet machine: default varied 0 % over 3 runs (threshold 10 %); each trial "
               "runs once")
    assert result["noise"]["message"] == message and message in text
    assert (record["repeats"], record["baseline_every"]) == (1, 0)


@pytest.mark.parametrize("given", [["--repeats", "1"], ["--repeats", "1", "--baseline-every",
                                                         "0"]])
def test_explicit_repeats_are_kept(prefect_api: str, home: Path, given: list[str]) -> None:
    text, result, record = _job(home, ["--set-workload", "noise=0.5", *given])
    varied = f"default varied {100 * spread(result['noise']['values']):.0f} % over 3 runs"
    if len(given) == 4:
        message = (f"noisy machine: {varied}; keeping --repeats 1 and --baseline-every 0 as "
                   "given")
        assert (record["repeats"], record["baseline_every"]) == (1, 0)
    else:
        message = (f"noisy machine: {varied}; repeating the default every 5 trials "
                   "(--repeats 1 as given)")
        assert (record["repeats"], record["baseline_every"]) == (1, 5)
    assert result["noise"]["message"] == message and message in text


def test_no_noise_check_when_turned_off(prefect_api: str, home: Path) -> None:
    text, result, record = _job(home, ["--set-workload", "noise=0.5", "--noise-runs", "0"])
    assert result["noise"] is None and "machine:" not in text
    assert (record["repeats"], record["baseline_every"]) == (1, 0)
    assert _runs(home, result["mlflow_run_id"], "noise") == []


def test_a_resumed_job_keeps_what_its_noise_check_decided(home: Path) -> None:
    from flows.job import Job
    from flows.spec import JobSpec
    from flows.tune import _probe_noise

    job = Job.create(JobSpec.of(target="synthetic"), home)
    assert (job.noise_runs, job.noise_free) == (3, ["repeats", "baseline_every"])
    job.noise, job.repeats, job.baseline_every = {"message": "noisy machine: ..."}, 2, 5
    runner = job.trial_runner()
    # no run, no MLflow write: the job already measured its noise before it was killed
    assert _probe_noise(job, None, runner, tracker=None,  # type: ignore[arg-type]
                        logger=None) == {}
    assert runner.policy.repeats == 2 and not list((home / "jobs").glob("*/trials"))


def test_the_bar_says_when_the_tuner_is_told_ratios() -> None:
    from rich.console import Console

    from flows.progress import TuneProgress
    from tasks.explore import ExploreStats
    from tuners.trials import TrialOutcome, TrialStatus

    console = Console(record=True, width=200, force_terminal=False)
    outcome = TrialOutcome(config={}, instance="i", status=TrialStatus.OK, value=1.25,
                           baseline_value=800.0)
    with TuneProgress(console, "synthetic/local") as bar:
        bar.objective = "throughput"
        bar.trial_done("1", outcome, ExploreStats(budget=3, done=1, best_value=1.25))
        status = bar.progress.tasks[bar.explore_task].fields["status"]
    assert status == "failed 0 · blocked 0 · best trial 1.25x the default"
