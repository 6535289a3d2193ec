"""Model training: the model inputs shared with transfer, sane cross-validation, MLflow runs that
line up across model kinds (same metrics, importance plot, trial table, pinned requirements)."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from model_registry.features import categorical_columns, feature_frame
from targets.spec import parse_spec
from targets.synthetic import SyntheticTarget
from tasks.models import cross_validate, holdout_mask, top_recall, training_set
from tasks.train import METRICS, MIN_ROWS, train_models, why_not_trainable
from tests.synthetic_rows import trial_table

SPEC = SyntheticTarget.knob_spec()
REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    """The commit of the checkout the tests run from (None outside a git checkout)."""
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def xy(table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return (feature_frame(table, SPEC, table[["workload.shift"]]),
            table["metric.throughput"].to_numpy(dtype=float))


# -- model inputs ----------------------------------------------------------------------------------
def test_feature_frame_fills_defaults_and_accepts_both_naming_styles() -> None:
    plain = pd.DataFrame({"x": [0.1, 0.9], "mode": ["gamma", "beta"], "compress": [True, False],
                          "threads": [4, 16]})
    prefixed = plain.rename(columns=lambda c: f"knob.{c}")
    fp = {"shift": 0.5, "alpha": 1.0}
    a, b = feature_frame(plain, SPEC, fp), feature_frame(prefixed, SPEC, fp)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == [f"knob.{k}" for k in sorted(SPEC.names)] + [
        "workload.alpha", "workload.shift"]
    defaults = SPEC.defaults()
    assert (a["knob.y"] == defaults["y"]).all()  # missing knobs take their default
    assert (a["knob.buffer_kb"] == float(defaults["buffer_kb"])).all()
    assert a["knob.compress"].tolist() == [1.0, 0.0]
    assert a["knob.threads"].dtype == float and a["knob.compress"].dtype == float
    assert a["knob.mode"].tolist() == ["gamma", "beta"]
    assert a["workload.shift"].tolist() == [0.5, 0.5]


def test_feature_frame_per_row_workloads_and_values_read_back_from_text() -> None:
    spec = parse_spec({"target": "t", "knobs": {
        "size": {"type": "categorical", "values": [4096, 8192], "default": 4096},
        "on": {"type": "bool", "default": True},
        "n": {"type": "int", "range": [1, 10], "default": 3},
    }}, "<test>")
    configs = pd.DataFrame({"knob.size": [8192.0, "4096", None], "knob.on": ["false", None, 1],
                            "knob.n": ["7", None, 2]})
    work = pd.DataFrame({"workload.read": [0.1, 0.5, 0.9]}, index=[7, 8, 9])
    out = feature_frame(configs, spec, work)
    assert out["knob.size"].tolist() == ["8192", "4096", "4096"]
    assert out["knob.on"].tolist() == [0.0, 1.0, 1.0]
    assert out["knob.n"].tolist() == [7.0, 3.0, 2.0]
    assert out["workload.read"].tolist() == [0.1, 0.5, 0.9]  # by position, not index
    assert list(out.index) == list(configs.index)
    assert categorical_columns(spec) == ["knob.size"]


# -- scores ----------------------------------------------------------------------------------------
def test_top_recall_honours_the_direction() -> None:
    y = np.arange(20, dtype=float)
    assert top_recall(y, y, "maximize") == 1.0
    assert top_recall(y, -y, "maximize") == 0.0
    assert top_recall(y, -y, "minimize") == 0.0
    assert top_recall(y, y, "minimize") == 1.0
    pred = y.copy()
    pred[19] = -1  # the best config predicted worst: half the top two found
    assert top_recall(y, pred, "maximize") == 0.5
    assert top_recall([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "maximize") == 0.0  # at least one row


def test_cross_validation_finds_a_clear_function_and_nothing_in_noise() -> None:
    x, y = xy(trial_table(160, seed=3))
    cats = categorical_columns(SPEC)
    clear = cross_validate("lightgbm", x, y, "maximize", categorical=cats, log_target=True)
    assert clear["cv_spearman"] > 0.7, clear
    assert clear["cv_r2"] > 0.5, clear
    assert clear["cv_folds"] == 5
    noise = np.random.default_rng(1).lognormal(6, 0.5, len(y))
    blind = cross_validate("lightgbm", x, noise, "maximize", categorical=cats, log_target=True)
    assert abs(blind["cv_spearman"]) < 0.25, blind
    assert blind["cv_r2"] < 0.1, blind
    forest = cross_validate("sklearn", x, y, "maximize", categorical=cats, log_target=True)
    assert forest["cv_spearman"] > 0.7, forest


def test_held_out_trials_stay_held_out_as_the_table_grows() -> None:
    small, large = trial_table(60, seed=5), trial_table(200, seed=5)
    assert small.equals(large.head(60))
    held_small = set(small["trial"][holdout_mask(small, 0.2)])
    held_large = set(large["trial"][holdout_mask(large, 0.2)])
    assert held_small and held_small <= held_large
    assert 0.1 < len(held_large) / len(large) < 0.3
    assert holdout_mask(small.head(12), 0.2).sum() >= 3
    assert holdout_mask(small.head(4), 0.9).sum() == 2  # never more than half


# -- training and MLflow ---------------------------------------------------------------------------
def test_fewer_than_the_minimum_clean_rows_trains_nothing(tmp_path: Path) -> None:
    table = trial_table(MIN_ROWS + 4)
    table.loc[: 4, "status"] = "failed"  # 11 clean rows left
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = train_models(table, spec=SPEC, objective="throughput", direction="maximize",
                          service="orders-kv", instance="kv-1", workload_fp={"shift": 0.0},
                          tracking_uri=uri)
    assert report is None
    assert not (tmp_path / "mlflow.db").exists()  # nothing was written


def test_value_is_learned_only_from_jobs_that_tuned_the_objective() -> None:
    table = trial_table(20).drop(columns=["metric.throughput"])
    table.loc[:9, "objective"] = "latency_ms"  # those jobs told the tuner another objective
    rows, y, col = training_set(table, "throughput")
    assert col == "value" and len(rows) == len(y) == 10
    assert set(rows["trial"]) == {str(i) for i in range(10, 20)}
    assert why_not_trainable(table, "throughput").startswith("10 clean trials")
    assert why_not_trainable(trial_table(12), "throughput") is None


def test_runs_of_every_kind_line_up_in_mlflow(tmp_path: Path, mlflow_template: Path) -> None:
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")  # made once per session
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = trial_table(200, seed=11)
    report = train_models(table, spec=SPEC, objective="throughput", direction="maximize",
                          service="orders-kv", instance="kv-1", workload_fp={"shift": 0.0},
                          tracking_uri=uri)
    assert report is not None
    # MLflow's process-wide state is left as it was
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() != uri

    assert set(report.kinds) == {"lightgbm", "sklearn"}
    assert report.n_rows == 200 and report.n_train + report.n_holdout == 200
    assert report.target_column == "metric.throughput"
    assert report.registered_name == "knobflow-orders-kv-throughput"
    assert report.registered_version == 1 and report.champion_moved
    assert report.best.metrics["holdout_spearman"] > 0.7

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("knobflow/orders-kv/models")
    assert exp is not None
    assert Path(exp.artifact_location.removeprefix("file://")) == tmp_path / "artifacts"
    assert exp.tags["mlflow.note.content"].startswith(
        "Surrogate models of service orders-kv: one run per model kind and training")
    runs = {r.data.params["model_kind"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"lightgbm", "sklearn"}
    commit = git_commit()
    for kind, run in runs.items():  # named after the service, described, with their source
        tags = run.data.tags
        assert run.info.run_name == f"orders-kv/throughput-{kind}"
        assert tags["mlflow.note.content"].startswith(
            f"{kind} surrogate of throughput (maximize) for service orders-kv, trained after a "
            "job of instance kv-1 on 200 clean trials")
        assert tags["mlflow.source.name"] == "tasks/train.py"
        assert tags["mlflow.source.type"] == "JOB"
        assert tags.get("mlflow.source.git.commit") == commit
    pins = {f"{d}=={version(d)}" for d in
            ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "skops")}
    for kind, run in runs.items():
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) == set(METRICS), kind
        params = run.data.params
        assert params["data_hash"] == report.data_hash and len(report.data_hash) == 64
        assert params["knob_spec_hash"] == SPEC.fingerprint()
        assert params["n_rows"] == "200" and params["objective"] == "throughput"
        assert params["features"].startswith('["knob.buffer_kb"')
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"feature_importance.png", "trial_table.parquet"} <= artifacts, kind
        png = download_artifacts(run_id=run.info.run_id, artifact_path="feature_importance.png",
                                 dst_path=str(tmp_path / kind), tracking_uri=uri)
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        stored = pd.read_parquet(download_artifacts(
            run_id=run.info.run_id, artifact_path="trial_table.parquet",
            dst_path=str(tmp_path / kind), tracking_uri=uri))
        pd.testing.assert_frame_equal(stored, table)
        model_dir = Path(report.kinds[kind].model_uri.replace("models:/", ""))
        logged = client.get_logged_model(str(model_dir))
        reqs = Path(logged.artifact_location.removeprefix("file://"), "requirements.txt")
        lines = {ln.strip() for ln in reqs.read_text().splitlines() if ln.strip()}
        assert pins <= lines, lines
        assert all(ln.startswith("mlflow") or ln in pins for ln in lines), lines  # not inferred
    mv = client.get_model_version(report.registered_name, "1")
    assert mv.tags["model_kind"] == report.best_kind
    assert str(client.get_model_version_by_alias(report.registered_name, "champion").version) == "1"


def test_a_minimize_objective_with_signed_values_is_learned_without_log(
        tmp_path: Path, mlflow_template: Path) -> None:
    table = trial_table(60, seed=2)
    # a minimized metric that crosses zero: no log transform possible
    table["metric.latency_ms"] = 500.0 - table["metric.throughput"]
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")  # made once per session
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = train_models(table, spec=SPEC, objective="latency_ms", direction="minimize",
                          service="orders-kv", instance="kv-1", workload_fp={"shift": 0.0},
                          tracking_uri=uri, kinds=("lightgbm",))
    assert report is not None and report.target_column == "metric.latency_ms"
    run = MlflowClient(tracking_uri=uri).get_run(report.best.run_id)
    assert run.data.params["log_target"] == "false"
    assert report.registered_name == "knobflow-orders-kv-latency_ms"
    with pytest.raises(ValueError, match="direction"):
        train_models(table, spec=SPEC, objective="latency_ms", direction="down",
                     service="orders-kv", instance="kv-1", workload_fp={}, tracking_uri=uri)

