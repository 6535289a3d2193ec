"""Which knobs a service's model says matter: feature importance per knob.

``feature_importance`` reads it off a fitted surrogate (LightGBM's total gain, a forest's
impurity decrease); training logs it beside every model run (``feature_importance.json``).
``champion_importance`` is that importance of the service's champion (recorded, or computed from
the loaded model when its run lacks the file), per knob, the workload features left out.

A global importance answers "which knobs explain the measured trials", not "which knob moves the
objective from where this job starts": a knob that only matters once another is set (SQLite's
``wal_autocheckpoint`` without WAL) ranks high, and a lever the trials rarely left alone can rank
low (``benchmarks/RESULTS.md``, important knobs first). ``effect_from`` asks the champion the
second question: each knob moved alone over its range from a base config (the default), the
best predicted gain; ``--knobs auto`` ranks by it, the global importance breaking ties.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.pipeline import Pipeline

from model_registry.features import feature_frame
from model_registry.registry import CHAMPION, Champion, load_champion, model_name
from model_registry.store import client_for, process_tracking_uri
from tuners.space import SearchSpace

__all__ = ["IMPORTANCE_ARTIFACT", "KnobImportance", "champion_importance", "effect_from",
           "feature_importance", "fitted_pipeline"]

log = logging.getLogger("knobflow.importance")

#: The artifact of a model run holding its importance per input column (``tasks/model_runs.py``).
IMPORTANCE_ARTIFACT = "feature_importance.json"
#: Values of a numeric knob ``effect_from`` predicts at, evenly over its (log) range.
EFFECT_POINTS = 16
_KNOB = "knob."


def fitted_pipeline(model: BaseEstimator) -> Pipeline:
    """The fitted pipeline inside a surrogate (unwrapped from its log-target wrapper)."""
    return model.regressor_ if isinstance(model, TransformedTargetRegressor) else model


def feature_importance(model: BaseEstimator) -> dict[str, float]:
    """Importance per input column, highest first: LightGBM's total gain, a forest's impurity
    decrease."""
    pipe = fitted_pipeline(model)
    names = [str(n) for n in pipe.named_steps["encode"].get_feature_names_out()]
    reg = pipe.named_steps["regressor"]
    if hasattr(reg, "booster_"):
        values = reg.booster_.feature_importance(importance_type="gain")
    else:
        values = reg.feature_importances_
    return dict(sorted(zip(names, map(float, values), strict=True), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class KnobImportance:
    """A model's importance per knob (highest first) and which model said so."""

    knobs: dict[str, float]
    model: str  # "knobflow-<service>-<objective> v<version> (<kind>)"
    source: str  # "recorded": the run's feature_importance.json; "computed": from the model
    champion: Champion | None = field(default=None, repr=False, compare=False)  # when loaded

    def to_dict(self) -> dict[str, Any]:
        return {"importance": {k: round(v, 6) for k, v in self.knobs.items()},
                "model": self.model, "source": self.source}


def effect_from(champion: Champion, space: SearchSpace, base: Mapping[str, Any],
                workload_fp: Mapping[str, float], *, maximize: bool = True,
                points: int = EFFECT_POINTS) -> dict[str, float]:
    """What each tuned knob of ``space`` can buy alone, from config ``base``, by the champion's
    predictions over ``points`` values of the knob's range (every value of a bool or
    categorical knob), the other knobs at ``base``: the best prediction's gain over the one at
    ``base``, as a share of it (0: the knob alone cannot improve on ``base``); highest first.
    Not the spread: how bad a knob can make things says nothing of what it can buy."""
    rows, owners = [dict(base)], ["base"]
    for knob in space.tuned:
        if knob.is_numeric:
            values: list[Any] = [knob.value_at(i / (points - 1)) for i in range(points)]
            values = [round(v) for v in values] if knob.type == "int" else values
        else:
            values = list(knob.choices)
        rows += [{**base, knob.name: v} for v in values]
        owners += [knob.name] * len(values)
    predicted = champion.predict(feature_frame(pd.DataFrame(rows), space.spec, workload_fp))
    owner = np.asarray(owners)
    at_base = float(predicted[0])
    scale = abs(at_base) or 1.0
    effect = {}
    for name in space.names:
        mine = predicted[owner == name]
        gain = float(np.max(mine)) - at_base if maximize else at_base - float(np.min(mine))
        effect[name] = max(0.0, gain) / scale
    return dict(sorted(effect.items(), key=lambda kv: -kv[1]))


def knob_importance(columns: dict[str, float]) -> dict[str, float]:
    """Per-column importance as per-knob importance, highest first (workload columns dropped)."""
    knobs = {c.removeprefix(_KNOB): float(v) for c, v in columns.items() if c.startswith(_KNOB)}
    return dict(sorted(knobs.items(), key=lambda kv: -kv[1]))


def champion_importance(tracking_uri: str, service: str, objective: str) -> KnobImportance | None:
    """The importance per knob of the champion model of ``service``'s ``objective``; None when
    the service has no champion for it."""
    client = client_for(tracking_uri)
    name = model_name(service, objective)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no champion alias on it
        return None
    kind = (version.tags or {}).get("model_kind", "?")
    label = f"{name} v{version.version} ({kind})"
    recorded = _recorded(tracking_uri, version.run_id) if version.run_id else None
    champion = load_champion(tracking_uri, service, objective)
    if recorded is not None:
        return KnobImportance(knob_importance(recorded), label, "recorded", champion)
    if champion is None:
        return None
    return KnobImportance(knob_importance(feature_importance(champion.model)),
                          f"{name} v{champion.version} ({kind})", "computed", champion)


def _recorded(tracking_uri: str, run_id: str) -> dict[str, float] | None:
    """The importance a model run logged, or None when it has none that can be read."""
    with tempfile.TemporaryDirectory(prefix="knobflow-importance-") as tmp:
        try:
            with process_tracking_uri(tracking_uri):
                path = download_artifacts(run_id=run_id, artifact_path=IMPORTANCE_ARTIFACT,
                                          dst_path=tmp, tracking_uri=tracking_uri)
            data = json.loads(Path(path).read_text("utf-8"))
        except (MlflowException, OSError, ValueError) as exc:
            log.info("run %s: no readable %s (%s); computing it from the model", run_id,
                     IMPORTANCE_ARTIFACT, exc)
            return None
    if not isinstance(data, dict):
        return None
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}
