"""The model registry: surrogate models named by service and objective, and who is champion.

Owns the MLflow registry side of knobflow: the registered-model name of a service's objective
(``model_name``), registering a trained model with its provenance tags (``register``), the
champion policy (``promote``: the alias ``champion`` moves only to a model that validates better
on the same held-out trials, or when there is none, or when the workload moved, and never to one
validated on too few held-out trials or ranking them no better than chance; one decision at a time
per store), loading the champion strictly by ``models:/<name>@champion`` in any process
(``load_champion``) or any version (``load_version``), and the trial table stored beside the
champion's run so a service's replicas reuse its data (``champion_table``).

Every MLflow call goes through an explicit ``MlflowClient(tracking_uri, registry_uri)`` or passes
the URIs explicitly: nothing here sets MLflow's process-wide tracking URI.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from scipy.stats import spearmanr
from sklearn.metrics import r2_score

from model_registry.fingerprint import CLOSE, distance, fingerprint_hash
from model_registry.store import champion_lock, client_for, process_tracking_uri
from tuners.trials import as_table

log = logging.getLogger("knobflow.registry")

CHAMPION = "champion"
TABLE_ARTIFACT = "trial_table.parquet"
#: Spearman differences smaller than this are a tie, decided by R².
SPEARMAN_TIE = 0.01
#: A version whose held-out Spearman is below this never becomes champion, not even the first one
#: or one for a moved workload: it would steer transfer no better than chance.
SPEARMAN_FLOOR = 0.2
#: A version validated on fewer held-out trials than this never becomes champion either: a rank
#: correlation of 3 or 4 points says nothing (fresh services saw -0.5 and -0.8 pass unjudged).
FLOOR_MIN_ROWS = 5
#: The version tag saying why a version may not be champion (absent on versions that may).
REFUSED_TAG = "champion_refused"
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_ALREADY = "RESOURCE_ALREADY_EXISTS"
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def model_name(service: str, objective: str) -> str:
    """The registered-model name of ``service``'s ``objective``: ``knobflow-<service>-<objective>``
    (characters a registry name may not hold become ``-``)."""
    parts = [_NAME_BAD.sub("-", str(p)).strip("-") or "x" for p in (service, objective)]
    return "knobflow-" + "-".join(parts)


def _tag_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _logged_model_uri(client: MlflowClient, run_id: str) -> str:
    """The URI of the model logged by ``run_id`` (MLflow 3: ``models:/m-...``)."""
    outputs = client.get_run(run_id).outputs
    models = list(outputs.model_outputs) if outputs and outputs.model_outputs else []
    if not models:
        raise ValueError(f"run {run_id} logged no model; log it with mlflow.sklearn.log_model")
    return f"models:/{models[-1].model_id}"


def register(
    client: MlflowClient,
    run_id: str,
    name: str,
    tags: Mapping[str, Any],
    model_uri: str | None = None,
) -> ModelVersion:
    """Register the model logged by ``run_id`` as a new version of ``name`` with ``tags``
    (provenance: ``instance``, ``workload_fingerprint``, ``workload``, ``workloads``,
    ``knob_spec_hash``, ``trial_count``, ``model_kind``, ``holdout_spearman``, ``holdout_r2``,
    ``data_hash``). ``model_uri`` is what ``log_model`` returned; found from the run if omitted."""
    uri = model_uri or _logged_model_uri(client, run_id)
    try:
        client.create_registered_model(
            name, description="knobflow surrogate model: predicts one objective from knobs "
            "and workload features (tasks/train.py)",
        )
    except MlflowException as exc:
        if exc.error_code != _ALREADY:
            raise
    model_id = uri.removeprefix("models:/") if uri.startswith("models:/m-") else None
    with process_tracking_uri(client.tracking_uri):
        return client.create_model_version(
            name, uri, run_id=run_id, tags={k: _tag_text(v) for k, v in tags.items()},
            model_id=model_id,
        )


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version the ``champion`` alias points at, or None (no model, or no alias)."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == _NOT_FOUND:
            return None
        raise
    if CHAMPION not in (registered.aliases or {}):
        return None
    return client.get_model_version_by_alias(name, CHAMPION)


def _load_sklearn(client: MlflowClient, uri: str) -> tuple[Any, str]:
    """Download and load the scikit-learn model at ``uri`` (``models:/...``); also returns the
    logged model id it holds (to tell which version an alias resolved to)."""
    import mlflow.sklearn  # the flavor import is slow; only when loading

    tracking = client.tracking_uri
    with tempfile.TemporaryDirectory(prefix="knobflow-model-") as tmp:
        with process_tracking_uri(tracking):
            local = download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=tracking, registry_uri=tracking,
            )
        text = (Path(local) / "MLmodel").read_text("utf-8")
        found = re.search(r"^model_id:\s*(\S+)", text, re.MULTILINE)
        return mlflow.sklearn.load_model(local), found.group(1) if found else ""


def model_features(model: Any) -> list[str]:
    """The input columns a loaded model was fitted on, in order."""
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else []


@dataclass
class Champion:
    """The champion model of a service's objective, as loaded from the registry."""

    name: str
    version: int
    run_id: str
    tags: dict[str, str]
    model: Any  # a fitted scikit-learn estimator (Pipeline / TransformedTargetRegressor)
    features: list[str] = field(default_factory=list)
    uri: str = ""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted objective for each row of ``frame`` (``features.feature_frame`` output;
        extra columns are ignored, a missing one is a KeyError naming it), within the range of
        the targets it was trained on (tags ``target_min``, ``target_max``): boosted trees add
        up leaves of configs never seen together, and on a log target that overshoots to
        several times the best value ever measured; ranking thousands of candidates picks
        exactly those. The raw model (``self.model``) is not clipped."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise KeyError(
                f"champion {self.name} v{self.version} needs columns {missing}; build the "
                "frame with model_registry.features.feature_frame for the same knob spec and "
                "workload features"
            )
        x = frame[self.features] if self.features else frame
        predicted = np.asarray(self.model.predict(x), dtype=float)
        low, high = self.target_range
        return np.clip(predicted, low, high)

    @property
    def target_range(self) -> tuple[float, float]:
        """The smallest and largest target the champion was trained on (infinite if unknown)."""
        def tag(key: str, missing: float) -> float:
            try:
                value = float(self.tags.get(key, missing))
            except ValueError:
                return missing
            return value if math.isfinite(value) else missing

        return tag("target_min", -math.inf), tag("target_max", math.inf)

    @property
    def workload(self) -> dict[str, float]:
        """The workload fingerprint the champion was registered for."""
        return json.loads(self.tags.get("workload") or "{}")

    @property
    def workloads(self) -> list[dict[str, float]]:
        """Every workload fingerprint in the champion's training data."""
        return json.loads(self.tags.get("workloads") or "[]")


