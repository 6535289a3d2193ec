"""The model registry: names, provenance tags, a champion that moves only when it should, and a
champion any process loads by its alias (a real MLflow SQLite store, real LightGBM)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import DatabaseError

from model_registry.features import feature_frame
from model_registry.registry import (
    champion_table,
    load_champion,
    model_name,
    promote,
)
from model_registry.store import champion_lock, champion_lock_path
from targets.spec import parse_spec
from targets.synthetic import SyntheticTarget
from tasks.models import holdout_mask
from tasks.train import TrainReport, train_models
from tests.synthetic_rows import trial_table
from tuners.trials import training_rows

SPEC = SyntheticTarget.knob_spec()
SERVICE, OBJECTIVE = "orders-kv", "throughput"
NAME = "knobflow-orders-kv-throughput"


def corrupt(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same trials with the training part's measurements shuffled (a model that learned
    nothing); the held-out trials keep their true values, so the comparison is on real data."""
    out = table.copy()
    train = ~holdout_mask(training_rows(out), 0.2)
    idx = np.flatnonzero(train)
    shuffled = np.random.default_rng(seed).permutation(idx)
    for col in ("value", "metric.throughput"):
        out.loc[idx, col] = out.loc[shuffled, col].to_numpy()
    return out


def flat(table: pd.DataFrame) -> pd.DataFrame:
    """The same trials with every training measurement the same: a model that predicts one
    value for every config and so ranks nothing (the held-out trials keep their true values)."""
    out = table.copy()
    idx = np.flatnonzero(~holdout_mask(training_rows(out), 0.2))
    for col in ("value", "metric.throughput"):
        out.loc[idx, col] = float(out.loc[idx, col].median())
    return out


def train(table: pd.DataFrame, uri: str, shift: float = 0.0, spec=SPEC,
          instance: str = "kv-1") -> TrainReport:
    report = train_models(table, spec=spec, objective=OBJECTIVE, direction="maximize",
                          service=SERVICE, instance=instance, workload_fp={"shift": shift},
                          tracking_uri=uri, kinds=("lightgbm",))
    assert report is not None
    return report


@pytest.fixture
def uri(tmp_path: Path, mlflow_template: Path) -> str:
    """A store made once per session (tests/conftest.py): these tests are not about making one."""
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def champion_version(uri: str) -> int:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return int(client.get_model_version_by_alias(NAME, "champion").version)


def version_tags(uri: str, version: int) -> dict[str, str]:
    return MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(
        NAME, str(version)).tags


def test_model_names_are_valid_registry_names() -> None:
    assert model_name("orders-kv", "throughput") == NAME
    assert model_name("orders kv/eu", "p99 latency") == "knobflow-orders-kv-eu-p99-latency"


