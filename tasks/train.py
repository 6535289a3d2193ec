"""Model trainer: surrogate models of one objective, cross-validated, scored and logged to MLflow.

``train_models`` fits every model kind (``tasks/models.py``) on a service's trial table (all its
instances; inputs from ``model_registry.features.feature_frame``), logs one MLflow run per kind in
experiment ``knobflow/<service>/models`` with the same params and metric names for every kind and
service, a feature-importance plot, the trial table (``trial_table.parquet``) and the model; then
the best kind is registered and offered to the champion policy of ``model_registry.registry``.
``train_service_models`` is that step of a tuning job, as a Prefect task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sklearn.base import BaseEstimator

from model_registry import registry
from model_registry.features import categorical_columns, feature_frame, workload_columns
from model_registry.fingerprint import fingerprint_hash, from_row
from model_registry.store import (
    client_for,
    default_artifact_root,
    experiment_id,
)
from targets.base import MAXIMIZE, MINIMIZE
from targets.spec import KnobSpec
from tasks.model_runs import KindResult, log_model_run
from tasks.models import (
    KINDS,
    build_model,
    cross_validate,
    data_hash,
    feature_importance,
    fitted_pipeline,
    holdout_mask,
    scores,
    training_set,
)

__all__ = [
    "METRICS", "MIN_ROWS", "TrainReport", "train_models", "train_service_models",
    "why_not_trainable",
]

log = logging.getLogger("knobflow.train")

MIN_ROWS = 12  # clean rows needed before any model is trained
#: Every run of every kind and service logs exactly these metrics (the MLflow compare view).
METRICS = (
    "cv_r2", "cv_spearman", "cv_top_recall", "cv_folds",
    "holdout_r2", "holdout_spearman", "holdout_top_recall",
    "train_r2", "n_train", "n_holdout", "fit_seconds",
)


@dataclass
class TrainReport:
    """What ``train_models`` did: a run per kind, what was registered and what the champion did."""

    service: str
    objective: str
    direction: str
    instance: str
    n_rows: int
    n_train: int
    n_holdout: int
    data_hash: str
    target_column: str
    features: list[str]
    kinds: dict[str, KindResult]
    best_kind: str
    registered_name: str
    registered_version: int
    champion_moved: bool
    champion_reason: str
    seconds: float
    #: Why the new version may never be champion ("" when it may), as its tag ``champion_refused``.
    champion_refused: str = ""
    #: The version the ``champion`` alias points at after the decision ("" when there is none).
    champion_version: str = ""

    @property
    def best(self) -> KindResult:
        return self.kinds[self.best_kind]

    @property
    def line(self) -> str:
        """One line for the job's summary."""
        best = self.best.metrics
        head = (f"{self.registered_name} v{self.registered_version} ({self.best_kind}, "
                f"{self.n_rows} trials): held-out rank correlation "
                f"{best['holdout_spearman']:.2f}, cv R² {best['cv_r2']:.2f}; ")
        if self.champion_refused:
            now = (f"champion stays v{self.champion_version}" if self.champion_version
                   else "the service has no champion")
            return f"{head}not made champion: {self.champion_refused}; {now}"
        return (f"{head}champion {'moved' if self.champion_moved else 'kept'}: "
                f"{self.champion_reason}")

    def to_dict(self) -> dict[str, Any]:
        """What the job's summary keeps of it (``model`` in ``result.json``)."""
        return {
            "name": self.registered_name, "version": self.registered_version,
            "kind": self.best_kind, "n_rows": self.n_rows, "n_holdout": self.n_holdout,
            "champion_moved": self.champion_moved, "champion_reason": self.champion_reason,
            "champion_refused": self.champion_refused, "champion": self.champion_version,
            "metrics": {kind: r.metrics for kind, r in self.kinds.items()},
            "runs": {kind: r.run_id for kind, r in self.kinds.items()}, "line": self.line,
        }


@dataclass
class _Data:
    """The training frame of one training: inputs, targets, the held-out split."""

    rows: pd.DataFrame
    x: pd.DataFrame
    y: np.ndarray
    held: np.ndarray
    target_column: str
    categorical: list[str]

    @property
    def fit(self) -> tuple[pd.DataFrame, np.ndarray]:
        return self.x[~self.held], self.y[~self.held]

    @property
    def holdout(self) -> tuple[pd.DataFrame, np.ndarray]:
        return self.x[self.held], self.y[self.held]


def why_not_trainable(table: pd.DataFrame, objective: str) -> str | None:
    """Why no model of ``objective`` can be trained from ``table`` yet, or None when one can."""
    rows, _, _ = training_set(table, objective)
    if len(rows) < MIN_ROWS:
        return f"{len(rows)} clean trials with a measured {objective}; need {MIN_ROWS} to train"
    return None


