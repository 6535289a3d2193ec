"""The tuning flow: load the job, explore with Optuna, verify the best config, report.

knobflow tune sqlite --budget 20
  prepare_job      target, knob spec, search space, workload (or the job to resume)
  explore          ask -> run trial (own process, timeout) -> clean -> tell; MLflow child runs
  verify_best      best vs default, interleaved repeats -> gain with its interval
  report           best.yaml (+ native format), history.png, result.json; parent run closed
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.job import Job, build_job, find_resumable
from flows.report import plot_history, summarize, write_config_files, write_summary
from flows.trials import service_table, write_job_table
from model_registry import fingerprint
from model_registry.priors import prior_trials
from model_registry.registry import champion_table, load_champion
from model_registry.transfer import TransferPlan, plan_transfer
from rules.learn import propose_forbid
from rules.review import check_space, range_hints
from rules.ruleset import Rule, RuleSet
from targets.common.settings import knobflow_home, tracking_uri
from tasks.explore import ExploreStats, explore
from tasks.guard import CandidateGuard
from tasks.runner import TrialRunner
from tasks.track import JobTracker
from tasks.train import train_models, why_not_trainable
from tasks.verify import Verification, verify_best
from tuners.samplers import make_sampler
from tuners.space import SearchSpace
from tuners.study import open_study
from tuners.trials import (
    ATTR,
    TRANSFER_ATTR,
    TrialOutcome,
    best_trial,
    finished_trials,
    is_blocked,
    ranked_trials,
    requeue_interrupted,
    training_rows,
)

Listener = Callable[[str, TrialOutcome, ExploreStats | None], None]
listeners: list[Listener] = []


@task(name="prepare-job", cache_policy=NO_CACHE)
def prepare_job(home: str | None, target: str, resume: bool, options: dict[str, Any]) -> Job:
    """Validate a new job and record it, or load the unfinished job to resume."""
    root = knobflow_home(home)
    if resume:
        job = find_resumable(root, target, options.get("instance") or "local",
                             options.get("service"))
        for key in ("budget", "time_budget", "parallel"):
            if options.get(key) is not None:
                setattr(job, key, options[key])
    else:
        job = build_job(root, target, **{k: v for k, v in options.items() if v is not None})
    job.status = "running"
    job.save()
    return job


@task(name="verify-best", cache_policy=NO_CACHE)
def verify(
    job: Job, runner: TrialRunner, best_config: dict[str, Any], tracker: JobTracker
) -> Verification:
    """Re-measure the best config against the default, interleaved, on the first instance."""
    default = job.target_cls.knob_spec().defaults()

    def on_run(label: str, repeat: int, outcome: TrialOutcome) -> None:
        key = f"{repeat}-{label}"
        tracker.log_trial(key, outcome.record(), outcome.samples, phase="verify")
        for listener in listeners:
            listener(f"verify-{key}", outcome, None)

    return verify_best(
        runner,
        default,
        best_config,
        job.direction,
        job.verify_repeats,
        next(iter(runner.instance_dirs)),
        on_run=on_run,
    )


@flow(name="tune", log_prints=False)
def tune(
    target: str,
    instance: str = "local",
    budget: int | None = None,
    time_budget: float | None = None,
    tuner: str | None = None,
    parallel: int | None = None,
    workload: dict[str, Any] | None = None,
    workload_file: str | None = None,
    objective: str | None = None,
    seed: int | None = None,
    space_file: str | None = None,
    knobs: list[str] | None = None,
    trial_timeout: float | None = None,
    verify_repeats: int | None = None,
    repeats: int | None = None,
    repeat_until: float | None = None,
    max_repeats: int | None = None,
    baseline_every: int | None = None,
    rule_files: list[str] | None = None,
    policies: list[str] | None = None,
    learn_rules: bool | None = None,
    service: str | None = None,
    transfer: bool | None = None,
    transfer_priors: bool | None = None,
    train: bool | None = None,
    resume: bool = False,
    home: str | None = None,
) -> dict[str, Any]:
    """Tune ``target`` on ``instance``; return the job's summary (what ``--json`` prints)."""
    logger = get_run_logger()
    began = time.monotonic()
    options = {
        "instance": instance,
        "budget": budget,
        "time_budget": time_budget,
        "tuner": tuner,
        "parallel": parallel,
        "workload": workload,
        "workload_file": workload_file,
        "objective": objective,
        "seed": seed,
        "space_file": space_file,
        "knobs": knobs,
        "trial_timeout": trial_timeout,
        "verify_repeats": verify_repeats,
        "repeats": repeats,
        "repeat_until": repeat_until,
        "max_repeats": max_repeats,
        "baseline_every": baseline_every,
        "rule_files": rule_files,
        "policies": policies,
        "learn_rules": learn_rules,
        "service": service,
        "transfer": transfer,
        "transfer_priors": transfer_priors,
        "train": train,
    }
    job = prepare_job(home, target, resume, options)
    space = job.search_space()
    ruleset = job.rule_set()
    rule_warnings = check_space(ruleset, space, f"search space of {job.target}")
    for warning in rule_warnings:
        logger.warning("rules: %s", warning)
    study = open_job_study(job, space, resume)
    plan = transfer_from_siblings(job, space, ruleset, study) if job.transfer and not resume \
        else None
    tracker = start_tracking(job, space, study, resume)
    runner = job.trial_runner()
    guard = CandidateGuard(
        ruleset,
        learn=_learner(job, space, study, ruleset) if job.learn_rules else None,
        on_blocked=lambda number, config, verdict: logger.info(
            "candidate %d blocked by %s", number, ", ".join(f.rule for f in verdict.errors)
        ),
    )

    def on_trial(number: int, outcome: TrialOutcome, stats: ExploreStats) -> None:
        tracker.log_trial(str(number), outcome.record(), outcome.samples,
                          validation=outcome.validation)
        what = (
            f"{outcome.value:.6g}"
            if outcome.ok
            else f"failed ({outcome.failure_class}: {outcome.message})"
        )
        logger.info(
            "trial %d on %s: %s %s; best %s",
            number,
            outcome.instance,
            job.objective,
            what,
            stats.best_value,
        )
        for listener in listeners:
            listener(str(number), outcome, stats)

    try:
        explore(
            study,
            space,
            runner,
            job.budget,
            job.time_budget,
            on_trial=on_trial,
            baseline_every=job.baseline_every,
            on_baseline=lambda key, outcome: tracker.log_trial(
                key, outcome.record(), outcome.samples, phase="baseline"
            ),
            guard=guard,
        )
        best = best_trial(study, ruleset)  # rules learned late may forbid an early best
        verification, files = None, {}
        if best is not None:
            best_config = best.user_attrs[ATTR]["config"]
            verification = verify(job, runner, best_config, tracker)
            files = write_config_files(job, best_config, verification)
        table = write_job_table(job, study)
        summary = summarize(job, study, best, verification, files, time.monotonic() - began)
        summary["trial_table"] = str(table)
        summary["tracking_uri"] = tracking_uri(job.home)
        summary.update(_rules_summary(study, space, ruleset, guard, rule_warnings, best))
        summary["transfer"] = _transfer_summary(plan, study)
        summary["model"] = train_service_models(job) if job.train else None
        plot = plot_history(job, study, verification)
        result_path = write_summary(job, summary)
    except BaseException:
        job.status = "interrupted"
        job.save()
        tracker.finish_job({}, [], {}, status="KILLED")
        tracker.close()
        raise
    job.status = "finished"
    job.save()
    tracker.finish_job(
        metrics={
            k: summary[k]
            for k in (
                "best_value",
                "default_value",
                "gain",
                "gain_low",
                "gain_high",
                "n_trials",
                "n_failed",
                "n_blocked",
                "best_observed_value",
            )
        },
        artifacts=[result_path, job.dir / "job.json", job.dir / "transfer.json", table,
                   *map(Path, files.values())]
        + ([plot] if plot else []),
        tags={"knobflow.best_trial": str(summary["best_trial"]), **_transfer_tags(plan)},
        status="FINISHED" if best is not None else "FAILED",
    )
    tracker.close()
    if tracker.errors:
        logger.warning("%d MLflow writes failed; first: %s", len(tracker.errors), tracker.errors[0])
    return summary


