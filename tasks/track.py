"""Tracking in MLflow: one parent run per tuning job, one child run per trial.

Children carry the knobs as params, the metrics, the status and failure class as tags, and the
effective config (as ``effective.<knob>`` params and a ``trial.json`` artifact), so the MLflow UI
compares trials side by side; a child run spans its trial's real start and end. Every run has a
description (``mlflow.note.content``) and MLflow's source and git tags; the parent run records the
policies and rule files the job used and the Prefect flow run running it (``tag_flow_run``).
Writes go through one background thread so that a trial never waits on the tracking store; the
Optuna study stays the source of truth, and ``missing_trials`` lets a resumed job log whatever a
killed one had not written yet (``JobTracker.backfill``). A trained model's run is
``tasks/model_runs.py``'s.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from model_registry.store import (
    NOTE,
    client_for,
    experiment_id,
    param,
    source_tags,
)
from tuners.trials import ATTR, finished_trials

log = logging.getLogger("knobflow.track")

PARENT_TAG = "mlflow.parentRunId"
#: The tag of a job's parent run naming the Prefect flow run that ran the job.
FLOW_RUN_TAG = "prefect.flow_run_id"
#: What makes each kind of run (``mlflow.source.name``).
JOB_SOURCE = "flows/tune.py"


class JobTracker:
    """The MLflow runs of one tuning job; every write happens on a background thread."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path,
                 description: str = "") -> None:
        # no mlflow.set_tracking_uri: it also sets $MLFLOW_TRACKING_URI for every later process
        self.client = client_for(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, artifact_root,
                                           description or _experiment_note(experiment))
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
        note: str = "",
        rule_files: Sequence[Path] = (),
    ) -> str:
        """Create the job's parent run (or reopen ``run_id`` when resuming) with its description
        ``note``, source and git tags, the ``rule_files`` it uses (artifacts under ``rules/``)
        and the Prefect flow run running it, if any; return its id."""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={
                **source_tags(JOB_SOURCE), **({NOTE: note} if note else {}), **tags})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[param(k, v) for k, v in params.items()])
        flow_run = current_flow_run_id()
        if flow_run:
            tag_flow_run(self.client, self.run_id, flow_run)
        for path in rule_files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path="rules")
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
            tags = _trial_tags(run_id, key, phase, record)
            start, end = _span_ms(record)
            run = self.client.create_run(self.experiment_id, start_time=start, tags=tags)
            now = end
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
                self._artifacts(run.info.artifact_uri).log_artifacts(tmp)
            self.client.set_terminated(
                run.info.run_id, status={"ok": "FINISHED", "pruned": "KILLED"}.get(
                    str(record["status"]), "FAILED"),  # pruned: stopped early, not failed
                end_time=end,
            )

        self._queue.put(write)

    def _artifacts(self, artifact_uri: str) -> ArtifactRepository:
        """The artifact store of a run just created, from its ``artifact_uri``: the client's
        ``log_artifact`` would read the run back from the tracking store first to find it (a
        quarter of a trial's child run in CPU, on the thread the exploration shares the GIL
        with)."""
        return get_artifact_repository(artifact_uri, tracking_uri=self.client.tracking_uri)

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
        for t in missing:  # a record from before trials kept their times: Optuna's
            span = {k: d.timestamp() for k, d in (("started_at", t.datetime_start),
                                                   ("finished_at", t.datetime_complete)) if d}
            self.log_trial(str(t.number), {**span, **t.user_attrs[ATTR]})
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


def _trial_tags(parent: str, key: str, phase: str, record: Mapping[str, Any]) -> dict[str, str]:
    """A child run's tags: its trial, phase, status and failure, gate verdict, source, note."""
    tags = {
        PARENT_TAG: parent,
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
    tags.update({**source_tags(JOB_SOURCE), NOTE: _trial_note(key, phase, record)})
    return tags


def _span_ms(record: Mapping[str, Any]) -> tuple[int, int]:
    """A trial's start and end in ms since the epoch, from its record; a record without them
    (never run) spans the moment it is logged."""
    now = time.time()
    start = float(record.get("started_at") or 0.0) or now
    end = float(record.get("finished_at") or 0.0) or max(start, now)
    return round(start * 1000), round(end * 1000)


def _trial_note(key: str, phase: str, record: Mapping[str, Any]) -> str:
    """A child run's description: which trial, on which instance, what came of it."""
    what = (f"measured {record.get('value')}" if record.get("status") == "ok"
            else f"{record.get('status')} ({record.get('failure_class') or 'no class'}): "
            f"{str(record.get('message', ''))[:300]}")
    changed = ", ".join(record.get("changed_knobs") or []) or "none"
    return (f"{phase} trial {key} on instance {record.get('instance') or '-'}: {what}. "
            f"Knobs the system changed on its own: {changed}.")


def _experiment_note(experiment: str) -> str:
    return (f"knobflow tuning jobs ({experiment}): one parent run per `knobflow tune` job "
            "(its options, result and files), one child run per trial, baseline and "
            "verification run (knobs as params, what the system applied as effective.*, "
            "metrics, status and failure class as tags).")


def current_flow_run_id() -> str:
    """The id of the Prefect flow run this code runs in ("" outside one)."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def tag_flow_run(client: MlflowClient, run_id: str, flow_run_id: str) -> None:
    """Record on MLflow run ``run_id`` (a job's parent run) the Prefect flow run that ran it:
    tag ``prefect.flow_run_id`` (a resumed job's run names the flow run that resumed it)."""
    client.set_tag(run_id, FLOW_RUN_TAG, str(flow_run_id))


@task(name="start-tracking", cache_policy=NO_CACHE)
def start_tracking(tracking_uri: str, experiment: str, artifact_root: Path, name: str, *,
                   params: Mapping[str, Any], tags: Mapping[str, str], run_id: str | None,
                   study: optuna.Study | None = None, note: str = "",
                   rule_files: Sequence[Path] = ()) -> JobTracker:
    """Open a job's MLflow parent run, or reopen ``run_id`` to resume; a resumed job's
    ``study`` has its finished trials the killed job had not logged written now."""
    tracker = JobTracker(tracking_uri, experiment, artifact_root)
    tracker.start_job(name, params=params, tags=tags, run_id=run_id, note=note,
                      rule_files=rule_files)
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
