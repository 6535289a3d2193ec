"""Tracking in MLflow: one parent run per tuning job, one child run per trial.

Children carry the knobs as params, the metrics, the status and failure class as tags, and the
effective config (as ``effective.<knob>`` params and a ``trial.json`` artifact), so the MLflow UI
compares trials side by side. Writes go through one background thread so that a trial never waits
on the tracking store; the Optuna study stays the source of truth, and ``missing_trials`` lets a
resumed job log whatever a killed one had not written yet.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import flows.settings  # noqa: F401 - telemetry off before mlflow is imported

log = logging.getLogger("knobflow.track")
# "Creating initial MLflow database tables..." on every new store is noise to an operator
logging.getLogger("mlflow").setLevel(logging.WARNING)

PARENT_TAG = "mlflow.parentRunId"
_PARAM_MAX = 6000


def _param(key: str, value: Any) -> Param:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return Param(key, text[:_PARAM_MAX])


class JobTracker:
    """The MLflow runs of one tuning job; every write happens on a background thread."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path) -> None:
        # no mlflow.set_tracking_uri: it also sets $MLFLOW_TRACKING_URI for every later process
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri()
            )
        else:
            self.experiment_id = found.experiment_id
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
        self.client.log_batch(self.run_id, params=[_param(k, v) for k, v in params.items()])
        return self.run_id

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
            params = [_param(k, v) for k, v in record["config"].items()]
            params += [_param(f"effective.{k}", v) for k, v in record["effective_config"].items()]
            params += [
                _param(f"workload.{k}", v) for k, v in record.get("workload_features", {}).items()
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
