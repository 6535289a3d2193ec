"""Which knobs a service's model says matter: feature importance per knob.

``feature_importance`` reads it off a fitted surrogate (LightGBM's total gain, a forest's
impurity decrease); training logs it beside every model run (``feature_importance.json``).
``champion_importance`` is what ``--knobs auto`` starts from: the champion's recorded importance,
or, when its run lacks the file, the importance of the loaded champion itself; per knob, the
workload features left out.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.pipeline import Pipeline

from model_registry.registry import CHAMPION, load_champion, model_name
from model_registry.store import client_for, process_tracking_uri

__all__ = ["IMPORTANCE_ARTIFACT", "KnobImportance", "champion_importance", "feature_importance",
           "fitted_pipeline"]

log = logging.getLogger("knobflow.importance")

#: The artifact of a model run holding its importance per input column (``tasks/model_runs.py``).
IMPORTANCE_ARTIFACT = "feature_importance.json"
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

    def to_dict(self) -> dict[str, Any]:
        return {"importance": {k: round(v, 6) for k, v in self.knobs.items()},
                "model": self.model, "source": self.source}


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
    if recorded is not None:
        return KnobImportance(knob_importance(recorded), label, "recorded")
    champion = load_champion(tracking_uri, service, objective)
    if champion is None:
        return None
    return KnobImportance(knob_importance(feature_importance(champion.model)),
                          f"{name} v{champion.version} ({kind})", "computed")


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