def open_job_study(job: Job, space: SearchSpace, resume: bool) -> optuna.Study:
    """The job's Optuna study: new with the default config queued first, or reloaded to resume."""
    logger = get_run_logger()
    if not resume:
        study = open_study(
            job.home, job.study_name, job.direction, make_sampler(job.tuner, job.seed), create=True
        )
        default_params = space.default_params()
        if default_params is not None:  # trial 0 measures the default: a baseline to beat
            study.enqueue_trial(default_params)
        return study
    study = open_study(
        job.home, job.study_name, job.direction, make_sampler(job.tuner, job.seed), create=False
    )
    # a new seed, or the sampler would replay the draws the killed job already made
    study.sampler = make_sampler(job.tuner, job.seed + len(study.trials))
    requeued = requeue_interrupted(study)
    logger.info(
        "Resuming %s: %d finished trials kept, %d interrupted trials queued again",
        job.study_name,
        len(finished_trials(study)),
        requeued,
    )
    return study


def start_tracking(job: Job, space: SearchSpace, study: optuna.Study, resume: bool) -> JobTracker:
    """Open the job's MLflow parent run (a resumed job reopens its own and logs what it missed)."""
    tracker = JobTracker(tracking_uri(job.home), f"knobflow/{job.target}", job.home / "artifacts")
    job.mlflow_run_id = tracker.start_job(
        job.study_name,
        params={
            "target": job.target,
            "service": job.service,
            "instance": job.instance,
            "objective": job.objective,
            "direction": job.direction,
            "tuner": job.tuner,
            "budget": job.budget,
            "parallel": job.parallel,
            "seed": job.seed,
            "trial_timeout": job.trial_timeout,
            "knobs": ",".join(space.names),
            **{f"workload.{k}": v for k, v in job.workload.items()},
        },
        tags={
            "knobflow.study": job.study_name,
            "knobflow.target": job.target,
            "knobflow.service": job.service,
            "knobflow.instance": job.instance,
        },
        run_id=job.mlflow_run_id,
    )
    job.save()
    if resume:
        backfilled = _backfill_tracking(study, tracker)
        get_run_logger().info("%d finished trials logged to MLflow late", backfilled)
    return tracker


