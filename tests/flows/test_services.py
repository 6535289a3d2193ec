"""Services and their instances in the tune flow: models trained after every job, siblings'
knowledge transferred to a new instance and recorded on its MLflow run (real Prefect API, real
MLflow store, real LightGBM)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.job import Job
from flows.report import RunSummary
from flows.spec import JobSpec
from flows.tune import tune
from targets.common.errors import KnobflowError
from tuners.study import open_study
from tuners.trials import PRIOR_ATTR, TRANSFER_ATTR

FAST = {"duration": 0.0, "noise": 0.02}
# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")


def _client(home: Path) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _study(home: Path, summary: RunSummary) -> optuna.Study:
    return open_study(home, summary.study_name, "maximize", optuna.samplers.RandomSampler(),
                      create=False)


def test_a_sibling_starts_from_what_the_first_instance_learned(prefect_api: str,
                                                                home: Path) -> None:
    # enough trials that the held-out fifth (by a hash of each row) is 5 or more: a model checked
    # on fewer is never champion (P(< 5 of 60) is 0.3 %)
    # no noise check (three runs of the default per job; tests/flows/test_noise.py has its own)
    first = tune("synthetic", instance="a", budget=60, seed=1, workload=FAST, noise_runs=0,
                 home=str(home))
    model = first.model
    assert model["champion_refused"] == "", model["line"]
    assert model["name"] == "knobflow-synthetic-throughput" and model["version"] == 1
    assert model["champion_moved"] and set(model["metrics"]) == {"lightgbm", "sklearn"}
    assert first.transfer["n_seeds"] == 0  # nobody to learn from yet

    second = tune("synthetic", instance="b", budget=10, seed=2, workload={**FAST, "shift": 0.5},
                  noise_runs=0, home=str(home))
    transfer = second.transfer
    assert transfer["n_seeds"] >= 3 and transfer["from_instances"] == ["a"]
    assert transfer["model"] == "knobflow-synthetic-throughput" and transfer["model_version"] == "1"
    # queued right after the default config, and run as trials of the job
    assert transfer["trials"] == list(range(1, transfer["n_seeds"] + 1))
    study = _study(home, second)
    queued = [t for t in study.trials if TRANSFER_ATTR in t.user_attrs]
    assert {t.user_attrs[TRANSFER_ATTR] for t in queued} == {"model", "sibling"}
    assert all(t.user_attrs["knobflow"]["status"] in ("ok", "failed", "blocked") for t in queued)
    # the second instance's trials train version 2 with both instances' data
    assert second.model["version"] == 2 and second.model["n_rows"] > first.model["n_rows"]

    run = _client(home).get_run(second.mlflow_run_id)
    assert run.data.tags["knobflow.transfer"] == "on"
    assert run.data.tags["knobflow.transfer.from_instances"] == "a"
    assert run.data.tags["knobflow.transfer.model"] == "knobflow-synthetic-throughput/1"
    assert run.data.params["service"] == "synthetic"
    artifacts = {a.path for a in _client(home).list_artifacts(second.mlflow_run_id)}
    assert "transfer.json" in artifacts
    recorded = json.loads((Path(second.best_config_file).parent / "transfer.json").read_text())
    assert [s["params"] for s in recorded["seeds"]] == [t.params for t in queued]

    cold = tune("synthetic", instance="c", budget=4, seed=3, workload=FAST, transfer=False,
                train=False, noise_runs=0, home=str(home))
    assert cold.transfer is None and cold.model is None
    assert not any(TRANSFER_ATTR in t.user_attrs for t in _study(home, cold).trials)
    assert _client(home).get_run(cold.mlflow_run_id).data.tags["knobflow.transfer"] == "off"


def test_instances_of_another_service_are_not_siblings(prefect_api: str, home: Path) -> None:
    tune("synthetic", instance="a", budget=6, seed=1, workload=FAST, train=False,
         service="orders", noise_runs=0, home=str(home))
    other = tune("synthetic", instance="b", budget=4, seed=2, workload=FAST, train=False,
                 service="billing", noise_runs=0, home=str(home))
    assert other.transfer["n_seeds"] == 0 and "no sibling" in other.transfer["reason"]
    sibling = tune("synthetic", instance="b", budget=4, seed=2, workload=FAST, train=False,
                   service="orders", noise_runs=0, home=str(home))
    assert sibling.transfer["n_seeds"] >= 1 and sibling.transfer["from_instances"] == ["a"]
    assert (home / "instances" / "orders" / "b").is_dir()
    assert (home / "tables" / "billing").is_dir()


def test_a_service_belongs_to_one_target(home: Path) -> None:
    Job.create(JobSpec.of(target="synthetic", service="orders"), home).save()
    with pytest.raises(KnobflowError, match=r"names a service of target 'synthetic'"):
        Job.create(JobSpec.of(target="sqlite", service="orders"), home)
    with pytest.raises(KnobflowError, match="The 'service' option"):
        Job.create(JobSpec.of(target="sqlite", service="bad name!"), home)


def test_priors_are_told_to_the_tuner_but_never_run_or_reported(prefect_api: str,
                                                                  home: Path) -> None:
    tune("synthetic", instance="a", budget=12, seed=1, workload=FAST, train=False,
         noise_runs=0, home=str(home))
    second = tune("synthetic", instance="b", budget=5, seed=2, workload={**FAST, "shift": 0.05},
                  train=False, transfer_priors=True, noise_runs=0, home=str(home))
    study = _study(home, second)
    priors = [t for t in study.trials if PRIOR_ATTR in t.user_attrs]
    assert len(priors) == second.transfer["n_priors"] >= 8
    assert {t.user_attrs[PRIOR_ATTR]["instance"] for t in priors} == {"a"}
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value > 0 for t in priors)
    assert second.n_trials == 5  # the budget is for trials run here
    assert second.best_trial not in {t.number for t in priors}
    rows = pd.read_parquet(second.trial_table)
    assert len(rows) == 5 and set(rows["instance"]) == {"b"}
    # a workload far away: no priors
    far = tune("synthetic", instance="c", budget=3, seed=3, workload={**FAST, "shift": 0.9},
               train=False, transfer_priors=True, noise_runs=0, home=str(home))
    assert far.transfer["n_priors"] == 0
