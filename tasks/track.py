"""Tracking in MLflow: one parent run per tuning job, one child run per trial, one run per model.

Children carry the knobs as params, the metrics, the status and failure class as tags, and the
effective config (as ``effective.<knob>`` params and a ``trial.json`` artifact), so the MLflow UI
compares trials side by side. Writes go through one background thread so that a trial never waits
on the tracking store; the Optuna study stays the source of truth, and ``missing_trials`` lets a
resumed job log whatever a killed one had not written yet (``JobTracker.backfill``). A trained
model's run (``log_model_run``) holds its metrics, importance plot, trial table and the model.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sklearn.base import BaseEstimator

from model_registry.registry import TABLE_ARTIFACT
from model_registry.store import client_for, experiment_id, param, process_tracking_uri
from tuners.trials import ATTR, finished_trials

log = logging.getLogger("knobflow.track")

PARENT_TAG = "mlflow.parentRunId"
#: Packages a logged model needs; pinned to what trained it (MLflow does not infer them).
REQUIREMENTS = ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "skops")
#: Classes the skops serializer may load beyond its built-in safe set.
_TRUSTED_PREFIXES = ("sklearn.", "lightgbm.", "numpy.", "collections.OrderedDict", "builtins.")


class JobTracker:
    """The MLflow runs of one tuning job; every write happens on a background thread."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path) -> None:
        # no mlflow.set_tracking_uri: it also sets $MLFLOW_TRACKING_URI for every later process
        self.client = client_for(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, artifact_root)
        self.run_id: str = ""
        self.errors: list[str] = []
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="mlflow-writer", daemon=True)
        self._thread.start()

    # -- the parent run ---------------------------------------------------------------------------
    def start_job(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id: str | None = None,
    ) -> str:
        """Create the job's parent run (or reopen ``run_id`` when resuming); return its id."""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[param(k, v) for k, v in params.items()])
        return self.run_id

    def annotate(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Log more params and tags on the job's parent run (what the job decided as it ran)."""
        run_id = self.run_id

        def write() -> None:
            self.client.log_batch(run_id, params=[param(k, v) for k, v in params.items()],
                                  tags=[RunTag(k, str(v)) for k, v in tags.items()])

        self._queue.put(write)

    def finish_job(
        self,
        metrics: Mapping[str, float | None],
        artifacts: list[Path],
        tags: Mapping[str, str],
        status: str = "FINISHED",
    ) -> None:
        """Log the job's result on the parent run and close it (waits for pending writes)."""
        run_id = self.run_id

        def write() -> None:
            now = int(time.time() * 1000)
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
            for path in artifacts:
                if path.exists():
                    self.client.log_artifact(run_id, str(path))
            self.client.set_terminated(run_id, status=status)

        self._queue.put(write)
        self.flush()

    # -- child runs -------------------------------------------------------------------------------
    def log_trial(
        self,
        key: str,
        record: Mapping[str, Any],
        samples: list[dict[str, Any]] | None = None,
        phase: str = "explore",
        validation: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue a child run for one trial (``record`` is ``TrialOutcome.record()``); the
        measurement gate's own result, when given, is kept as ``validation.json``."""
        run_id = self.run_id
        payload = {**record, "samples": samples or []}

        def write() -> None:
            tags = {
                PARENT_TAG: run_id,
                "mlflow.runName": f"{phase}-{key}" if phase != "explore" else f"trial-{key}",
                "knobflow.trial": key,
                "knobflow.phase": phase,
                "knobflow.status": record["status"],
                "knobflow.instance": record.get("instance", ""),
            }
            if record.get("failure_class"):
                tags["knobflow.failure_class"] = record["failure_class"]
                tags["knobflow.failure_message"] = str(record.get("message", ""))[:4000]
                tags["knobflow.log_tail"] = "\n".join(record.get("log_tail", []))[-4000:]
            if record.get("row"):  # it reached the measurement gate
                tags["knobflow.gate"] = "failed" if record.get("reasons") else "passed"
            if record.get("reasons"):
                tags["knobflow.gate_reasons"] = "\n".join(record["reasons"])[:4000]
            if record.get("changed_knobs"):
                tags["knobflow.changed_knobs"] = ",".join(record["changed_knobs"])
            run = self.client.create_run(self.experiment_id, tags=tags)
            now = int(time.time() * 1000)
            params = [param(k, v) for k, v in record["config"].items()]
            params += [param(f"effective.{k}", v) for k, v in record["effective_config"].items()]
            params += [
                param(f"workload.{k}", v) for k, v in record.get("workload_features", {}).items()
            ]
            measured = {**record.get("counters", {}), **record.get("metrics", {})}
            metrics = [
                Metric(k, float(v), now, 0)
                for k, v in measured.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            metrics.append(Metric("elapsed_s", float(record.get("elapsed_s", 0.0)), now, 0))
            self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
            with tempfile.TemporaryDirectory() as tmp:
                files = {"trial.json": payload, "validation.json": validation}
                for name, content in files.items():
                    if content:
                        path = Path(tmp) / name
                        path.write_text(json.dumps(content, indent=1, default=str), "utf-8")
                        self.client.log_artifact(run.info.run_id, str(path))
            self.client.set_terminated(
                run.info.run_id, status="FINISHED" if record["status"] == "ok" else "FAILED"
            )

        self._queue.put(write)

    def logged_trials(self, phase: str = "explore") -> set[str]:
        """Trial keys that already have a child run under the parent run."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}' "
            f"and tags.`knobflow.phase` = '{phase}'",
            max_results=50000,
        )
        return {r.data.tags.get("knobflow.trial", "") for r in runs}

    def backfill(self, study: optuna.Study) -> int:
        """Log the finished trials a killed job had not written yet; how many."""
        logged = self.logged_trials()
        missing = [t for t in finished_trials(study)
                   if str(t.number) not in logged and ATTR in t.user_attrs]
        for t in missing:
            self.log_trial(str(t.number), t.user_attrs[ATTR])
        self.flush()
        return len(missing)

    # -- the writer thread ------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except Exception as exc:  # a tracking hiccup must not stop tuning; it is reported
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("MLflow write failed: %s", exc)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued write is done."""
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=30)


@task(name="start-tracking", cache_policy=NO_CACHE)
def start_tracking(tracking_uri: str, experiment: str, artifact_root: Path, name: str, *,
                   params: Mapping[str, Any], tags: Mapping[str, str], run_id: str | None,
                   study: optuna.Study | None = None) -> JobTracker:
    """Open a job's MLflow parent run, or reopen ``run_id`` to resume; a resumed job's
    ``study`` has its finished trials the killed job had not logged written now."""
    tracker = JobTracker(tracking_uri, experiment, artifact_root)
    tracker.start_job(name, params=params, tags=tags, run_id=run_id)
    if study is not None:
        get_run_logger().info("%d finished trials logged to MLflow late", tracker.backfill(study))
    return tracker


def close_killed_runs(tracking_uri: str, experiment: str, tags: Mapping[str, str]) -> int:
    """Close as KILLED the runs of ``experiment`` still RUNNING with all of ``tags``: what a
    killed job left open (its trials' child runs, its models' runs); how many."""
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    where = " and ".join(["attributes.status = 'RUNNING'",
                          *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    runs = client.search_runs([found.experiment_id], filter_string=where, max_results=50000)
    for run in runs:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


# -- model runs ------------------------------------------------------------------------------------
@dataclass
class KindResult:
    """One model kind's run."""

    kind: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    importance: dict[str, float] = field(default_factory=dict)



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
    import mlflow.sklearn
    from mlflow.models import infer_signature

    service, objective = params["service"], params["objective"]
    run = client.create_run(experiment, run_name=f"{objective}-{kind}", tags={
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
        with process_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id), \
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
