"""The reference a tuning job leaves for its service and workload, and ``--fail-on-regression``.

At the end of a job with a result, ``settle_reference`` records the config the job ends with and
the values measured of it (``model_registry.references.JobReference``):

* verified better than the default: the best config and its verification runs;
* the default was the best trial ("no config beat the default", nothing verified): the default
  and every run of it the job made (the noise check's, trials of the default config);
* verified but not clearly better (or worse): the default, and its verification runs;

topped up with runs of that config (phase ``reference`` in MLflow) to ``MIN_RUNS`` values when
the job made fewer (e.g. ``--noise-runs 0`` and a default that won). It is written to the job's
folder and logged with the job's MLflow run, whose tags make it the reference of the service's
workload (``find_reference``). With ``--fail-on-regression`` it is first compared with the
reference recorded before this job (``flows.regression.compare``): slower beyond the noise ends
the job Failed (``regression_failed``; the job's files are kept) and this job's result is tagged
``regressed``, not made the reference; no reference yet: the job passes and says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from prefect.states import Failed, State

from flows.job import Job
from flows.publish import JobFailed
from flows.regression import REGRESSION, compare
from flows.report import NO_GAIN, RunSummary, is_default_config
from model_registry import fingerprint
from model_registry.references import (
    ARTIFACT,
    REGRESSED,
    TAG,
    JobReference,
    find_reference,
    workload_key,
)
from targets.common.settings import tracking_uri
from tasks.runner import TrialRunner, run_trial
from tasks.track import JobTracker
from tuners.trials import ATTR

__all__ = ["MIN_RUNS", "default_runs", "regression_failed", "settle_reference"]

#: Fewest values a reference holds (the job runs its config again to reach it).
MIN_RUNS = 3
_SEED_BASE = 3 * 10**6  # seeds of the top-up runs, apart from trials', noise and verification's


def default_runs(job: Job, study: optuna.Study) -> list[float]:
    """Every value the job measured of the default config: the noise check's runs and the
    trials of the default config (each repeat; the raw values when the tuner was told ratios)."""
    values = [float(v) for v in (job.noise or {}).get("values", [])]
    defaults = job.target_cls.knob_spec().defaults()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = trial.user_attrs.get(ATTR) or {}
        if record.get("status") != "ok" or not is_default_config(record.get("config", {}),
                                                                 defaults):
            continue
        raw = record.get("raw_value") if record.get("baseline_value") else record.get("value")
        values += [float(v) for v in record.get("repeat_values") or ([raw] if raw else [])]
    return values


def _ending(job: Job, summary: RunSummary,
            study: optuna.Study) -> tuple[dict[str, Any], list[float], str] | None:
    """The config the job ends with, the values measured of it and what it is; None without
    a result."""
    if not summary.succeeded or summary.best_config is None:
        return None
    if summary.gain_significant:
        return dict(summary.best_config), list(summary.verify_best_values), \
            "verified best config"
    defaults = job.target_cls.knob_spec().defaults()
    if summary.best_is_default:
        return defaults, default_runs(job, study), f"default config: {NO_GAIN}"
    return defaults, list(summary.verify_default_values), \
        f"default config: the best config was {summary.verdict}"


def _top_up(config: dict[str, Any], have: int, runner: TrialRunner,
            tracker: JobTracker) -> list[float]:
    """Runs of ``config`` until the reference holds ``MIN_RUNS`` values (or a run fails)."""
    instance = next(iter(runner.instance_dirs))
    values: list[float] = []
    for i in range(max(0, MIN_RUNS - have)):
        outcome = run_trial(runner, f"reference-{i}", dict(config), instance,
                            runner.trial_seed(_SEED_BASE + i), single=True)
        tracker.log_trial(str(i), outcome.record(), outcome.samples, phase="reference")
        if not outcome.ok or outcome.value is None:
            break
        values.append(float(outcome.value))
    return values


def settle_reference(job: Job, summary: RunSummary, study: optuna.Study, runner: TrialRunner,
                     tracker: JobTracker,
                     logger: logging.Logger | logging.LoggerAdapter[Any]) -> list[Path]:
    """Record the job's reference (and, with ``fail_on_regression``, check it against the one
    before); the files to log with the job's run."""
    ended = _ending(job, summary, study)
    if ended is None:
        return []
    config, samples, source = ended
    samples += _top_up(config, len(samples), runner, tracker)
    if len(samples) < 2:
        logger.warning("no reference recorded: %d run(s) of the %s gave a value", len(samples),
                       source)
        return []
    reference = JobReference(
        service=job.service, target=job.target, objective=job.objective,
        direction=job.direction, workload=dict(job.workload),
        workload_key=workload_key(job.target_cls.workload_defaults, job.workload),
        config=config, samples=samples, source=source, study=job.study_name,
        run_id=job.mlflow_run_id or "",
        fingerprint=fingerprint.features(job.target_cls, job.workload))
    tags = reference.tags()
    if job.fail_on_regression:
        summary.regression = _check_before(job, reference)
        if summary.regression["verdict"] == REGRESSION:
            reference.status = tags[TAG] = REGRESSED
        tags["knobflow.regression"] = summary.regression["verdict"]
        logger.info("%s", summary.regression["message"])
        (job.dir / "result.json").write_text(json.dumps(summary.to_dict(), indent=2,
                                                        default=str), encoding="utf-8")
    tracker.annotate(params={}, tags=tags)
    return [reference.write(job.dir / ARTIFACT)]


def _check_before(job: Job, reference: JobReference) -> dict[str, Any]:
    """This job's reference against the one recorded before it (``--fail-on-regression``)."""
    previous = find_reference(tracking_uri(job.home), job.target, job.service, job.objective,
                              reference.workload_key, exclude_run=job.mlflow_run_id)
    if previous is None:
        return {"verdict": "no reference", "regression": False,
                "message": f"pass: no reference yet for service '{job.service}' and workload "
                           f"{reference.workload_key}; this job's result becomes the reference"}
    return compare(previous.samples, reference.samples, reference.direction,
                   metric=reference.objective, name=job.study_name,
                   subject=f"job {job.study_name}: {reference.source}",
                   reference_text=previous.describe(), reference_run=previous.run_id).to_dict()


def regression_failed(summary: RunSummary) -> State | None:
    """The Failed state of a job whose result is slower than the reference before it (None
    otherwise); its data is a ``JobFailed`` carrying the summary."""
    if not summary.regressed:
        return None
    message = (f"{summary.target}/{summary.instance}: "
               f"{(summary.regression or {}).get('message', REGRESSION)}")
    return Failed(message=message, data=JobFailed(message, summary))
