"""Model trainer: surrogate models of one objective, cross-validated, scored and logged to MLflow.

Owns:

* the model inputs, ``feature_frame``: one row per config, ``knob.<name>`` columns for every knob
  of the spec (sorted) then ``workload.<feature>`` columns (sorted). It is the contract shared
  with transfer and recommendation, which predict on candidate configs;
* the model: a scikit-learn Pipeline made of scikit-learn and LightGBM classes only (so a process
  without knobflow can load it): ordinal-encoded categorical knobs, numbers passed through, then
  LightGBM (``lightgbm``) or a random forest (``sklearn``, the baseline), on log(target) when
  every target is positive (throughput-like metrics span orders of magnitude);
* cross-validation (out-of-fold R², Spearman and top-10% recall) and held-out scores;
* ``train_models``: one MLflow run per model kind in experiment ``knobflow/<service>/models``
  with the same params and metric names for every kind and service, a feature-importance plot,
  the trial table (``trial_table.parquet``) and the model; then the best kind is registered and
  offered to the champion policy of ``model_registry.registry``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

import flows.settings  # noqa: F401 - telemetry off before mlflow is used
from model_registry import registry
from model_registry.fingerprint import fingerprint_hash, from_row
from targets.base import MAXIMIZE, MINIMIZE
from targets.spec import Knob, KnobSpec
from tasks.table import training_rows

log = logging.getLogger("knobflow.train")

MIN_ROWS = 12  # clean rows needed before any model is trained
TOP_SHARE = 0.1  # "the best configs": the best 10%, at least one
KINDS = ("lightgbm", "sklearn")
#: Every run of every kind and service logs exactly these metrics (the MLflow compare view).
METRICS = (
    "cv_r2", "cv_spearman", "cv_top_recall", "cv_folds",
    "holdout_r2", "holdout_spearman", "holdout_top_recall",
    "train_r2", "n_train", "n_holdout", "fit_seconds",
)
#: Packages the logged model needs; pinned to what trained it (MLflow does not infer them).
REQUIREMENTS = ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "skops")
#: Classes the skops serializer may load beyond its built-in safe set.
_TRUSTED_PREFIXES = ("sklearn.", "lightgbm.", "numpy.", "collections.OrderedDict", "builtins.")
_PARAM_MAX = 6000


# -- model inputs ----------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _category(value: Any, knob: Knob) -> Any:
    """The spec's own value for ``value`` (4096.0 read back from Parquet is the choice 4096)."""
    for same in (
        lambda c: c == value and type(c) is type(value),
        lambda c: c == value,
        lambda c: str(c) == str(value),
    ):
        for choice in knob.values:
            if same(choice):
                return choice
    return value


def _knob_column(values: Sequence[Any], knob: Knob) -> pd.Series:
    """One knob's values as model input: numbers as floats, bools as 0/1, categories as text;
    a missing value is the knob's default."""
    coerced = [knob.default if _missing(v) else knob.coerce(v) for v in values]
    if knob.type == "categorical":
        return pd.Series([str(_category(v, knob)) for v in coerced], dtype=object)
    if knob.type == "bool":
        return pd.Series([1.0 if v is True or v == 1 else 0.0 for v in coerced], dtype=float)
    numbers = pd.to_numeric(pd.Series(coerced, dtype=object), errors="coerce")
    return numbers.fillna(float(knob.default)).astype(float)


def feature_frame(
    configs: pd.DataFrame,
    spec: KnobSpec,
    workload: Mapping[str, float] | pd.DataFrame,
) -> pd.DataFrame:
    """Model inputs for ``configs``: ``knob.<name>`` for every knob of ``spec`` in sorted order
    (a knob ``configs`` lacks gets its default; bools as 0/1 floats, ints and floats as floats,
    categoricals as strings), then ``workload.<feature>`` sorted: one fingerprint broadcast to
    every row, or a frame of per-row features (``workload.*`` or plain columns, matched by
    position). ``configs`` may name its knobs ``knob.<name>`` or plainly ``<name>``."""
    n = len(configs)
    columns: dict[str, pd.Series] = {}
    for name in sorted(spec.names):
        knob = spec[name]
        for col in (f"knob.{name}", name):
            if col in configs.columns:
                values = list(configs[col])
                break
        else:
            values = [knob.default] * n
        columns[f"knob.{name}"] = _knob_column(values, knob)
    if isinstance(workload, pd.DataFrame):
        if len(workload) != n:
            raise ValueError(f"workload frame has {len(workload)} rows for {n} configs")
        feats = {
            c.removeprefix("workload."): pd.to_numeric(workload[c], errors="coerce")
            for c in workload.columns
        }
        for feat in sorted(feats):
            columns[f"workload.{feat}"] = pd.Series(
                feats[feat].to_numpy(dtype=float), dtype=float
            )
    else:
        for feat in sorted(workload):
            columns[f"workload.{feat}"] = pd.Series([float(workload[feat])] * n, dtype=float)
    frame = pd.DataFrame(columns)
    frame.index = configs.index
    return frame


