"""The types skops is told to trust: kept per model structure, exactly what serialising the model
finds, and found again when a kept list falls short (the model is still logged and loads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from model_registry.store import client_for, process_tracking_uri
from tasks import model_io
from tasks.model_runs import _log_model
from tasks.models import build_model


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own, and nothing kept in the process from other tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(model_io, "_kept", {})
    return tmp_path / "cache" / "knobflow" / "skops-trusted-types.json"


def fitted(kind: str, log_target: bool = False, seed: int = 0) -> tuple[object, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"knob.a": rng.random(30), "knob.mode": rng.choice(["p", "q"], 30),
                      "knob.b": rng.integers(0, 9, 30).astype(float)})
    model = build_model(kind, ["knob.mode"], seed=seed, log_target=log_target)
    return model.fit(x, rng.random(30) + 1.0), x


@pytest.mark.parametrize("kind", ["lightgbm", "sklearn"])
def test_kept_types_are_what_serialising_finds(kind: str, cache_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = fitted(kind)
    found = model_io._found_types(model)
    assert model_io.trusted_types(model) == found
    assert json.loads(cache_home.read_text())  # kept for the next process

    def no_serialising(model: object) -> list[str]:
        raise AssertionError("serialised again")

    monkeypatch.setattr(model_io, "_found_types", no_serialising)
    other, _ = fitted(kind, seed=3)  # same classes, other data: kept
    assert model_io.trusted_types(other) == found
    monkeypatch.setattr(model_io, "_kept", {})  # a new process reads the file
    assert model_io.trusted_types(model) == found


def test_structures_are_told_apart() -> None:
    forest, _ = fitted("sklearn")
    boosted, _ = fitted("lightgbm")
    assert model_io._key(forest) != model_io._key(boosted)
    assert "sklearn.tree._classes.DecisionTreeRegressor" in model_io._structure(forest)
    assert "sklearn.preprocessing._encoders.OrdinalEncoder" in model_io._structure(boosted)


def test_a_kept_list_that_falls_short_is_found_again(
    tmp_path: Path, mlflow_template: Path, cache_home: Path
) -> None:
    model, x = fitted("sklearn")
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text(json.dumps({model_io._key(model): []}))  # Tree missing
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    exp = client.create_experiment("models", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp)
    signature = infer_signature(x, model.predict(x))
    with process_tracking_uri(uri), mlflow.start_run(run_id=run.info.run_id):
        info = _log_model(model, signature, x.head(3))
    assert json.loads(cache_home.read_text()) == {
        model_io._key(model): ["sklearn.tree._tree.Tree"]}
    with process_tracking_uri(uri):  # the attempt that fell short left no FAILED twin
        logged = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
    assert [(m.model_id, str(m.status)) for m in logged] == [(info.model_id, "READY")]
    with process_tracking_uri(uri):
        loaded = mlflow.sklearn.load_model(info.model_uri)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x))


def test_a_type_outside_the_trusted_libraries_is_refused(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = fitted("lightgbm")
    monkeypatch.setattr(model_io, "_found_types", lambda m: ["os.system"])
    with pytest.raises(TypeError, match="should not trust"):
        model_io.trusted_types(model)
    cache_home.parent.mkdir(parents=True, exist_ok=True)
    cache_home.write_text(json.dumps({model_io._key(model): ["pickle.loads"]}))
    with pytest.raises(TypeError, match="should not trust"):  # a tampered cache too
        model_io.trusted_types(model)


def test_import_now_loads_what_a_training_step_would() -> None:
    import sys

    model_io.import_now()
    assert {"skops.io", "matplotlib.figure", "matplotlib.backends.backend_agg"} <= set(sys.modules)
    import mlflow.utils.requirements_utils as requirements

    assert requirements._MODULES_TO_PACKAGES is not None  # MLflow's package map, made once