def train_models(
    table: pd.DataFrame,
    *,
    spec: KnobSpec,
    objective: str,
    direction: str,
    service: str,
    instance: str,
    workload_fp: Mapping[str, float],
    tracking_uri: str,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    holdout_fraction: float = 0.2,
    workload_limits: Mapping[str, tuple[float, float]] | None = None,
    artifact_root: Path | None = None,
    study: str = "",
) -> TrainReport | None:
    """Train a surrogate of ``objective`` per model kind on ``service``'s trial table (all its
    instances), score each on held-out trials, log one MLflow run per kind, register the best
    (held-out Spearman, then CV R²) and offer it to the champion policy; None when there are
    fewer than ``MIN_ROWS`` clean trials. ``workload_fp``: the current workload of ``instance``
    (tags, the champion's "workload moved" test); rows' own ``workload.*`` are model inputs."""
    _check_arguments(direction, holdout_fraction)
    started = time.perf_counter()
    rows, y, tcol = training_set(table, objective)
    if len(rows) < MIN_ROWS:
        log.info("%s/%s: no model trained: %s", service, objective,
                 why_not_trainable(table, objective))
        return None
    data = _Data(rows, feature_frame(rows, spec, workload_columns(rows)), y,
                 holdout_mask(rows, holdout_fraction), tcol, categorical_columns(spec))
    log_target = bool(np.all(y > 0))
    params = {
        "objective": objective, "direction": direction, "target_column": tcol,
        "n_rows": len(rows), "n_features": data.x.shape[1], "features": list(data.x.columns),
        "data_hash": data_hash(data.x, y), "knob_spec_hash": spec.fingerprint(),
        "workload_fingerprint": fingerprint_hash(workload_fp), "log_target": log_target,
        "holdout_fraction": holdout_fraction, "seed": seed, "service": service,
        "instance": instance, **_trained_on(rows),
    }
    client = client_for(tracking_uri)
    exp = _models_experiment(client, service, artifact_root or default_artifact_root(tracking_uri))
    results = {kind: _fit_and_log(client, exp, kind, data, params, table, tracking_uri, study)
               for kind in kinds}
    best = max(results.values(), key=_rank_key)
    name = registry.model_name(service, objective)
    version_ = _register(client, name, best, data, params, workload_fp)
    x_hold, y_hold = data.holdout
    decision = registry.promote(client, name, version_, x_hold, y_hold, direction,
                                workload_fp, limits=workload_limits)
    return TrainReport(
        service=service, objective=objective, direction=direction, instance=instance,
        n_rows=len(rows), n_train=int((~data.held).sum()), n_holdout=int(data.held.sum()),
        data_hash=params["data_hash"], target_column=tcol, features=params["features"],
        kinds=results, best_kind=best.kind, registered_name=name, registered_version=version_,
        champion_moved=decision.moved, champion_reason=decision.reason,
        seconds=time.perf_counter() - started,
        champion_refused=decision.reason if decision.refused else "",
        champion_version=decision.champion,
    )


def _models_experiment(client: MlflowClient, service: str, artifact_root: Path | None) -> str:
    """The experiment of ``service``'s model runs, described."""
    return experiment_id(client, f"knobflow/{service}/models", artifact_root, (
        f"Surrogate models of service {service}: one run per model kind and training (runs "
        "<service>/<objective>-<kind>), the best registered as knobflow-<service>-<objective> "
        "(Model registry); compare them on the cv_* and holdout_* metrics."))


def _check_arguments(direction: str, holdout_fraction: float) -> None:
    if direction not in (MAXIMIZE, MINIMIZE):
        raise ValueError(f"direction must be {MAXIMIZE} or {MINIMIZE}, got {direction!r}")
    if not 0.0 < holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5), got {holdout_fraction}")


def _fit_and_log(client: MlflowClient, exp: str, kind: str, data: _Data, params: dict[str, Any],
                 table: pd.DataFrame, tracking_uri: str, study: str) -> KindResult:
    """Cross-validate, fit and score one model kind; log its run."""
    t0 = time.perf_counter()
    x_fit, y_fit = data.fit
    x_hold, y_hold = data.holdout
    direction, seed, log_target = params["direction"], params["seed"], params["log_target"]
    categorical = data.categorical
    metrics = cross_validate(kind, x_fit, y_fit, direction, categorical=categorical,
                             seed=seed, log_target=log_target)
    model = build_model(kind, categorical, seed=seed, log_target=log_target)
    model.fit(x_fit, y_fit)
    metrics.update({f"holdout_{k}": v
                    for k, v in scores(y_hold, model.predict(x_hold), direction).items()})
    metrics["train_r2"] = scores(y_fit, model.predict(x_fit), direction)["r2"]
    metrics.update(n_train=float(len(x_fit)), n_holdout=float(len(x_hold)),
                   fit_seconds=time.perf_counter() - t0)
    missing = [m for m in METRICS if m not in metrics]
    if missing:
        raise AssertionError(f"metrics {missing} not computed")
    metrics = {m: metrics[m] for m in METRICS}  # every run logs the same names, in one order
    result = log_model_run(
        client, exp, kind, model, metrics, feature_importance(model),
        params={**params, "model_kind": kind,
                **{f"model.{k}": v for k, v in _hyperparams(model).items()}},
        table=table, x=x_fit, tracking_uri=tracking_uri, study=study,
    )
    log.info("%s/%s %s: %s", params["service"], params["objective"], kind,
             {k: round(v, 3) for k, v in metrics.items()})
    return result