def load_champion(tracking_uri: str, service: str, objective: str) -> Champion | None:
    """The champion of ``service``'s ``objective`` loaded by ``models:/<name>@champion``; None
    when the model or the alias does not exist. Any other failure is raised."""
    client = client_for(tracking_uri)
    name = model_name(service, objective)
    uri = f"models:/{name}@{CHAMPION}"
    for _ in range(3):  # the alias may move between reading it and downloading it
        version = champion_version(client, name)
        if version is None:
            return None
        model, model_id = _load_sklearn(client, uri)
        if not model_id or version.source == f"models:/{model_id}":
            break
    return Champion(
        name=name, version=int(version.version), run_id=version.run_id or "",
        tags=dict(version.tags or {}), model=model, features=model_features(model), uri=uri,
    )


def load_version(tracking_uri: str, name: str, version: int | str) -> Champion:
    """Version ``version`` of registered model ``name``, loaded as the champion is, whether or
    not it is champion (the model a job trained); MLflow's error when there is no such one."""
    client = client_for(tracking_uri)
    found = client.get_model_version(name, str(version))
    model, _ = _load_sklearn(client, f"models:/{name}/{version}")
    return Champion(name=name, version=int(found.version), run_id=found.run_id or "",
                    tags=dict(found.tags or {}), model=model, features=model_features(model),
                    uri=f"models:/{name}/{version}")