def _learner(job: Job, space: SearchSpace, study: optuna.Study, ruleset: RuleSet) -> Any:
    """A function that proposes a forbid rule for a failed trial, stores and logs it."""
    store = job.learned_rules()
    spec = job.target_cls.knob_spec()
    table = service_table(job.home, job.service)
    prior = [
        {k.name: row.get(f"knob.{k.name}", k.default) for k in spec}
        for row in table[table["status"] == "ok"].to_dict(orient="records")
    ] if not table.empty else []
    logger = get_run_logger()

    def learn(number: int, outcome: TrialOutcome) -> Rule | None:
        goods = prior + [t.user_attrs[ATTR]["config"] for t in ranked_trials(study)]
        # earlier failures of the same kind: the rule is widened to hold them where it can
        failures = [t.user_attrs[ATTR]["config"] for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
            if t.user_attrs.get(ATTR, {}).get("failure_class") == str(outcome.failure_class)]
        expression = propose_forbid(outcome.config, goods, space, ruleset, failures)
        if expression is None:
            return None
        rule = store.add(expression, rules=ruleset, study=job.study_name, trial=number,
                         failure_class=str(outcome.failure_class), message=outcome.message)
        logger.warning("trial %d %s: learned rule %s: forbid %s", number, outcome.failure_class,
                       rule.id, rule.expression.text)  # a widened rule keeps its id
        return rule

    return learn


