"""The MLflow run of one actuation, written from the instance's actuation log when it ends.

Experiment ``knobflow/<target>/actuations``; run ``<instance>/apply-<id>``. Parameters: each
changed knob (``change.<knob>``, its new value), its recorded value (``before.<knob>``), the
policy, the source. Metrics: the objective's window values before and after (``before.<objective>``
and ``after.<objective>`` with the window as step), their ratio, the test's statistic and p-value,
the seconds from the apply to the decision. Tags: the outcome, the fired triggers, the learned
rule, instance, service and actuation id. Artifact: every log line of the actuation
(``actuation.json``). Written from the log, so a recovery after a crash writes the same run; the
connection (and so any secret) is never in it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag

from model_registry.store import (
    client_for,
    default_artifact_root,
    experiment_id,
    param,
    source_tags,
)
from targets.common.settings import tracking_uri
from tasks.actlog import ActuationLog
from tasks.instances import Instance

__all__ = ["actuations_experiment", "log_actuation_run"]


def actuations_experiment(client: Any, uri: str, target: str) -> str:
    """The id of the experiment ``knobflow/<target>/actuations`` (made on first use)."""
    return experiment_id(client, f"knobflow/{target}/actuations", default_artifact_root(uri),
                         "knobflow apply: one run per actuation of a live instance (config "
                         "diff, windows before and after, test, rules fired, decision); "
                         "knobflow report: one run per instance holding its report.html")


def _window_metrics(observation: dict[str, Any], prefix: str, objective: str,
                    now_ms: int) -> list[Metric]:
    out = []
    for step, window in enumerate(observation.get("windows", [])):
        value = window.get("metrics", {}).get(objective)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(Metric(f"{prefix}.{objective}", float(value), now_ms, step))
    return out


def log_actuation_run(home: Path, instance: Instance, log: ActuationLog,
                      actuation_id: str) -> str:
    """Write the actuation's MLflow run; its id."""
    actuation = log.actuation(actuation_id)
    lines, phases = actuation.entries, actuation.by_phase()
    begin, decided, done = (phases.get(p, {}) for p in ("begin", "decided", "done"))
    objective = str(begin.get("objective", ""))
    uri = tracking_uri(home)
    client = client_for(uri)
    exp = actuations_experiment(client, uri, instance.target)
    run = client.create_run(exp, run_name=f"{instance.name}/apply-{actuation_id}", tags={
        **source_tags("flows/apply.py"), "knobflow.instance": instance.name,
        "knobflow.service": instance.service, "knobflow.target": instance.target,
        "knobflow.actuation": actuation_id, "knobflow.outcome": str(done.get("outcome", "")),
        "knobflow.fired": "; ".join(decided.get("fired", [])) or "none",
        "knobflow.learned_rule": str(phases.get("learned", {}).get("rule", "none")),
        "mlflow.note.content": str(done.get("note", ""))})
    now = int(time.time() * 1000)
    params = [param(f"change.{k}", v) for k, v in begin.get("changes", {}).items()]
    params += [param(f"before.{k}", begin.get("before_config", {}).get(k))
               for k in begin.get("changes", {})]
    params += [param(f"policy.{k}", v) for k, v in begin.get("policy", {}).items()]
    params += [param("source", begin.get("source", "")), param("objective", objective)]
    metrics = [*_window_metrics(phases.get("observed_before", {}).get("observation", {}),
                                "before", objective, now),
               *_window_metrics(phases.get("observed_after", {}).get("observation", {}),
                                "after", objective, now)]
    test = decided.get("test") or {}
    for key in ("ratio", "p_value", "statistic", "mean_before", "mean_after"):
        if isinstance(test.get(key), (int, float)) and math.isfinite(test[key]):
            metrics.append(Metric(f"test.{key}", float(test[key]), now, 0))
    if isinstance(decided.get("seconds_to_decision"), (int, float)):
        metrics.append(Metric("seconds_to_decision", float(decided["seconds_to_decision"]),
                              now, 0))
    client.log_batch(run.info.run_id, metrics=metrics, params=params,
                     tags=[RunTag("knobflow.decision", "keep" if decided.get("keep")
                                  else "rollback" if decided else "none")])
    client.log_text(run.info.run_id, json.dumps(lines, indent=2, default=str), "actuation.json")
    ended = ("kept", "rolled_back", "dry_run", "rejected")  # as asked; else FAILED
    status = "FINISHED" if done.get("outcome") in ended else "FAILED"
    client.set_terminated(run.info.run_id, status)
    return str(run.info.run_id)