def champion_table(tracking_uri: str, service: str, objective: str) -> pd.DataFrame:
    """The trial table stored beside the champion (its run's ``trial_table.parquet``): the data
    a sibling instance reuses. Empty when there is no champion."""
    client = client_for(tracking_uri)
    version = champion_version(client, model_name(service, objective))
    if version is None or not version.run_id:
        return as_table([])
    with tempfile.TemporaryDirectory(prefix="knobflow-table-") as tmp:
        with process_tracking_uri(tracking_uri):
            path = download_artifacts(
                run_id=version.run_id, artifact_path=TABLE_ARTIFACT, dst_path=tmp,
                tracking_uri=tracking_uri,
            )
        return pd.read_parquet(path)


def holdout_scores(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[float, float]:
    """(Spearman, R²) of predictions on held-out rows; a constant prediction ranks nothing: 0."""
    yt, yp = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if len(yt) < 2 or not np.all(np.isfinite(yp)):
        return 0.0, float("-inf")
    if np.ptp(yp) == 0 or np.ptp(yt) == 0:  # Spearman is undefined: nothing is ranked
        return 0.0, float(r2_score(yt, yp))
    rho = float(spearmanr(yt, yp).statistic)
    return (0.0 if math.isnan(rho) else rho), float(r2_score(yt, yp))


@dataclass(frozen=True)
class Decision:
    """What the champion policy decided for a version: whether the alias moved to it, why, and
    whether the version was refused outright (it cannot be champion: too few held-out trials to
    validate it, or a rank correlation below the floor); ``champion`` is the version the alias
    points at afterwards ("" when the service has none)."""

    moved: bool
    reason: str
    refused: bool = False
    champion: str = ""


def _better(new: tuple[float, float], old: tuple[float, float]) -> bool:
    """Spearman decides; within ``SPEARMAN_TIE`` of each other, R² does."""
    if abs(new[0] - old[0]) > SPEARMAN_TIE:
        return new[0] > old[0]
    return new[1] > old[1]


def _workload_moved(
    champion: ModelVersion, workload_fp: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]] | None,
) -> str | None:
    """Why the workload moved away from everything the champion was trained on, or None."""
    try:
        trained = json.loads((champion.tags or {}).get("workloads") or "null")
    except ValueError:
        trained = None
    if not trained or not workload_fp:
        return None  # unknown: the held-out comparison decides
    nearest = min(distance(fp, workload_fp, limits) for fp in trained)
    if nearest <= CLOSE:
        return None
    return (
        f"workload moved: {fingerprint_hash(workload_fp)} is {nearest:.3f} from the nearest "
        f"workload champion v{champion.version} was trained on (close is <= {CLOSE})"
    )


