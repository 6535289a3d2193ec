"""Surrogate models and how good they are: the model, cross-validation, scores, the training set.

* ``build_model``: a scikit-learn Pipeline made of scikit-learn and LightGBM classes only (so a
  process without knobflow can load it): ordinal-encoded categorical knobs, numbers passed
  through, then LightGBM (``lightgbm``) or a random forest (``sklearn``, the baseline), on
  log(target) when every target is positive (throughput-like metrics span orders of magnitude);
* ``cross_validate`` and ``scores``: out-of-fold R², Spearman and top-10% recall;
* ``training_set`` and ``holdout_mask``: what a model learns from, and which trials it is judged on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from model_registry.importance import feature_importance, fitted_pipeline
from model_registry.registry import holdout_scores
from targets.base import MAXIMIZE
from tuners.trials import training_rows

__all__ = [
    "KINDS", "TOP_SHARE", "build_model", "cross_validate", "data_hash", "feature_importance",
    "fitted_pipeline", "holdout_mask", "scores", "target_column", "top_recall", "training_set",
]

TOP_SHARE = 0.1  # "the best configs": the best 10%, at least one
KINDS = ("lightgbm", "sklearn")


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
    rho, r2 = holdout_scores(y_true, y_pred)
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
            {k: v for k, v in record.items() if not pd.isna(v)}, sort_keys=True, default=str
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
