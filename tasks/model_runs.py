"""The MLflow run of one trained model kind: its params and metrics, a feature-importance plot,
the trial table it was trained from (``trial_table.parquet``, what siblings reuse) and the model
itself (skops, pinned ``pip_requirements``); named ``<service>/<objective>-<kind>`` with a
description and MLflow's source and git tags.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.entities import LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator

from model_registry.registry import TABLE_ARTIFACT
from model_registry.store import NOTE, param, process_tracking_uri, source_tags
from tasks.model_io import REQUIREMENTS, pip_requirements, trusted_types

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

__all__ = ["MODEL_SOURCE", "REQUIREMENTS", "KindResult", "log_model_run", "pip_requirements"]

log = logging.getLogger("knobflow.train")

#: What makes a model run (``mlflow.source.name``).
MODEL_SOURCE = "tasks/train.py"


@dataclass
class KindResult:
    """One model kind's run."""

    kind: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    importance: dict[str, float] = field(default_factory=dict)


def _importance_png(importance: Mapping[str, float], title: str, path: Path) -> None:
    from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

    top = list(importance.items())[:30][::-1]
    fig = Figure(figsize=(7.0, 1.2 + 0.28 * max(1, len(top))))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in top], [v for _, v in top], color="#4878a8")
    ax.set_xlabel("importance")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _log_artifacts(client: MlflowClient, run_id: str, importance: Mapping[str, float],
                   title: str, table: pd.DataFrame) -> None:
    """The importance plot and its numbers, and the trial table the model was trained from."""
    with tempfile.TemporaryDirectory(prefix="knobflow-train-") as tmp:
        _importance_png(importance, title, Path(tmp) / "feature_importance.png")
        (Path(tmp) / "feature_importance.json").write_text(
            json.dumps(importance, indent=1), "utf-8")
        table.to_parquet(Path(tmp) / TABLE_ARTIFACT, index=False)
        for file in ("feature_importance.png", "feature_importance.json",
                     TABLE_ARTIFACT):
            client.log_artifact(run_id, str(Path(tmp) / file))


def log_model_run(
    client: MlflowClient, experiment: str, kind: str, model: BaseEstimator,
    metrics: Mapping[str, float], importance: Mapping[str, float], *,
    params: Mapping[str, Any], table: pd.DataFrame, x: pd.DataFrame, tracking_uri: str,
    study: str = "",
) -> KindResult:
    """One model kind's MLflow run: params, metrics, importance plot, trial table, the model;
    tagged with the ``study`` of the job that trained it (a resumed job closes what its killed
    run left open: ``close_killed_runs``)."""
    import mlflow
    from mlflow.models import infer_signature

    service, objective = params["service"], params["objective"]
    run = client.create_run(experiment, run_name=f"{service}/{objective}-{kind}", tags={
        **source_tags(MODEL_SOURCE), NOTE: (
            f"{kind} surrogate of {objective} ({params['direction']}) for service {service}, "
            f"trained after a job of instance {params['instance']} on {params['n_rows']} clean "
            f"trials of every instance of the service; held-out spearman "
            f"{metrics.get('holdout_spearman', float('nan')):.3f}."),
        "knobflow.service": str(service), "knobflow.instance": str(params["instance"]),
        "knobflow.objective": str(objective), "knobflow.model_kind": kind,
        "knobflow.data_hash": str(params["data_hash"]), "knobflow.study": study,
    })
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[param(k, v) for k, v in params.items()])
        _log_artifacts(client, run_id, importance, f"{service} {objective}: {kind}", table)
        sample = x.head(50)
        signature = infer_signature(sample, model.predict(sample))
        with process_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
            info = _log_model(model, signature, x.head(3))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return KindResult(kind=kind, run_id=run_id, model_uri=info.model_uri,
                      metrics=dict(metrics), importance=dict(importance))


def _log_model(model: BaseEstimator, signature: Any, example: pd.DataFrame) -> ModelInfo:
    """``mlflow.sklearn.log_model`` in skops format with its trusted types, pinned requirements,
    signature and input example, into the active run. MLflow loads the saved model back with
    those types (and again to check the example can be served); if a kept list of trusted types
    falls short, they are found again from the model and the model is logged again (the first
    attempt's logged model, which MLflow marks FAILED, is deleted: the run's models list only
    the one that loads)."""
    try:
        return _log_sklearn(model, signature, example, trusted_types(model))
    except MlflowException as exc:
        if "untrusted types" not in str(exc):
            raise
        log.warning("the kept trusted types of a %s fell short (%s); found again",
                    type(model).__name__, exc)
        _delete_failed_attempt()
        return _log_sklearn(model, signature, example, trusted_types(model, fresh=True))


def _delete_failed_attempt() -> None:
    """Delete the model this thread last logged if it is the active run's and did not finish
    (READY is the only status of a model that loads)."""
    import mlflow

    # MlflowException: it was logged to another store, or is not deleted (it stays, FAILED)
    with contextlib.suppress(MlflowException):
        model = mlflow.last_logged_model()
        run = mlflow.active_run()
        if (model is not None and run is not None and model.source_run_id == run.info.run_id
                and model.status != LoggedModelStatus.READY):
            MlflowClient().delete_logged_model(model.model_id)


def _log_sklearn(model: BaseEstimator, signature: Any, example: pd.DataFrame,
                 types: list[str]) -> ModelInfo:
    import mlflow.sklearn

    with warnings.catch_warnings():
        # MLflow 3.17 compares an input example's columns with a range, which pandas 3
        # deprecates: a warning about MLflow's code, not the operator's data
        warnings.filterwarnings("ignore", message="Operation with range is deprecated")
        return mlflow.sklearn.log_model(
            model, name="model", signature=signature, input_example=example,
            pip_requirements=pip_requirements(), skops_trusted_types=types,
        )