def promote(
    client: MlflowClient,
    name: str,
    version: int | str,
    holdout_x: pd.DataFrame,
    holdout_y: Sequence[float],
    direction: str,
    workload_fp: Mapping[str, float],
    *,
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> Decision:
    """Move the ``champion`` alias of ``name`` to ``version`` when it has earned it; returns
    the ``Decision``. It moves when there is no champion; when the workload moved (none of the
    champion's training workloads, tag ``workloads``, is within ``fingerprint.CLOSE`` of
    ``workload_fp``); when the champion cannot take ``holdout_x`` (its features differ: the knob
    spec or the workload features changed) or cannot be loaded; or when ``version`` validates
    better on the same held-out rows (Spearman, then R²). Never to a version validated on fewer
    than ``FLOOR_MIN_ROWS`` held-out rows or whose held-out Spearman is below ``SPEARMAN_FLOOR``:
    such a version is refused, and says why in its tag ``champion_refused`` (e.g. ``too few
    held-out rows (3 < 5)``). The reason is kept as the version's tag ``champion_reason``, and the
    champion it replaced as ``previous_champion``. The decision holds the model's
    ``champion_lock`` (held across hosts when the records are shared).

    ``direction`` does not change the comparison (ranking and fit are symmetric in it); it is
    recorded with the decision."""
    version = str(version)
    with champion_lock(client.tracking_uri, name):
        return _promote(client, name, version, holdout_x, holdout_y, direction, workload_fp,
                        limits)


def _promote(
    client: MlflowClient, name: str, version: str, holdout_x: pd.DataFrame,
    holdout_y: Sequence[float], direction: str, workload_fp: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]] | None,
) -> Decision:
    current = champion_version(client, name)
    held = str(current.version) if current is not None else ""
    if held == version:
        return Decision(False, f"v{version} is already the champion", champion=held)
    new = None
    if len(holdout_x) >= FLOOR_MIN_ROWS:
        new_model, _ = _load_sklearn(client, f"models:/{name}/{version}")
        new = holdout_scores(holdout_y, new_model.predict(
            holdout_x[model_features(new_model) or list(holdout_x.columns)]))
    refused = refusal(len(holdout_x), new[0] if new else None, version)
    moved, reason = (False, refused) if refused or new is None else _decide(
        client, name, version, current, new, holdout_x, holdout_y, workload_fp, limits)
    tags = {"champion_reason": reason, "champion_direction": direction,
            "champion_decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if refused:
        tags[REFUSED_TAG] = refused
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version)
        tags["previous_champion"] = held
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("%s v%s: %s", name, version, reason)
    return Decision(moved, reason, refused=bool(refused), champion=version if moved else held)


def refusal(n_holdout: int, spearman: float | None, version: str = "") -> str:
    """Why a version validated on ``n_holdout`` held-out trials with rank correlation
    ``spearman`` may never be champion ("" when it may): a model that cannot be validated
    (fewer than ``FLOOR_MIN_ROWS`` rows), or one that ranks them no better than chance."""
    if n_holdout < FLOOR_MIN_ROWS:
        return f"too few held-out rows ({n_holdout} < {FLOOR_MIN_ROWS})"
    if spearman is not None and spearman < SPEARMAN_FLOOR:
        return (f"below the floor: on {n_holdout} held-out trials v{version} has spearman "
                f"{spearman:.3f} < {SPEARMAN_FLOOR}, no better than chance at ranking configs")
    return ""


def _decide(
    client: MlflowClient, name: str, version: str, current: ModelVersion | None,
    new: tuple[float, float], holdout_x: pd.DataFrame, holdout_y: Sequence[float],
    workload_fp: Mapping[str, float], limits: Mapping[str, tuple[float, float]] | None,
) -> tuple[bool, str]:
    """Whether a version that may be champion (scores ``new``) replaces ``current``, and why."""
    if current is None:
        return True, "no champion yet"
    moved = _workload_moved(current, workload_fp, limits)
    if moved:
        return True, moved
    try:
        old_model, _ = _load_sklearn(client, f"models:/{name}@{CHAMPION}")
    except Exception as exc:  # a champion nobody can load serves nobody
        log.warning("%s: champion v%s cannot be loaded: %s", name, current.version, exc)
        return True, f"champion v{current.version} cannot be loaded: {type(exc).__name__}: {exc}"
    if sorted(model_features(old_model)) != sorted(holdout_x.columns):
        return True, (
            f"champion v{current.version} takes other features than v{version} "
            "(knob spec or workload features changed)"
        )
    old = holdout_scores(holdout_y, old_model.predict(holdout_x[model_features(old_model)]))
    text = (
        f"on {len(holdout_x)} held-out trials v{version} has spearman {new[0]:.3f}, "
        f"r2 {new[1]:.3f}; champion v{current.version} has spearman {old[0]:.3f}, r2 {old[1]:.3f}"
    )
    if _better(new, old):
        return True, f"validates better: {text}"
    return False, f"not better: {text}"
