"""The tuning flow: one job, as the steps it runs (each a Prefect task of the component owning it).

knobflow tune sqlite --budget 20
  prepare_job             flows/job.py         the spec checked and recorded (or the job to resume)
  open_job_study          tuners/study.py      the Optuna study; the default config queued first
  transfer_from_siblings  model_registry/      siblings' best configs, the champion's picks
  (--knobs auto)          model_registry/      the champion's most important knobs, tuned
                          tuners/focus.py      first (tasks/explore.py asks for them only)
  start_tracking          tasks/track.py       the job's MLflow run
  probe_noise             tasks/probe.py       the default run 3x; a noisy machine: repeats on
  explore                 tasks/explore.py     ask -> rules -> run (own process) -> clean -> tell
                          (--workers N: flows/worker.py, N flow runs of tune-worker through
                          the work pool on the shared study, until it holds the budget)
  verify_best             tasks/verify.py      best vs default, interleaved, until decisive (not
                                               when the best is the default: nothing to verify)
  train_service_models    tasks/train.py       surrogate models; the champion moves if better
  report                  flows/report.py      best.yaml, result.json, history.png
  settle_reference        flows/job_reference  the result's measured values: the reference of
                                               the service's workload (--fail-on-regression:
                                               checked against the one before)
  publish_result          flows/publish.py     the result as an artifact of the flow run

A job without a usable result (no trial completed, no config found or verified) ends Failed
(``flows.publish.no_result``) after everything it kept is written, and so does one whose result
regressed (``--fail-on-regression``, ``flows.job_reference.regression_failed``); a direct call then
raises ``JobFailed``, which carries the summary.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import optuna
import pandas as pd
from prefect import flow, get_run_logger
from pydantic import Field

from flows.focus import focus_record, knob_focus
from flows.job import Job, JobStatus, hold_instance, prepare_job
from flows.job_reference import regression_failed, settle_reference
from flows.pareto import job_result, mean_metrics, measure_default_metrics, metric_names
from flows.publish import JobFailed, no_result, publish_result
from flows.report import RunSummary, TuneListener, report
from flows.spec import JobSpec, with_spec_signature
from flows.testbeds import on_testbed
from flows.timing import JobClock
from flows.trials import service_table, write_job_table
from flows.worker import check_fleet, fan_out
from model_registry import fingerprint
from model_registry.store import check_reachable
from model_registry.transfer import TransferPlan, TransferRequest, transfer_from_siblings
from rules.learn import learned_path
from rules.review import check_space
from rules.ruleset import RuleSet, shipped_rules_path
from targets.common.settings import knobflow_home, quiet_environment, tracking_uri, writable_home
from targets.registry import available_targets
from tasks.explore import ExploreStats, explore
from tasks.guard import CandidateGuard, RuleFilter, RuleLearner
from tasks.probe import probe_noise
from tasks.pruning import reports_per_run
from tasks.runner import TrialRunner
from tasks.track import (
    FLOW_RUN_TAG,
    JobTracker,
    close_killed_runs,
    current_flow_run_id,
    start_tracking,
)
from tasks.train import train_service_models
from tuners.focus import KnobFocus
from tuners.space import SearchSpace
from tuners.study import name_metric, open_job_study
from tuners.trials import TrialOutcome

__all__ = ["JobFailed", "tune"]

_KW = inspect.Parameter.KEYWORD_ONLY
_EXTRA = [
    inspect.Parameter("resume", _KW, default=False, annotation=Annotated[bool, Field(
        description="Continue the last unfinished job of the target, instance and service.")]),
    inspect.Parameter("home", _KW, default=None, annotation=Annotated[str | None, Field(
        description="State directory (default ./.knobflow, or $KNOBFLOW_HOME).")]),
    inspect.Parameter("progress", _KW, default=None, annotation=Annotated[
        TuneListener | None, Field(description="Hears of every trial (the CLI's bar).")]),
]


F = TypeVar("F")


def _installed_targets(fn: F) -> F:
    """``target`` as an enum of the targets installed when the flow is loaded: Prefect's UI
    offers them, and a deployment naming another is refused (``prefect deploy`` records the
    schema; re-deploy after installing a target)."""
    names = tuple(available_targets())
    signature = inspect.signature(fn)  # type: ignore[arg-type]
    if names:
        target = signature.parameters["target"]
        annotation = Annotated[Literal[names], Field(description=JobSpec.model_fields[
            "target"].description)]  # type: ignore[valid-type]
        fn.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
            target.replace(annotation=annotation),
            *(p for p in signature.parameters.values() if p.name != "target")])
        fn.__annotations__["target"] = annotation  # type: ignore[attr-defined]
    return fn


@flow(name="tune", log_prints=False)
@_installed_targets
@with_spec_signature(_EXTRA, RunSummary)
def tune(target: str, **options: Any) -> RunSummary:
    """Tune ``target``: explore configs, verify the best against the default, write it to a
    file; the job's summary (what ``--json`` prints)."""
    clock = JobClock()  # from the command's start when the knobflow command runs the job
    quiet_environment()
    logger = get_run_logger()
    resume, home = options.pop("resume", False), options.pop("home", None)
    listener: TuneListener = options.pop("progress", None) or TuneListener()
    spec, root = JobSpec.of(target=target, **options), writable_home(knobflow_home(home))
    check_reachable(tracking_uri(root))
    check_fleet(root, spec.workers or 0)
    with hold_instance(root, spec):  # one job per instance at a time
        job = prepare_job(spec, root, resume)
        with _interrupted_on_error(job) as stopped:
            check_fleet(root, job.workers)  # a resumed job's workers continue its shared study
            listener.job_started(job, resume)
            space, rules = job.search_space(), job.rule_set()
            warnings = check_space(rules, space, f"search space of {job.target}")
            for warning in warnings:
                logger.warning("rules: %s", warning)
            study = _open_study(job, space, rules, resume)
            table = service_table(job.home, job.service)
            clock.lap("start")
            plan = clock.timed("transfer", _transfer, job, study, table, space, rules, resume)
            focus = knob_focus(job, space, logger)
            tracker = clock.timed("tracking", _start_tracking, job, space, study, resume)
            stopped.tracker = tracker
            guard = _guard(job, rules, study, space, table, logger)
            runner = job.trial_runner()
            with on_testbed(job, runner, tracker, resume, logger):
                first_baseline = clock.timed("noise_probe", _probe_noise, job, study, runner,
                                             tracker, logger)
                clock.timed("noise_probe", measure_default_metrics, job, runner, tracker, logger)
                if job.workers:  # the work pool's workers explore; the job waits for them
                    study = clock.timed("trials", fan_out, job, tracker.run_id, logger, listener)
                else:
                    clock.timed("trials", _explore, job, study, space, runner, guard, tracker,
                                listener, logger, first_baseline, focus)
                focused = focus_record(job, study, focus, tracker, logger)
                best, verification, front = clock.timed("verification", job_result, job, study,
                                                        rules, runner, tracker, listener, logger)
                trial_table = write_job_table(job, study)
                model = clock.timed("training", _train, job, logger) if job.train else None
                summary, files = report(
                    job, study, best, verification, **clock.times(), space=space, ruleset=rules,
                    guard=guard, rule_warnings=warnings, plan=plan, model=model, noise=job.noise,
                    pareto_front=front, knob_focus=focused,
                    trial_table=str(trial_table), tracking_uri=tracking_uri(job.home))
                files = [*files, *settle_reference(job, summary, study, runner, tracker, logger)]
        _finish(job, tracker, summary, [*files, job.dir / "job.json", job.dir / "transfer.json",
                                        trial_table], plan, logger)
        _publish(job, summary, logger)
        clock.settle(summary, lap="report")  # result.json has the times until the report
        return no_result(summary) or regression_failed(summary) or summary


