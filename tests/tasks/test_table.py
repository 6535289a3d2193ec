"""The trial table: one schema for all trials of a service; rejected trials never reach training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from flows.trials import job_table_path, jobs_of, service_table
from flows.tune import tune
from targets.synthetic import SyntheticTarget
from tuners.study import open_study
from tuners.trials import IDENTITY, training_rows

# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")
#: What these tests do not look at, left out of their jobs: the noise check, more than two
#: pairs of verification, training the service's models (the training table is still read).
LEAN: dict[str, Any] = {"noise_runs": 0, "verify_repeats": 2, "train": False}


@pytest.fixture
def undocumented_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the synthetic system's rounding of buffer_kb is not documented: every trial whose
    buffer_kb is not a multiple of 16 then measured another config than it asked for."""
    monkeypatch.setattr(SyntheticTarget, "normalize_config", classmethod(lambda cls, c: dict(c)))


def test_rejected_trials_reach_neither_the_tuner_nor_the_training_table(
    prefect_api: str, home: Path, undocumented_rounding: None
) -> None:
    summary = tune("synthetic", budget=12, seed=7, workload={"duration": 0.0, "noise": 0.02},
                   **LEAN, home=str(home))
    table = service_table(home, "synthetic")
    assert len(table) == summary.n_trials == 12
    invalid = table[table["status"] == "invalid"]
    assert len(invalid) >= 3, table[["trial", "status", "reason"]]
    assert all("buffer_kb requested" in r for r in invalid["reason"])
    assert invalid["value"].isna().all()

    study = open_study(home, summary.study_name, "maximize",
                       optuna.samplers.RandomSampler(), create=False)
    told = {str(t.number): t.value for t in study.trials}
    for trial in invalid["trial"]:
        assert told[trial] is None, f"rejected trial {trial} was told to the tuner"

    training = training_rows(table)
    assert set(training["status"]) == {"ok"}
    assert not set(training["trial"]) & set(invalid["trial"])
    assert training["value"].notna().all()


def test_trial_table_schema_and_parquet_round_trip(prefect_api: str, home: Path) -> None:
    tune("synthetic", budget=5, seed=1, workload={"duration": 0.0}, **LEAN, home=str(home))
    tune("synthetic", budget=4, seed=2, instance="replica-2", workload={"duration": 0.0},
         **LEAN, home=str(home))
    table = service_table(home, "synthetic")
    assert list(table.columns[: len(IDENTITY)]) == IDENTITY
    assert len(table) == 9 and table["study"].nunique() == 2
    assert set(table["instance"]) == {"local", "replica-2"}
    spec = SyntheticTarget.knob_spec()
    for prefix in ("knob.", "effective."):
        assert {prefix + k for k in spec.names} <= set(table.columns)
    assert "workload.shift" in table.columns and "metric.throughput" in table.columns
    assert {"n_samples", "objective_cv", "config_consistent", "log.errors"} <= set(table.columns)
    ok = table[table["status"] == "ok"]
    assert (ok["value"] == ok["metric.throughput"]).all()
    stored = pd.concat(pd.read_parquet(job_table_path(job)) for job in jobs_of(home, "synthetic"))
    assert len(stored) == 9
    assert set(stored.columns) <= set(table.columns)