def categorical_columns(spec: KnobSpec) -> list[str]:
    return sorted(f"knob.{k.name}" for k in spec if k.type == "categorical")


# -- the model -------------------------------------------------------------------------------------
def build_model(
    kind: str, categorical: Sequence[str], *, seed: int = 0, log_target: bool = False
) -> BaseEstimator:
    """An unfitted surrogate of ``kind`` (``lightgbm`` | ``sklearn``): categorical columns
    ordinal-encoded (unseen values -> -1), the rest passed through, then the regressor; fitted on
    log(y) and answering exp(prediction) when ``log_target``."""
    encode = ColumnTransformer(
        [("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                        dtype=float), list(categorical))],
        remainder="passthrough", verbose_feature_names_out=False,
    )
    if kind == "lightgbm":
        from lightgbm import LGBMRegressor

        regressor: BaseEstimator = LGBMRegressor(
            n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=3,
            subsample=1.0, colsample_bytree=1.0, random_state=seed, deterministic=True,
            n_jobs=1, verbose=-1,
        )
    elif kind == "sklearn":
        regressor = RandomForestRegressor(
            n_estimators=100, min_samples_leaf=2, max_features=0.7, random_state=seed, n_jobs=1,
        )
    else:
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    pipeline = Pipeline([("encode", encode), ("regressor", regressor)])
    if not log_target:
        return pipeline
    return TransformedTargetRegressor(
        regressor=pipeline, func=np.log, inverse_func=np.exp, check_inverse=False
    )


def _fitted_pipeline(model: BaseEstimator) -> Pipeline:
    return model.regressor_ if isinstance(model, TransformedTargetRegressor) else model


def feature_importance(model: BaseEstimator) -> dict[str, float]:
    """Importance per input column: LightGBM's total gain, a forest's impurity decrease."""
    pipe = _fitted_pipeline(model)
    names = [str(n) for n in pipe.named_steps["encode"].get_feature_names_out()]
    reg = pipe.named_steps["regressor"]
    if hasattr(reg, "booster_"):
        values = reg.booster_.feature_importance(importance_type="gain")
    else:
        values = reg.feature_importances_
    return dict(sorted(zip(names, map(float, values), strict=True), key=lambda kv: -kv[1]))


# -- scores ----------------------------------------------------------------------------------------
def top_recall(
    y_true: Sequence[float], y_pred: Sequence[float], direction: str, share: float = TOP_SHARE
) -> float:
    """Of the truly best ``share`` of rows (at least one), the share also predicted among the
    best ``share``. Best is highest when maximizing, lowest when minimizing."""
    yt, yp = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if len(yt) == 0:
        return 0.0
    k = max(1, round(len(yt) * share))
    sign = -1.0 if direction == MAXIMIZE else 1.0
    best_true = set(np.argsort(sign * yt, kind="stable")[:k].tolist())
    best_pred = set(np.argsort(sign * yp, kind="stable")[:k].tolist())
    return len(best_true & best_pred) / k


def scores(
    y_true: Sequence[float], y_pred: Sequence[float], direction: str
) -> dict[str, float]:
    """R², Spearman (0 when the prediction is constant: it ranks nothing) and top recall."""
    rho, r2 = registry.holdout_scores(y_true, y_pred)
    return {"r2": r2, "spearman": rho, "top_recall": top_recall(y_true, y_pred, direction)}


def cross_validate(
    kind: str, x: pd.DataFrame, y: np.ndarray, direction: str, *,
    categorical: Sequence[str], seed: int = 0, log_target: bool = False,
) -> dict[str, float]:
    """K-fold (5, fewer when rows are few; shuffled with ``seed``) out-of-fold predictions
    scored: ``cv_r2``, ``cv_spearman``, ``cv_top_recall`` and ``cv_folds``."""
    folds = max(2, min(5, len(x) // 5))
    oof = np.empty(len(x), dtype=float)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        model = build_model(kind, categorical, seed=seed, log_target=log_target)
        model.fit(x.iloc[train], y[train])
        oof[test] = model.predict(x.iloc[test])
    out = {f"cv_{k}": v for k, v in scores(y, oof, direction).items()}
    out["cv_folds"] = float(folds)
    return out


# -- training data ---------------------------------------------------------------------------------
def target_column(table: pd.DataFrame, objective: str) -> str:
    """What a model learns: the measured ``metric.<objective>`` when the table has it, else the
    ``value`` the tuner was told (which may be a ratio to a baseline)."""
    col = f"metric.{objective}"
    return col if col in table.columns and table[col].notna().any() else "value"


def training_set(table: pd.DataFrame, objective: str) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The rows a model of ``objective`` learns from, their targets and the target's column:
    clean rows (``training_rows``) with a finite target. ``value`` is only what the tuner was
    told about its own objective, so without ``metric.<objective>`` only the rows of jobs that
    tuned ``objective`` count."""
    if table.empty or "status" not in table.columns:
        return table.iloc[:0], np.empty(0), "value"
    rows = training_rows(table)
    col = target_column(rows, objective)
    if col == "value" and "objective" in rows.columns:
        rows = rows[rows["objective"].isna() | (rows["objective"] == objective)]
    y = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(y)
    return rows[keep].reset_index(drop=True), y[keep], col


def data_hash(x: pd.DataFrame, y: Sequence[float]) -> str:
    """sha256 of the training frame (inputs and target, in order)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(x.columns)).encode())
    h.update(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes())
    h.update(np.asarray(y, dtype=float).tobytes())
    return h.hexdigest()


def _row_keys(rows: pd.DataFrame) -> np.ndarray:
    """A number in [0, 1) per row from what identifies it (instance, study, trial, knobs): a
    row keeps the same number whatever else the table holds."""
    ident = [c for c in ("service", "instance", "study", "trial", "source") if c in rows.columns]
    knobs = sorted(c for c in rows.columns if c.startswith("knob."))
    keys = []
    for record in rows[ident + knobs].to_dict(orient="records"):
        text = json.dumps(
            {k: v for k, v in record.items() if not _missing(v)}, sort_keys=True, default=str
        )
        keys.append(int(hashlib.sha256(text.encode()).hexdigest()[:13], 16) / 16**13)
    return np.asarray(keys, dtype=float)


def holdout_mask(rows: pd.DataFrame, fraction: float, minimum: int = 3) -> np.ndarray:
    """Which rows are held out: those whose identity hash falls below ``fraction`` (at least
    ``minimum``, at most half the rows: the smallest hashes). A trial stays held out as the table
    grows, so a new model and the champion are compared on trials neither was trained on."""
    keys = _row_keys(rows)
    count = int(np.clip((keys < fraction).sum(), min(minimum, len(keys) // 2), len(keys) // 2))
    mask = np.zeros(len(keys), dtype=bool)
    mask[np.argsort(keys, kind="stable")[:count]] = True
    return mask


def _workload_columns(rows: pd.DataFrame) -> pd.DataFrame:
    cols = sorted(c for c in rows.columns if c.startswith("workload."))
    numeric = rows[cols].apply(pd.to_numeric, errors="coerce") if cols else rows[cols]
    return numeric.loc[:, numeric.notna().any()] if cols else numeric


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


# -- MLflow ----------------------------------------------------------------------------------------
def pip_requirements() -> list[str]:
    """Exact pins of what the logged model needs to load, from the installed versions."""
    pins = []
    for dist in REQUIREMENTS:
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pins.append(dist)
    return pins


def _trusted_types(model: BaseEstimator) -> list[str]:
    """The classes skops must be told to trust to load ``model``: only sklearn/LightGBM/numpy."""
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    bad = [t for t in found if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise TypeError(f"the model holds types a loader should not trust: {bad}")
    return sorted(found)


def _artifact_root(tracking_uri: str) -> Path | None:
    """Artifacts beside an embedded SQLite store (``<home>/artifacts``, as tuning jobs use);
    a tracking server keeps its own default."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    return None


def _experiment_id(client: Any, name: str, artifact_root: Path | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        if artifact_root is None:
            return str(client.create_experiment(name))
        artifact_root.mkdir(parents=True, exist_ok=True)
        return str(client.create_experiment(name, artifact_location=artifact_root.as_uri()))
    except MlflowException:  # created by a concurrent trainer
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _param(key: str, value: Any) -> Param:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return Param(key, text[:_PARAM_MAX])


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


# -- training --------------------------------------------------------------------------------------
@dataclass
class KindResult:
    """One model kind's run."""

    kind: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    importance: dict[str, float] = field(default_factory=dict)


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

    @property
    def best(self) -> KindResult:
        return self.kinds[self.best_kind]


def why_not_trainable(table: pd.DataFrame, objective: str) -> str | None:
    """Why no model of ``objective`` can be trained from ``table`` yet, or None when one can."""
    rows, _, _ = training_set(table, objective)
    if len(rows) < MIN_ROWS:
        return f"{len(rows)} clean trials with a measured {objective}; need {MIN_ROWS} to train"
    return None


def _rank_key(result: KindResult) -> tuple[float, float]:
    def finite(v: float) -> float:
        return v if math.isfinite(v) else -math.inf

    return finite(result.metrics["holdout_spearman"]), finite(result.metrics["cv_r2"])


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
) -> TrainReport | None:
    """Train a surrogate of ``objective`` per model kind on ``service``'s trial table (all its
    instances), cross-validate and score each on held-out trials, log one MLflow run per kind,
    register the best (held-out Spearman, then CV R²) and offer it to the champion policy.
    None, with the reason logged, when there are fewer than ``MIN_ROWS`` clean trials.

    ``workload_fp`` is the current workload of ``instance`` (tags, and the champion's
    "workload moved" test); every row's own ``workload.*`` features are model inputs.
    Artifacts go to ``artifact_root`` (default: ``artifacts/`` beside a SQLite store)."""
    if direction not in (MAXIMIZE, MINIMIZE):
        raise ValueError(f"direction must be {MAXIMIZE} or {MINIMIZE}, got {direction!r}")
    if not 0.0 < holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5), got {holdout_fraction}")
    started = time.perf_counter()
    rows, y_all, tcol = training_set(table, objective)
    if len(rows) < MIN_ROWS:
        log.info("%s/%s: no model trained: %s", service, objective,
                 why_not_trainable(table, objective))
        return None
    x_all = feature_frame(rows, spec, _workload_columns(rows))
    features = list(x_all.columns)
    categorical = categorical_columns(spec)
    log_target = bool(np.all(y_all > 0))
    held = holdout_mask(rows, holdout_fraction)
    x_fit, y_fit = x_all[~held], y_all[~held]
    x_hold, y_hold = x_all[held], y_all[held]
    digest = data_hash(x_all, y_all)
    workloads = _training_workloads(rows)
    common_params = {
        "objective": objective, "direction": direction, "target_column": tcol,
        "n_rows": len(rows), "n_features": len(features), "features": features,
        "data_hash": digest, "knob_spec_hash": spec.fingerprint(),
        "workload_fingerprint": fingerprint_hash(workload_fp), "log_target": log_target,
        "holdout_fraction": holdout_fraction, "seed": seed, "service": service,
        "instance": instance,
    }

    client = registry.client_for(tracking_uri)
    exp = _experiment_id(client, f"knobflow/{service}/models",
                         artifact_root or _artifact_root(tracking_uri))
    results: dict[str, KindResult] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        metrics = cross_validate(kind, x_fit, y_fit, direction, categorical=categorical,
                                 seed=seed, log_target=log_target)
        model = build_model(kind, categorical, seed=seed, log_target=log_target)
        model.fit(x_fit, y_fit)
        metrics.update({f"holdout_{k}": v
                        for k, v in scores(y_hold, model.predict(x_hold), direction).items()})
        metrics["train_r2"] = scores(y_fit, model.predict(x_fit), direction)["r2"]
        metrics.update(n_train=float(len(x_fit)), n_holdout=float(len(x_hold)),
                       fit_seconds=time.perf_counter() - t0)
        importance = feature_importance(model)
        results[kind] = _log_run(
            client, exp, kind, model, metrics, importance,
            params={**common_params, "model_kind": kind,
                    **{f"model.{k}": v for k, v in _hyperparams(model).items()}},
            table=table, x=x_fit, y=y_fit, tracking_uri=tracking_uri,
        )
        log.info("%s/%s %s: %s", service, objective, kind,
                 {k: round(v, 3) for k, v in metrics.items()})

    best = max(results.values(), key=_rank_key)
    name = registry.model_name(service, objective)
    mv = registry.register(client, best.run_id, name, {
        "instance": instance, "service": service, "objective": objective,
        "direction": direction, "workload_fingerprint": fingerprint_hash(workload_fp),
        "workload": dict(workload_fp), "workloads": workloads,
        "knob_spec_hash": spec.fingerprint(), "trial_count": len(rows),
        "model_kind": best.kind, "holdout_spearman": best.metrics["holdout_spearman"],
        "holdout_r2": best.metrics["holdout_r2"], "cv_r2": best.metrics["cv_r2"],
        "data_hash": digest, "target_column": tcol,
        "target_min": float(np.min(y_fit)), "target_max": float(np.max(y_fit)),
    }, model_uri=best.model_uri)
    moved, why = registry.promote(client, name, mv.version, x_hold, y_hold, direction,
                                  workload_fp, limits=workload_limits)
    return TrainReport(
        service=service, objective=objective, direction=direction, instance=instance,
        n_rows=len(rows), n_train=len(x_fit), n_holdout=len(x_hold), data_hash=digest,
        target_column=tcol, features=features, kinds=results, best_kind=best.kind,
        registered_name=name, registered_version=int(mv.version), champion_moved=moved,
        champion_reason=why, seconds=time.perf_counter() - started,
    )


def _hyperparams(model: BaseEstimator) -> dict[str, Any]:
    reg = _fitted_pipeline(model).named_steps["regressor"]
    keep = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples",
            "min_samples_leaf", "max_features", "random_state")
    params = reg.get_params()
    return {"class": type(reg).__name__, **{k: params[k] for k in keep if k in params}}


def _log_run(
    client: Any, experiment_id: str, kind: str, model: BaseEstimator,
    metrics: Mapping[str, float], importance: Mapping[str, float], *,
    params: Mapping[str, Any], table: pd.DataFrame, x: pd.DataFrame, y: np.ndarray,
    tracking_uri: str,
) -> KindResult:
    """One MLflow run: params, metrics, importance plot, trial table, then the model."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    service, objective = params["service"], params["objective"]
    run = client.create_run(experiment_id, run_name=f"{objective}-{kind}", tags={
        "knobflow.service": str(service), "knobflow.instance": str(params["instance"]),
        "knobflow.objective": str(objective), "knobflow.model_kind": kind,
        "knobflow.data_hash": str(params["data_hash"]),
    })
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        missing = [m for m in METRICS if m not in metrics]
        if missing:
            raise AssertionError(f"metrics {missing} not computed")
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(metrics[k]), now, 0) for k in METRICS],
            params=[_param(k, v) for k, v in params.items()],
        )
        with tempfile.TemporaryDirectory(prefix="knobflow-train-") as tmp:
            png = Path(tmp) / "feature_importance.png"
            _importance_png(importance, f"{service} {objective}: {kind}", png)
            (Path(tmp) / "feature_importance.json").write_text(
                json.dumps(importance, indent=1), "utf-8")
            table.to_parquet(Path(tmp) / registry.TABLE_ARTIFACT, index=False)
            for file in ("feature_importance.png", "feature_importance.json",
                         registry.TABLE_ARTIFACT):
                client.log_artifact(run_id, str(Path(tmp) / file))
        sample = x.head(50)
        signature = infer_signature(sample, model.predict(sample))
        with registry.process_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id), \
                warnings.catch_warnings():
            # MLflow 3.17 compares an input example's columns with a range, which pandas 3
            # deprecates: a warning about MLflow's code, not the operator's data
            warnings.filterwarnings("ignore", message="Operation with range is deprecated")
            info = mlflow.sklearn.log_model(
                model, name="model", signature=signature, input_example=x.head(3),
                pip_requirements=pip_requirements(), skops_trusted_types=_trusted_types(model),
            )
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return KindResult(kind=kind, run_id=run_id, model_uri=info.model_uri,
                      metrics=dict(metrics), importance=dict(importance))