def _open_study(job: Job, space: SearchSpace, rules: RuleSet, resume: bool) -> optuna.Study:
    """The job's Optuna study (new, or the one it resumes)."""
    return open_job_study(job.home, job.study_name, job.direction, job.tuner, job.seed,
                          space.default_params(), resume, metric_names(job),
                          accept=RuleFilter(rules, space),
                          directions=job.objective_directions if job.several else None,
                          pruner=job.pruner,
                          max_resource=reports_per_run(job.target_cls, job.workload))


def _guard(job: Job, rules: RuleSet, study: optuna.Study, space: SearchSpace, table: Any,
           logger: logging.Logger | logging.LoggerAdapter[Any]) -> CandidateGuard:
    """What checks each candidate: the rules, and what the job's failures teach (if it learns)."""
    return CandidateGuard(rules, learn=RuleLearner(
        job.learned_rules(), study, space, rules, table, logger, job.trial_timeout,
    ) if job.learn_rules else None)


@dataclass
class _Stopped:
    """What a stop must close: the job's MLflow run, once it is started."""

    tracker: JobTracker | None = None


@contextlib.contextmanager
def _interrupted_on_error(job: Job) -> Iterator[_Stopped]:
    """A job stopped by anything (Ctrl-C, SIGTERM, a full disk, a bug) from its preparation
    on is recorded as interrupted, resumable, and its MLflow run (if started: the caller sets
    ``tracker`` on what this yields) closed as killed."""
    stopped = _Stopped()
    try:
        yield stopped
    except BaseException:
        job.status = JobStatus.INTERRUPTED
        job.save()
        if stopped.tracker is not None:
            stopped.tracker.finish_job({}, [], {}, status="KILLED")
            stopped.tracker.close()
        raise