def _register(client: MlflowClient, name: str, best: KindResult, data: _Data,
              params: Mapping[str, Any], workload_fp: Mapping[str, float]) -> int:
    """Register the best kind's model as a new version of ``name`` with its provenance."""
    _, y_fit = data.fit
    mv = registry.register(client, best.run_id, name, {
        "instance": params["instance"], "service": params["service"],
        "objective": params["objective"], "direction": params["direction"],
        "workload_fingerprint": params["workload_fingerprint"],
        "workload": dict(workload_fp), "workloads": _training_workloads(data.rows),
        "knob_spec_hash": params["knob_spec_hash"], "trial_count": len(data.rows),
        "model_kind": best.kind, "holdout_spearman": best.metrics["holdout_spearman"],
        "holdout_r2": best.metrics["holdout_r2"], "cv_r2": best.metrics["cv_r2"],
        "data_hash": params["data_hash"], "target_column": data.target_column,
        "target_min": float(np.min(y_fit)), "target_max": float(np.max(y_fit)),
        "trained_on_instances": params["trained_on_instances"][:TAG_MAX],
        "trained_on_studies": params["trained_on_studies"][:TAG_MAX],
    }, model_uri=best.model_uri)
    return int(mv.version)


def _rank_key(result: KindResult) -> tuple[float, float]:
    def finite(v: float) -> float:
        return v if math.isfinite(v) else -math.inf

    return finite(result.metrics["holdout_spearman"]), finite(result.metrics["cv_r2"])


#: The longest model-version tag written (MLflow's stores accept 5000 characters).
TAG_MAX = 5000


def _trained_on(rows: pd.DataFrame) -> dict[str, str]:
    """What a model learned from (params ``trained_on_instances``, ``trained_on_studies``):
    the distinct instances and studies of its rows, sorted, comma-separated; every host's
    trials of the service when the records are shared."""
    return {f"trained_on_{name}": ",".join(sorted({str(v) for v in rows[column].dropna()}))
            if column in rows.columns else ""
            for column, name in (("instance", "instances"), ("study", "studies"))}


def _training_workloads(rows: pd.DataFrame, limit: int = 100) -> list[dict[str, float]]:
    """The distinct workload fingerprints of the training rows, most frequent first."""
    counts: dict[str, tuple[int, dict[str, float]]] = {}
    for record in rows.to_dict(orient="records"):
        fp = from_row(record)
        if fp:
            key = fingerprint_hash(fp)
            counts[key] = (counts.get(key, (0, fp))[0] + 1, fp)
    ranked = sorted(counts.values(), key=lambda c: -c[0])
    return [fp for _, fp in ranked[:limit]]


def _hyperparams(model: BaseEstimator) -> dict[str, Any]:
    reg = fitted_pipeline(model).named_steps["regressor"]
    keep = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples",
            "min_samples_leaf", "max_features", "random_state")
    params = reg.get_params()
    return {"class": type(reg).__name__, **{k: params[k] for k in keep if k in params}}


@task(name="train-models", cache_policy=NO_CACHE)
def train_service_models(
    table: pd.DataFrame, *, spec: KnobSpec, objective: str, direction: str, service: str,
    instance: str, workload_fp: Mapping[str, float], tracking_uri: str, seed: int,
    workload_limits: Mapping[str, tuple[float, float]], artifact_root: Path, study: str = "",
) -> dict[str, Any]:
    """Train the service's surrogate models on its trial table (all instances) and move the
    registry's champion if the new model validates better; a failure is reported, not fatal.
    The summary's ``model`` entry: the report, ``{"skipped": why}`` or ``{"error": what}``."""
    logger = get_run_logger()
    try:
        report = train_models(
            table, spec=spec, objective=objective, direction=direction, service=service,
            instance=instance, workload_fp=workload_fp, tracking_uri=tracking_uri, seed=seed,
            workload_limits=workload_limits, artifact_root=artifact_root, study=study)
    except Exception as exc:  # the tuning result stands without a model
        logger.warning("training the models of %s failed: %s", service, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    if report is None:
        why = why_not_trainable(table, objective) if not table.empty else "no trials"
        logger.info("models of %s not trained: %s", service, why)
        return {"skipped": why}
    logger.info("models of %s: %s", service, report.line)
    return report.to_dict()