def test_a_champion_registered_here_is_loaded_by_alias_in_another_process(
    uri: str, tmp_path: Path
) -> None:
    table = trial_table(80, seed=4)
    report = train(table, uri)
    champion = load_champion(uri, SERVICE, OBJECTIVE)
    assert champion is not None
    assert champion.version == report.registered_version and champion.name == NAME
    assert champion.run_id == report.best.run_id
    assert champion.uri == f"models:/{NAME}@champion"
    assert champion.features == report.features

    tags = champion.tags
    for key in ("instance", "workload_fingerprint", "workload", "workloads", "knob_spec_hash",
                "trial_count", "model_kind", "holdout_spearman", "holdout_r2", "data_hash",
                "champion_reason"):
        assert key in tags, key
    assert tags["instance"] == "kv-1" and tags["trial_count"] == "80"
    assert tags["knob_spec_hash"] == SPEC.fingerprint() and tags["data_hash"] == report.data_hash
    assert champion.workload == {"shift": 0.0} and champion.workloads == [{"shift": 0.0}]

    candidates = pd.DataFrame([SPEC.defaults(), {**SPEC.defaults(), "x": 0.25, "mode": "beta"},
                               {**SPEC.defaults(), "mode": "delta"}])  # an unseen category too
    frame = feature_frame(candidates, SPEC, {"shift": 0.0})
    here = champion.predict(frame)
    assert np.all(np.isfinite(here))
    frame.to_parquet(tmp_path / "candidates.parquet")

    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        frame = pd.read_parquet("candidates.parquet")
        model = mlflow.pyfunc.load_model("models:/{NAME}@champion")
        ours = {{"tasks", "model_registry", "targets", "flows", "tuners", "rules"}}
        print(json.dumps({{"pred": [float(v) for v in model.predict(frame)],
                          "knobflow": sorted(m for m in sys.modules if m.split(".")[0] in ours)}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["knobflow"] == []  # the model needs nothing of knobflow to load
    np.testing.assert_allclose(there["pred"], here, rtol=1e-9)
    assert not (tmp_path / "mlflow.db-journal").exists()

    with pytest.raises(KeyError, match=r"knob\.x"):
        champion.predict(frame.drop(columns=["knob.x"]))


def test_the_champion_moves_only_to_a_better_model_or_a_moved_workload(uri: str) -> None:
    table = trial_table(120, seed=1)
    first = train(flat(table), uri)  # the only model, but it ranks nothing: no champion
    assert not first.champion_moved, first.champion_reason
    assert first.champion_reason.startswith("below the floor"), first.champion_reason
    assert first.champion_refused == first.champion_reason
    assert version_tags(uri, 1)["champion_refused"] == first.champion_reason
    assert load_champion(uri, SERVICE, OBJECTIVE) is None

    good = train(table, uri)
    assert good.champion_moved and good.champion_reason == "no champion yet"
    assert champion_version(uri) == good.registered_version == 2
    assert version_tags(uri, 2)["previous_champion"] == ""

    better = train(pd.concat([table, trial_table(120, seed=11, study="s1b")], ignore_index=True),
                   uri)
    assert better.champion_moved, better.champion_reason
    assert better.champion_reason.startswith("validates better"), better.champion_reason
    assert version_tags(uri, 3)["previous_champion"] == "2"

    worse = train(corrupt(table, seed=2), uri)
    assert not worse.champion_moved, worse.champion_reason
    assert worse.champion_reason.startswith(("not better", "below the floor")), \
        worse.champion_reason
    assert champion_version(uri) == 3  # the alias stayed
    assert version_tags(uri, 4)["champion_reason"] == worse.champion_reason
    assert "previous_champion" not in version_tags(uri, 4)

    # the service now runs a workload the champion never saw (shift 1, far beyond CLOSE)
    moved = pd.concat([table, trial_table(60, seed=7, shift=1.0, study="s2")], ignore_index=True)
    garbage = train(flat(moved), uri, shift=1.0, instance="kv-2")  # even then, not below floor
    assert not garbage.champion_moved
    assert garbage.champion_reason.startswith("below the floor"), garbage.champion_reason
    shifted = train(moved, uri, shift=1.0, instance="kv-2")
    assert shifted.champion_moved, shifted.champion_reason
    assert shifted.champion_reason.startswith("workload moved"), shifted.champion_reason
    assert champion_version(uri) == 6
    assert json.loads(version_tags(uri, 6)["workloads"]) == [{"shift": 0.0}, {"shift": 1.0}]

    # promoting the champion again changes nothing
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    x = feature_frame(moved.head(5), SPEC, moved.head(5)[["workload.shift"]])
    again = promote(client, NAME, 6, x, moved["value"].head(5).to_numpy(), "maximize",
                    {"shift": 1.0})
    assert (again.moved, again.reason, again.champion) == (False, "v6 is already the champion",
                                                           "6")


def test_a_model_too_few_held_out_trials_validate_is_never_champion(uri: str) -> None:
    """A fresh service with a dozen trials holds out 3: a rank correlation on 3 points proves
    nothing (fresh services got the alias at -0.5 and -0.8), so no version becomes champion,
    and the summary line and the version's tags say why."""
    table = trial_table(12, seed=5)
    assert holdout_mask(training_rows(table), 0.2).sum() == 3
    report = train(table, uri)
    assert not report.champion_moved and report.n_holdout == 3
    assert report.champion_refused == report.champion_reason == "too few held-out rows (3 < 5)"
    assert report.line.endswith(
        "not made champion: too few held-out rows (3 < 5); the service has no champion")
    assert report.to_dict()["champion_refused"] == "too few held-out rows (3 < 5)"
    tags = version_tags(uri, 1)
    assert tags["champion_refused"] == "too few held-out rows (3 < 5)"
    assert tags["champion_reason"] == "too few held-out rows (3 < 5)"
    assert load_champion(uri, SERVICE, OBJECTIVE) is None
    assert champion_table(uri, SERVICE, OBJECTIVE).empty  # nothing for a sibling from the model

    # with a champion in place, a small retraining leaves it where it is, and says so
    good = train(trial_table(120, seed=1), uri)
    assert good.champion_moved and good.champion_version == "2" and not good.champion_refused
    assert "champion_refused" not in version_tags(uri, 2)
    small = train(table, uri)
    assert not small.champion_moved and small.champion_version == "2"
    assert small.line.endswith("not made champion: too few held-out rows (3 < 5); champion "
                               "stays v2")
    assert champion_version(uri) == 2


def test_champion_decisions_of_one_store_wait_for_each_other(uri: str, tmp_path: Path) -> None:
    """While another process decides (holds the store's lock), a promotion waits; it goes on as
    soon as the lock is free. A tracking server's URI takes no lock."""
    table = trial_table(60, seed=4)
    path = champion_lock_path(uri)
    assert path is not None and path.parent == tmp_path
    assert champion_lock_path("http://127.0.0.1:5000") is None
    done = threading.Event()
    reports: list[TrainReport] = []
    with champion_lock(uri):  # held as another process would: the worker opens its own file
        worker = threading.Thread(target=lambda: (reports.append(train(table, uri)), done.set()))
        worker.start()
        assert not done.wait(8.0)  # trained and registered, but waiting to decide
        assert load_champion(uri, SERVICE, OBJECTIVE) is None
    worker.join(60)
    assert done.is_set() and reports[0].champion_moved
    assert champion_version(uri) == reports[0].registered_version


def test_a_changed_knob_spec_replaces_a_champion_that_cannot_take_its_features(uri: str) -> None:
    table = trial_table(40, seed=3)
    train(table, uri)
    wider = parse_spec({"target": "synthetic", "knobs": {
        **{k.name: {"type": k.type, "default": k.default,
                    **({"range": [k.low, k.high]} if k.is_numeric else {}),
                    **({"values": list(k.values)} if k.type == "categorical" else {})}
           for k in SPEC},
        "cache_mb": {"type": "int", "range": [1, 1024], "default": 64},
    }}, "<test>")
    report = train(table, uri, spec=wider)
    assert report.champion_moved
    assert "other features" in report.champion_reason
    champion = load_champion(uri, SERVICE, OBJECTIVE)
    assert champion is not None and "knob.cache_mb" in champion.features


def test_no_model_or_no_alias_is_none_and_other_failures_raise(uri: str, tmp_path: Path) -> None:
    assert load_champion(uri, SERVICE, OBJECTIVE) is None
    assert champion_table(uri, SERVICE, OBJECTIVE).empty
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model(NAME)
    assert load_champion(uri, SERVICE, OBJECTIVE) is None  # registered, but no champion
    garbage = tmp_path / "not-a-store.db"
    garbage.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises((MlflowException, DatabaseError)):  # raised, not taken for "no model"
        load_champion(f"sqlite:///{garbage}", SERVICE, OBJECTIVE)


def test_siblings_reuse_the_trial_table_stored_beside_the_champion(uri: str) -> None:
    table = pd.concat([trial_table(30, seed=5), trial_table(20, seed=6, instance="kv-2",
                                                           study="s2")], ignore_index=True)
    train(table, uri)
    stored = champion_table(uri, SERVICE, OBJECTIVE)
    pd.testing.assert_frame_equal(stored, table)
    assert set(stored["instance"]) == {"kv-1", "kv-2"}