def _transfer(job: Job, study: optuna.Study, table: pd.DataFrame, space: SearchSpace,
              rules: RuleSet, resume: bool) -> TransferPlan | None:
    """Queue the configs of the service's siblings and model first (None: transfer is off, or
    a resumed job has had it)."""
    if not job.transfer or resume:
        return None
    request = TransferRequest(
        service=job.service, objective=job.objective, direction=job.direction,
        own_instances=frozenset({job.instance, *job.instance_dirs()}),
        workload_fp=fingerprint.features(job.target_cls, job.workload),
        limits=dict(job.target_cls.workload_limits), seed=job.seed,
        priors=job.transfer_priors)
    return transfer_from_siblings(study, request, table=table,
                                  tracking_uri=tracking_uri(job.home), space=space,
                                  rules=rules, record=job.dir / "transfer.json")


def _start_tracking(job: Job, space: SearchSpace, study: optuna.Study,
                    resume: bool) -> JobTracker:
    """The job's MLflow parent run (a resumed job reopens its own and logs what it missed),
    with the policies and rule files the job uses (the files as artifacts under ``rules/``)."""
    rule_files = [p for p in (shipped_rules_path(job.target_cls), *map(Path, job.rule_files),
                              learned_path(job.home, job.service) if job.learn_rules else None)
                  if p is not None and p.is_file()]
    tracker = start_tracking(
        tracking_uri(job.home), f"knobflow/{job.target}", job.home / "artifacts",
        job.study_name, run_id=job.mlflow_run_id, study=study if resume else None,
        params={"target": job.target, "service": job.service, "instance": job.instance,
                "objective": job.objective, "direction": job.direction, "tuner": job.tuner,
                "budget": job.budget, "parallel": job.parallel, "seed": job.seed,
                "trial_timeout": job.trial_timeout, "knobs": ",".join(space.names),
                "policies": ",".join(job.policies) or "none",
                "rule_files": ",".join(str(p) for p in rule_files) or "none",
                "learn_rules": job.learn_rules,
                **{f"workload.{k}": v for k, v in job.workload.items()}},
        rule_files=rule_files, note=(
            f"knobflow tune {job.target}: instance {job.instance} of service {job.service}, "
            f"{job.direction} {job.objective} with {job.tuner}, budget {job.budget} trials; "
            f"Optuna study {job.study_name}. Child runs: one per trial, baseline and "
            "verification run. Result: the gain metrics, best config files and history.png."),
        tags={"knobflow.study": job.study_name, "knobflow.target": job.target,
              "knobflow.service": job.service, "knobflow.instance": job.instance})
    job.mlflow_run_id = tracker.run_id
    job.save()
    if resume:  # what the killed job left open: its trials' child runs, its models' runs
        uri = tracking_uri(job.home)
        close_killed_runs(uri, f"knobflow/{job.target}", {"mlflow.parentRunId": tracker.run_id})
        close_killed_runs(uri, f"knobflow/{job.service}/models", {"knobflow.study": job.study_name})
    return tracker


def _probe_noise(job: Job, study: optuna.Study, runner: TrialRunner, tracker: JobTracker,
                 logger: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, float]:
    """Measure the machine's noise before the first trial (once per job, kept for --resume); a
    noisy machine switches on repeats and baselines. The first baseline, from those runs."""
    if job.noise is not None or job.noise_runs < 2:
        runner.policy = job.repeat_policy()
        return {}
    instance = next(iter(runner.instance_dirs))
    default_runs: list[dict[str, float]] = []  # every metric of the default, for SLA bounds
    check = probe_noise(
        runner, job.target_cls.knob_spec().defaults(), instance, job.noise_runs,
        job.noise_threshold, repeats=job.repeats, baseline_every=job.baseline_every,
        free=job.noise_free, on_run=lambda key, outcome: (
            tracker.log_trial(key.removeprefix("noise-"), outcome.record(), outcome.samples,
                              phase="noise"),
            outcome.ok and default_runs.append(dict(outcome.metrics))))
    job.repeats, job.baseline_every, job.noise = check.repeats, check.baseline_every, \
        check.to_dict()
    if default_runs:
        job.default_metrics = mean_metrics(default_runs)
    job.save()
    runner.policy = job.repeat_policy()
    # baselines switched on: the tuner is told ratios to the default, and the study says so
    name_metric(study, metric_names(job))
    logger.info("%s", check.message)
    tracker.annotate(
        params={"noise.runs": check.runs, "noise.spread": round(check.spread, 4),
                "noise.threshold": check.threshold, "repeats": job.repeats,
                "baseline_every": job.baseline_every},
        tags={"knobflow.noise": check.message})
    if not check.values or not job.baseline_every:
        return {}
    return {instance: statistics.fmean(check.values)}


