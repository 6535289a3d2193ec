"""The tune flow under a real Prefect API, a real MLflow store and Optuna journal in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.tune import tune
from targets.synthetic import SyntheticTarget
from tuners.study import open_study

FAST = {"duration": 0.0, "noise": 0.02}
#: What a test below does not look at, left out of its job: the noise check (tests/flows/
#: test_noise.py), more than two pairs of verification, training the service's models.
LEAN: dict[str, Any] = {"noise_runs": 0, "verify_repeats": 2, "train": False}
# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")


def _client(home: Path) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _children(client: MlflowClient, parent: str, phase: str) -> list:
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs(
        [exp],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' "
        f"and tags.`knobflow.phase` = '{phase}'",
        max_results=1000,
    )


def test_synthetic_job_records_every_trial_in_mlflow(prefect_api: str, home: Path) -> None:
    summary = tune("synthetic", budget=14, seed=2, workload=FAST, home=str(home))
    # the job's store must not leak to later processes (mlflow.set_tracking_uri sets this)
    assert "MLFLOW_TRACKING_URI" not in os.environ

    assert summary.n_trials == 14
    assert summary.best_config is not None
    # trial 0 measures the default config; the search then has to beat it
    assert summary.best_observed_value >= summary.default_value * 0.9
    assert summary.gain > 1.0 and summary.gain_low <= summary.gain <= summary.gain_high
    assert summary.best_true_value <= summary.known_optimum_value + 1e-9

    client = _client(home)
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["target"] == "synthetic"
    assert parent.data.metrics["gain"] == pytest.approx(summary.gain)
    trials = _children(client, summary.mlflow_run_id, "explore")
    assert len(trials) == 14
    spec = SyntheticTarget.knob_spec()
    for run in trials:
        assert set(spec.names) <= set(run.data.params)  # knobs as params
        assert run.data.tags["knobflow.status"] in ("ok", "failed")
        if run.data.tags["knobflow.status"] == "ok":
            assert run.data.metrics["throughput"] > 0
            assert {f"effective.{k}" for k in spec.names} <= set(run.data.params)
            # the measurement gate's verdict and Great Expectations' own result are kept
            assert run.data.tags["knobflow.gate"] == "passed"
            files = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"trial.json", "validation.json"} <= files
        else:
            assert run.data.tags["knobflow.failure_class"]
    verify = _children(client, summary.mlflow_run_id, "verify")
    assert len(verify) == 2 * 3

    best_file = Path(summary.best_config_file)
    config = yaml.safe_load(best_file.read_text())
    assert config == summary.best_config
    assert spec.validate_config(config, str(best_file)) == config
    result = json.loads((best_file.parent / "result.json").read_text())
    assert result["study_name"] == summary.study_name
    assert (best_file.parent / "history.png").stat().st_size > 1000


def test_crashes_and_hangs_become_failed_trials_and_the_job_goes_on(
    prefect_api: str, home: Path, tmp_path: Path
) -> None:
    # a space where most configs crash (compress on, many threads) or hang (beta, big y)
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "knobs": {
                    "threads": {"range": [30, 64]},
                    "mode": {"values": ["alpha", "beta"]},
                    "y": {"range": [0.5, 1000.0]},
                },
                "fixed": {"compress": True},
            }
        )
    )
    summary = tune(
        "synthetic",
        budget=10,
        seed=5,
        workload=FAST,
        space_file=str(space),
        trial_timeout=1.0,
        **LEAN,
        home=str(home),
    )
    assert summary.n_trials == 10
    classes = summary.failure_classes
    assert classes.get("crash", 0) >= 1, classes
    assert summary.n_failed == sum(classes.values())
    study = open_study(
        home, summary.study_name, "maximize", optuna.samplers.RandomSampler(), create=False
    )
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == summary.n_failed
    assert all(t.user_attrs["knobflow"]["log_tail"] is not None for t in failed)
    # crashes never reach the tuner as values
    assert all(t.value is None for t in failed)


def test_parallel_instances_use_their_own_data_directories(prefect_api: str, home: Path) -> None:
    summary = tune(
        "synthetic", budget=8, parallel=2, instance="kv", seed=1, workload=FAST, **LEAN,
        home=str(home)
    )
    assert summary.n_trials == 8
    study = open_study(
        home, summary.study_name, "maximize", optuna.samplers.RandomSampler(), create=False
    )
    ran = [t for t in study.trials if t.user_attrs["knobflow"]["status"] != "blocked"]
    used = {t.user_attrs["knobflow"]["instance"] for t in ran}
    assert used == {"kv-1", "kv-2"}
    assert (home / "instances" / "synthetic" / "kv-1").is_dir()
    assert (home / "instances" / "synthetic" / "kv-2").is_dir()


def test_time_budget_stops_new_trials(prefect_api: str, home: Path) -> None:
    summary = tune(
        "synthetic",
        budget=500,
        time_budget=3.0,
        seed=1,
        workload={**FAST, "duration": 0.2},
        **LEAN,
        home=str(home),
    )
    assert 3 <= summary.n_trials < 500


@pytest.mark.parametrize("tuner", ["random", "cmaes"])
def test_other_tuners_run_a_job(prefect_api: str, home: Path, tuner: str) -> None:
    summary = tune("synthetic", budget=8, tuner=tuner, seed=3, workload=FAST, **LEAN,
                   home=str(home))
    assert summary.tuner == tuner
    assert summary.n_trials == 8
    study = open_study(home, summary.study_name, "maximize",
                       optuna.samplers.RandomSampler(), create=False)
    # different configs were tried (the sampler really sampled)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) >= 6
