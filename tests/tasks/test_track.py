"""The MLflow runs of a tuning job follow MLflow's conventions: experiments and runs describe
themselves (``mlflow.note.content``), carry MLflow's source and git tags, a trial's child run spans
the trial's real start and end, and the parent run names the Prefect flow run that ran it (a real
MLflow store in ``tmp_path``; the Prefect test harness for the flow run)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow

from targets.base import FailureClass
from tasks.track import FLOW_RUN_TAG, JobTracker, start_tracking, tag_flow_run
from tests.tasks.test_train import git_commit
from tuners.trials import TrialOutcome, TrialStatus

NOTE = "mlflow.note.content"


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, mlflow_template: Path) -> None:
    """Every test here tracks into ``tmp_path``: a store made once per session (tests/
    conftest.py) is copied there; these tests are not about making one."""
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=_uri(tmp_path), registry_uri=_uri(tmp_path))


def _outcome(started: float, finished: float) -> TrialOutcome:
    return TrialOutcome(config={"x": 0.5}, instance="kv-1", status=TrialStatus.OK, value=12.5,
                        metrics={"throughput": 12.5}, effective_config={"x": 0.5},
                        started_at=started, finished_at=finished, elapsed_s=finished - started)


def test_a_trial_child_run_spans_the_trial_not_the_time_it_was_logged(tmp_path: Path) -> None:
    tracker = JobTracker(_uri(tmp_path), "knobflow/synthetic", tmp_path / "artifacts")
    parent = tracker.start_job("job-1", params={"target": "synthetic"}, tags={}, note="a job")
    started = time.time() - 3600.1234  # an hour ago, logged only now
    record = _outcome(started, started + 42.5678).record()
    tracker.log_trial("7", record)
    tracker.log_trial("8", {**record, "started_at": None, "finished_at": None})  # never timed
    tracker.close()
    client = _client(tmp_path)
    runs = {r.data.tags["knobflow.trial"]: r for r in client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")}
    run = runs["7"]
    assert abs(run.info.start_time - started * 1000) <= 1
    assert abs(run.info.end_time - (started + 42.5678) * 1000) <= 1
    assert run.info.status == "FINISHED"
    # the metrics are stamped with the trial's end, too
    history = client.get_metric_history(run.info.run_id, "throughput")
    assert [m.timestamp for m in history] == [run.info.end_time]
    assert run.data.tags[NOTE] == ("explore trial 7 on instance kv-1: measured 12.5. Knobs the "
                                   "system changed on its own: none.")
    untimed = runs["8"].info
    assert untimed.end_time >= untimed.start_time >= round(started * 1000) + 3_000_000


def test_experiments_and_runs_describe_themselves_and_name_their_source(tmp_path: Path) -> None:
    rules = tmp_path / "mine.yaml"
    rules.write_text("target: synthetic\nrules: []\n")
    tracker = JobTracker(_uri(tmp_path), "knobflow/synthetic", tmp_path / "artifacts")
    run_id = tracker.start_job("job-1", params={"policies": "durability"}, tags={"k": "v"},
                               note="knobflow tune synthetic", rule_files=[rules])
    tracker.log_trial("0", _outcome(time.time() - 2, time.time()).record())
    tracker.close()
    client = _client(tmp_path)
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags[NOTE].startswith("knobflow tuning jobs (knobflow/synthetic): one parent "
                                     "run per `knobflow tune` job")
    parent = client.get_run(run_id)
    commit = git_commit()
    children = client.search_runs([tracker.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    for run in (parent, *children):
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "flows/tune.py"
        assert tags["mlflow.source.type"] == "JOB"
        assert tags["mlflow.user"]
        assert tags.get("mlflow.source.git.commit") == commit
    assert parent.data.tags[NOTE] == "knobflow tune synthetic" and parent.data.tags["k"] == "v"
    assert parent.data.params["policies"] == "durability"
    assert [a.path for a in client.list_artifacts(run_id, "rules")] == ["rules/mine.yaml"]
    assert FLOW_RUN_TAG not in parent.data.tags  # no Prefect flow run here

    # an experiment an operator described in the UI keeps the operator's words
    client.set_experiment_tag(tracker.experiment_id, NOTE, "mine")
    JobTracker(_uri(tmp_path), "knobflow/synthetic", tmp_path / "artifacts").close()
    assert client.get_experiment(tracker.experiment_id).tags[NOTE] == "mine"


def test_the_parent_run_names_the_prefect_flow_run_that_ran_it(prefect_api: str,
                                                               tmp_path: Path) -> None:
    @flow(name="track-test")
    def job() -> tuple[str, str]:
        from prefect.runtime import flow_run

        tracker = start_tracking(_uri(tmp_path), "knobflow/synthetic", tmp_path / "artifacts",
                                 "job-1", params={}, tags={}, run_id=None)
        tracker.close()
        return tracker.run_id, str(flow_run.id)

    run_id, flow_run_id = job()
    assert len(flow_run_id) == 36
    assert _client(tmp_path).get_run(run_id).data.tags[FLOW_RUN_TAG] == flow_run_id

    # the function the flow can call itself, e.g. for a resumed job's new flow run
    tag_flow_run(_client(tmp_path), run_id, "another")
    assert _client(tmp_path).get_run(run_id).data.tags[FLOW_RUN_TAG] == "another"


def test_a_failed_trial_says_why_in_its_description(tmp_path: Path) -> None:
    tracker = JobTracker(_uri(tmp_path), "knobflow/synthetic", tmp_path / "artifacts")
    tracker.start_job("job-1", params={}, tags={})
    now = time.time()
    outcome = _outcome(now - 1, now)
    outcome.fail(FailureClass.TIMEOUT, "no answer in 5 s")
    tracker.log_trial("3", outcome.record(), phase="verify")
    tracker.close()
    (run,) = _client(tmp_path).search_runs(
        [tracker.experiment_id], filter_string="tags.`knobflow.trial` = '3'")
    assert run.info.status == "FAILED" and run.info.run_name == "verify-3"
    assert run.data.tags[NOTE] == ("verify trial 3 on instance kv-1: failed (timeout): no "
                                   "answer in 5 s. Knobs the system changed on its own: none.")