def _explore(job: Job, study: optuna.Study, space: SearchSpace, runner: TrialRunner,
             guard: CandidateGuard, tracker: JobTracker, listener: TuneListener,
             logger: logging.Logger | logging.LoggerAdapter[Any],
             first_baseline: dict[str, float], focus: KnobFocus | None) -> ExploreStats:
    """Run the search; every trial goes to MLflow, the log and the listener."""

    def on_trial(number: int, outcome: TrialOutcome, stats: ExploreStats) -> None:
        tracker.log_trial(str(number), outcome.record(), outcome.samples,
                          validation=outcome.validation)
        what = (f"{outcome.value:.6g}" if outcome.ok else f"pruned ({outcome.message})"
                if outcome.pruned else f"failed ({outcome.failure_class}: {outcome.message})")
        more = "".join(f", {m} {outcome.metrics.get(m, float('nan')):.6g}"
                       for m in job.objective_names[1:]) if outcome.ok else ""
        broken = [k for k, v in outcome.constraints.items() if v > 0]
        logger.info("trial %d on %s: %s %s%s%s; best %s", number, outcome.instance,
                    job.objective, what, more,
                    f" (breaks {'; '.join(broken)})" if broken else "", stats.best_value)
        listener.trial_done(str(number), outcome, stats)

    return explore(
        study, space, runner, job.budget, job.time_budget, on_trial=on_trial, guard=guard,
        baseline_every=job.baseline_every, first_baseline=first_baseline,
        on_baseline=lambda key, outcome: tracker.log_trial(
            key, outcome.record(), outcome.samples, phase="baseline"),
        objectives=job.objective_names, bounds=job.bounds(),
        default_metrics=job.default_metrics, focus=focus,
    )


def _train(job: Job, logger: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, Any]:
    """The service's models, trained on its trial table with this job's trials in it (of
    several objectives: the first, the value of every trial)."""
    if job.several:
        logger.info("models: trained on the first objective, %s (%s), only; %s are not "
                    "modelled", job.objective, job.direction,
                    ", ".join(job.objective_names[1:]))
    return train_service_models(
        service_table(job.home, job.service), spec=job.target_cls.knob_spec(),
        objective=job.objective, direction=job.direction, service=job.service,
        instance=job.instance, workload_fp=fingerprint.features(job.target_cls, job.workload),
        tracking_uri=tracking_uri(job.home), seed=job.seed,
        workload_limits=job.target_cls.workload_limits, artifact_root=job.home / "artifacts",
        study=job.study_name)


def _finish(job: Job, tracker: JobTracker, summary: RunSummary, artifacts: list[Path],
            plan: TransferPlan | None, logger: logging.Logger | Any) -> None:
    """Record the job as finished and close its MLflow run with the result."""
    job.status = JobStatus.FINISHED
    job.save()
    metrics = ("best_value", "default_value", "gain", "gain_low", "gain_high", "n_trials",
               "n_failed", "n_blocked", "n_pruned", "pruned_saved_s", "best_observed_value")
    tracker.finish_job(
        metrics={k: getattr(summary, k) for k in metrics}, artifacts=artifacts,
        tags={"knobflow.best_trial": str(summary.best_trial), "knobflow.verdict": summary.verdict,
              **({"knobflow.policy_warnings": "; ".join(summary.policy_warnings)[:5000]}
                 if summary.policy_warnings else {}), **_transfer_tags(plan),
              "knobflow.verify": summary.verify_stop,
              **_flow_run_tag()},  # a resumed job: the flow run that finished it
        status="FINISHED" if summary.best_config is not None else "FAILED",
    )
    tracker.close()
    if tracker.errors:
        logger.warning("%d MLflow writes failed; first: %s", len(tracker.errors),
                       tracker.errors[0])


def _flow_run_tag() -> dict[str, str]:
    run_id = current_flow_run_id()
    return {FLOW_RUN_TAG: run_id} if run_id else {}


def _publish(job: Job, summary: RunSummary, logger: logging.Logger | Any) -> None:
    """The result as an artifact of the flow run; a failure to publish loses nothing else."""
    try:
        publish_result(job, summary)
    except Exception as exc:  # the API may be gone; the files and the MLflow run are written
        logger.warning("the result artifact was not published: %s: %s", type(exc).__name__, exc)


def _transfer_tags(plan: TransferPlan | None) -> dict[str, str]:
    if plan is None:
        return {"knobflow.transfer": "off"}
    return {
        "knobflow.transfer": "on" if plan.seeds else f"nothing: {plan.reason}"[:250],
        "knobflow.transfer.seeds": str(len(plan.seeds)),
        "knobflow.transfer.from_instances": ",".join(plan.from_instances),
        "knobflow.transfer.model": f"{plan.model_name}/{plan.model_version}"
        if plan.model_name else "",
    }
