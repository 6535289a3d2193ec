"""What a tuning job shows in Prefect: its result as an artifact of the flow run, the MLflow run
it wrote to (on the flow run, and the flow run on the MLflow run), and the flow run's final state.

Each flow run publishes a markdown artifact under a key stable per instance of a service
(``tune-<service>-<instance>``), so Prefect's Artifacts page keeps one history per instance: the
gain with its interval, the best config beside the default, where the files are, the MLflow run.
A job that completes no trial or finds no verified config ends Failed (``no_result``), so
``prefect deployment run --watch`` fails with it; what the job kept is written before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.states import Failed, State

from flows.job import Job
from flows.report import RunSummary
from targets.common.errors import fmt_value
from tasks.track import current_flow_run_id

__all__ = ["JobFailed", "artifact_key", "no_result",
           "publish_result", "result_markdown"]

class JobFailed(Exception):
    """The job ended without a usable result (no trial completed, no config found or verified);
    ``summary`` says what it did. Raised by a direct call of the flow; the flow run is Failed."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[type[JobFailed], tuple[str, RunSummary]]:
        """Pickled whole (Prefect may persist a Failed state's data)."""
        return type(self), (str(self), self.summary)


def artifact_key(service: str, instance: str) -> str:
    """The artifact key of an instance of a service: lowercase letters, digits and dashes."""
    text = re.sub(r"[^a-z0-9]+", "-", f"tune-{service}-{instance}".lower()).strip("-")
    return text[:200]


def no_result(summary: RunSummary) -> State | None:
    """The Failed state of a job without a usable result (``None`` if it has one); its data is a
    ``JobFailed`` carrying the summary."""
    if summary.succeeded:
        return None
    ran = summary.n_trials - summary.n_failed - summary.n_blocked
    if summary.best_config is None:
        classes = ", ".join(f"{k} {v}" for k, v in summary.failure_classes.items())
        why = (f"no trial of {summary.n_trials} completed"
               + (f" ({classes})" if classes else "")
               + (f", {summary.n_blocked} blocked by rules" if summary.n_blocked else "")
               if ran <= 0 else f"{summary.verdict} ({summary.n_infeasible} clean trials "
               f"broke one: {'; '.join(summary.constraints)})" if summary.n_infeasible
               else "no config found")
    else:
        why = "the best config was not verified: " + "; ".join(summary.verify_failures)
    message = f"{summary.target}/{summary.instance}: {why}"
    return Failed(message=message, data=JobFailed(message, summary))


def result_markdown(summary: RunSummary) -> str:
    """The job's result as markdown: gain, best config vs default, files, MLflow run."""
    lines = [f"# knobflow: {summary.target}/{summary.instance} (service {summary.service})", "",
             f"Job `{summary.study_name}`: {summary.n_trials} trials ({summary.n_failed} failed, "
             f"{summary.n_blocked} blocked by rules"
             + (f", {summary.n_pruned} pruned early" if summary.n_pruned else "")
             + f"), tuner {summary.tuner}, "
             f"{summary.duration_s:.0f} s.", ""]
    lines += _gain_lines(summary)
    lines += _config_lines(summary)
    lines += _file_lines(summary)
    lines += _mlflow_lines(summary)
    return "\n".join(lines) + "\n"


def _gain_lines(s: RunSummary) -> list[str]:
    if s.best_is_default:  # nothing verified against itself
        return [f"**{s.verdict}**", ""]
    if s.gain is None or s.default_value is None or s.best_value is None:
        failed = no_result(s)
        return [f"**No result**: {failed.message if failed else 'not verified'}", ""]
    verdict = ("better than the default" if s.gain_significant
               else "not clearly better than the default (the interval includes 1)")
    return ["| objective | default | best (verified mean) | gain | 95% interval | repeats |",
            "|---|---|---|---|---|---|",
            f"| {s.objective} ({s.direction}) | {s.default_value:,.6g} | {s.best_value:,.6g} "
            f"| **{s.gain:.2f}x** | {s.gain_low:.2f}-{s.gain_high:.2f} | {s.verify_repeats} |",
            "", f"Verdict: {verdict}.", ""]


def _config_lines(s: RunSummary) -> list[str]:
    if not s.best_config:
        return []
    defaults = s.default_config  # the default of every knob of the best config
    rows = [f"| `{k}` | {_cell(defaults.get(k, '-'))} | {_cell(v)} | "
            f"{'' if defaults.get(k) == v else 'changed'} |" for k, v in s.best_config.items()]
    return ["## Best config vs default", "", "| knob | default | best | |", "|---|---|---|---|",
            *rows, ""]


def _file_lines(s: RunSummary) -> list[str]:
    files = {"best config": s.best_config_file, "native config": s.native_config_file,
             "trial table": s.trial_table}
    if s.best_config_file:
        folder = Path(s.best_config_file).parent
        files |= {"summary": str(folder / "result.json"),
                  "history plot": str(folder / "history.png")}
    rows = [f"| {label} | `{path}` |" for label, path in files.items()
            if path and Path(path).exists()]
    return ["## Files", "", "| what | path |", "|---|---|", *rows, ""] if rows else []


def _mlflow_lines(s: RunSummary) -> list[str]:
    if not s.mlflow_run_id:
        return []
    uri = s.tracking_uri or ""
    page = f"#/experiments/{_experiment(s)}/runs/{s.mlflow_run_id}"
    if uri.startswith(("http://", "https://")):
        where = f"[open the run]({uri.rstrip('/')}/{page})"
    else:  # an embedded store: its UI is served on demand
        where = (f"open the UI with `mlflow ui --backend-store-uri {uri} --host 127.0.0.1`, "
                 f"then <http://127.0.0.1:5000/{page}>")
    return ["## MLflow", "", f"Run `{s.mlflow_run_id}` in experiment `knobflow/{s.target}`: "
            f"{where}.", ""]


def _experiment(s: RunSummary) -> str:
    """The id of the MLflow experiment of the summary's run ('' if it cannot be read)."""
    from model_registry.store import client_for

    try:
        return client_for(s.tracking_uri or "").get_run(s.mlflow_run_id or "").info.experiment_id
    except Exception:  # the link still names the run
        return ""


def _cell(value: Any) -> str:
    return fmt_value(value).replace("|", "\\|")


def publish_result(job: Job, summary: RunSummary) -> str | None:
    """Publish the job's result as a markdown artifact of the flow run (its id; ``None``
    outside a flow run)."""
    if not current_flow_run_id():
        return None
    from prefect.artifacts import create_markdown_artifact

    verdict = (f"gain {summary.gain:.2f}x" if summary.gain is not None
               else summary.verdict if summary.best_is_default else "no result")
    return str(create_markdown_artifact(
        markdown=result_markdown(summary), key=artifact_key(job.service, job.instance),
        description=f"knobflow tune {job.target}/{job.instance}: {verdict}"))