def _rules_summary(study: optuna.Study, space: SearchSpace, ruleset: RuleSet,
                   guard: CandidateGuard, warnings: list[str],
                   best: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
    """What the rules did in this job, for the summary."""
    blocked = [t for t in study.get_trials(deepcopy=False) if is_blocked(t)]
    by_rule: dict[str, int] = {}
    for t in blocked:
        for rule in t.user_attrs[ATTR]["rules"]:
            by_rule[rule] = by_rule.get(rule, 0) + 1
    top = [t.user_attrs[ATTR]["config"] for t in ranked_trials(study)[:5]]
    best_warnings = ruleset.check(best.user_attrs[ATTR]["config"]).warnings if best else []
    return {
        "n_blocked": len(blocked),
        "blocked_by": by_rule,
        "learned_rules": [r.id for r in guard.learned],
        "rule_warnings": warnings + [f"best config: {w}" for w in best_warnings],
        "range_hints": range_hints(top, space),
    }


def _backfill_tracking(study: optuna.Study, tracker: JobTracker) -> int:
    """Log to MLflow the finished trials a killed job had not written yet."""
    logged = tracker.logged_trials()
    missing = [
        t for t in finished_trials(study) if str(t.number) not in logged and ATTR in t.user_attrs
    ]
    for t in missing:
        tracker.log_trial(str(t.number), t.user_attrs[ATTR])
    tracker.flush()
    return len(missing)


@task(name="transfer-from-siblings", cache_policy=NO_CACHE)
def transfer_from_siblings(job: Job, space: SearchSpace, ruleset: RuleSet,
                           study: optuna.Study) -> TransferPlan:
    """Queue the configs the service's champion model and its sibling instances suggest, right
    after the default config (see ``model_registry.transfer``)."""
    logger = get_run_logger()
    uri = tracking_uri(job.home)
    own = {job.instance, *job.instance_dirs()}
    table = training_rows(service_table(job.home, job.service))
    champion = load_champion(uri, job.service, job.objective)
    if table.empty and champion is not None:  # siblings tuned elsewhere, same tracking store
        table = training_rows(champion_table(uri, job.service, job.objective))
    siblings = table[~table["instance"].isin(own) & (table["objective"] == job.objective)]
    if siblings.empty and (champion is None or champion.tags.get("instance") in own):
        plan = TransferPlan(reason="no sibling instance of the service has run trials yet")
    else:
        plan = plan_transfer(
            space=space, rules=ruleset, siblings=siblings,
            workload_fp=fingerprint.features(job.target_cls, job.workload),
            limits=job.target_cls.workload_limits, direction=job.direction,
            champion=champion, seed=job.seed)
    for seed in plan.seeds:
        study.enqueue_trial(seed.params, user_attrs={TRANSFER_ATTR: seed.source},
                            skip_if_exists=True)
    if job.transfer_priors and not siblings.empty:
        priors = prior_trials(siblings, space, ruleset,
                              fingerprint.features(job.target_cls, job.workload),
                              job.target_cls.workload_limits, job.direction)
        study.add_trials(priors)
        plan.n_priors = len(priors)
        logger.info("transfer: %d sibling trials with close workloads told as priors",
                    len(priors))
    (job.dir / "transfer.json").write_text(json.dumps(plan.to_dict(), indent=2, default=str),
                                           encoding="utf-8")
    if plan.seeds:
        logger.info("transfer: %d configs queued first (%s) from %s, model %s v%s",
                    len(plan.seeds), ", ".join(s.source for s in plan.seeds),
                    ", ".join(plan.from_instances) or "-", plan.model_name, plan.model_version)
    else:
        logger.info("transfer: nothing queued (%s)", plan.reason)
    return plan


def _transfer_summary(plan: TransferPlan | None, study: optuna.Study) -> dict[str, Any] | None:
    """What transfer queued, and the trials that ran its configs."""
    if plan is None:
        return None
    trials = [t.number for t in study.get_trials(deepcopy=False)
              if TRANSFER_ATTR in t.user_attrs]
    return {"n_seeds": len(plan.seeds), "from_instances": plan.from_instances,
            "model": plan.model_name, "model_version": plan.model_version,
            "reason": plan.reason, "trials": trials, "n_priors": plan.n_priors}


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


@task(name="train-models", cache_policy=NO_CACHE)
def train_service_models(job: Job) -> dict[str, Any] | None:
    """Train the service's surrogate models on its trial table (all instances) and move the
    registry's champion if the new model validates better; a failure is reported, not fatal."""
    logger = get_run_logger()
    table = service_table(job.home, job.service)
    try:
        report = train_models(
            table, spec=job.target_cls.knob_spec(), objective=job.objective,
            direction=job.direction, service=job.service, instance=job.instance,
            workload_fp=fingerprint.features(job.target_cls, job.workload),
            tracking_uri=tracking_uri(job.home), seed=job.seed,
            workload_limits=job.target_cls.workload_limits,
            artifact_root=job.home / "artifacts")
    except Exception as exc:  # the tuning result stands without a model
        logger.warning("training the models of %s failed: %s", job.service, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    if report is None:
        why = why_not_trainable(table, job.objective) if not table.empty else "no trials"
        logger.info("models of %s not trained: %s", job.service, why)
        return {"skipped": why}
    best = report.best.metrics
    line = (f"{report.registered_name} v{report.registered_version} ({report.best_kind}, "
            f"{report.n_rows} trials): held-out rank correlation "
            f"{best['holdout_spearman']:.2f}, cv R² {best['cv_r2']:.2f}; champion "
            f"{'moved' if report.champion_moved else 'kept'}: {report.champion_reason}")
    logger.info("models of %s: %s", job.service, line)
    return {
        "name": report.registered_name, "version": report.registered_version,
        "kind": report.best_kind, "n_rows": report.n_rows,
        "champion_moved": report.champion_moved, "champion_reason": report.champion_reason,
        "metrics": {kind: r.metrics for kind, r in report.kinds.items()},
        "runs": {kind: r.run_id for kind, r in report.kinds.items()}, "line": line,
    }
