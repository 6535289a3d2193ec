"""One worker of a tuning job fanned out over hosts (``knobflow tune TARGET --workers N``).

``tune-worker`` is the Prefect flow a work pool's worker runs on a test-bed host: it owns ONE
local test instance of the job's target and explores the job's study in the shared Optuna
storage (PostgreSQL, ``tuners.study.storage_for``) beside the other workers, until the study holds
the job's budget of finished trials (``tasks.explore.Exploration`` with ``shared=True``: counted
under the study's advisory lock, no overshoot; a dead worker's trial is failed by heartbeat and
run again by another). Every trial is an MLflow child run of the job's parent run on the shared
tracking server. The job (``flows/tune.py``) opens the study, queues the default config, runs
these flows through the work pool and, once the budget is reached, verifies, trains and reports.

The deployment is made on the fly from the job host's source (``deploy_worker``); a worker host
needs the same knobflow checkout at the same path (``infra/README.md``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import zlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, get_run_logger

from flows.job import Job, hold_instance, make_home
from flows.spec import JobSpec
from targets.common.errors import KnobflowError
from targets.common.settings import knobflow_home, quiet_environment, tracking_uri, writable_home
from tasks.explore import Exploration, ExploreStats
from tasks.guard import CandidateGuard, RuleFilter
from tasks.track import JobTracker
from tuners.pruners import make_pruner
from tuners.samplers import make_sampler
from tuners.study import is_shared, shared_storage_url, storage_for, stored_trials
from tuners.trials import ATTR, TrialOutcome, TrialStatus, finished_trials, is_pruned_early

__all__ = [
    "DEPLOYMENT", "FLOW_NAME", "REPO", "check_fleet", "deploy_worker", "fan_out", "tune_worker",
    "work_pool", "worker_job",
]

FLOW_NAME = "tune-worker"
#: The deployment of this flow a job runs (``tune-worker/<DEPLOYMENT>``).
DEPLOYMENT = "knobflow-worker"
#: The checkout this module is part of (the deployment's source).
REPO = Path(__file__).resolve().parent.parent


def work_pool() -> str:
    """The work pool a job's workers take flow runs from: ``Settings.work_pool`` (default
    ``knobflow``)."""
    from targets.common.settings import configured, current_settings

    return current_settings().work_pool if configured() else "knobflow"


def _prefect_api_url() -> str | None:
    from flows.temporary_api import configured_api
    from targets.common.settings import configured, current_settings

    if configured() and current_settings().prefect_api_url:
        return current_settings().prefect_api_url
    return configured_api() or os.environ.get("PREFECT_API_URL") or None


def check_fleet(home: Path, workers: int) -> None:
    """Refuse ``--workers N`` when the shared stack it needs is not configured: a shared Optuna
    storage for the study, a Prefect API with a work pool for the workers."""
    if not workers:
        return
    missing = [what for what, there in (
        ("a shared Optuna storage (optuna_storage)", shared_storage_url(home) is not None),
        ("a Prefect API (PREFECT_API_URL)", _prefect_api_url() is not None)) if not there]
    if missing:
        raise KnobflowError(
            f"--workers {workers} runs trials in Prefect workers on one shared study, and "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not configured: "
            "start the shared stack and point knobflow at it (`infra/stack start`, then "
            "`eval $(infra/stack env)`), or use --parallel N for instances of this host")


def worker_job(record: dict[str, Any], instance: str, home: Path) -> Job:
    """The job record ``record`` (the job's ``job.json``) as one worker's job: its own
    ``instance`` under its own ``home``, one instance."""
    known = {f.name for f in fields(Job)} - {"home"}
    job = Job(**{k: v for k, v in record.items() if k in known}, home=home)
    job.instance, job.parallel = instance, 1
    return job


@flow(name=FLOW_NAME, log_prints=False)
def tune_worker(job: dict[str, Any], study_name: str, parent_run_id: str, instance: str,
                home: str | None = None) -> dict[str, Any]:
    """Explore the shared study ``study_name`` on test instance ``instance`` of this host until
    the study holds the job's budget of finished trials; each trial an MLflow child run of
    ``parent_run_id``. ``job`` is the job's record; ``home`` this host's state directory
    (default ``$KNOBFLOW_HOME`` or ./.knobflow). What this worker ran."""
    quiet_environment()
    logger = get_run_logger()
    root = writable_home(knobflow_home(home))
    make_home(root)
    work = worker_job(job, instance, root)
    storage = storage_for(root, study_name)
    if not is_shared(storage):
        raise KnobflowError("tune-worker: no shared Optuna storage is configured on this host; "
                            "point it at the stack (`eval $(infra/stack env)`) before starting "
                            "its Prefect worker")
    # a seed of its own: workers with one seed would draw the same candidates
    space, rules = work.search_space(), work.rule_set()
    sampler = make_sampler(work.tuner, (work.seed + zlib.crc32(instance.encode())) % 2**31,
                           accept=RuleFilter(rules, space))
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                              pruner=make_pruner(work.pruner))  # the job's --pruner, here too
    tracker = JobTracker(tracking_uri(root), f"knobflow/{work.target}", root / "artifacts")
    tracker.run_id = parent_run_id
    ran: list[int] = []

    def on_trial(number: int, outcome: TrialOutcome, stats: ExploreStats) -> None:
        tracker.log_trial(str(number), outcome.record(), outcome.samples,
                          validation=outcome.validation)
        ran.append(number)
        what = (f"{outcome.value:.6g}" if outcome.ok
                else f"failed ({outcome.failure_class}: {outcome.message})")
        logger.info("trial %d on %s: %s %s", number, instance, work.objective, what)

    spec = JobSpec.of(target=work.target, instance=instance, service=work.service)
    try:
        with hold_instance(root, spec):  # one worker per instance of this host
            stats = Exploration(
                study, space, work.trial_runner(), work.budget, work.time_budget,
                on_trial=on_trial, guard=CandidateGuard(rules), shared=True,
                baseline_every=work.baseline_every,
                on_baseline=lambda key, outcome: tracker.log_trial(
                    f"{key}", outcome.record(), outcome.samples, phase="baseline"),
                bounds=work.bounds(), default_metrics=work.default_metrics,
            ).run()
    finally:
        tracker.close()
    logger.info("%s: ran %d trials of %s (%d blocked)", instance, len(ran), study_name,
                stats.blocked)
    return {"instance": instance, "trials": ran, "blocked": stats.blocked,
            "tracking_errors": tracker.errors}


def deploy_worker(work_pool: str) -> str:
    """Create (or update) the deployment of ``tune-worker`` on ``work_pool`` from this checkout
    (its flow runs change into it); the work pool is made as a process pool if missing. The
    deployment's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another job made it meanwhile
                client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    source = tune_worker.from_source(source=str(REPO), entrypoint="flows/worker.py:tune_worker")
    with contextlib.redirect_stdout(io.StringIO()):  # Prefect prints a table of deployments
        deployment_id = source.deploy(  # type: ignore[union-attr]
            name=DEPLOYMENT, work_pool_name=work_pool, build=False, push=False,
            print_next_steps=False, ignore_warnings=True,
            description="One worker of a `knobflow tune --workers N` job: explores the job's "
                        "shared study on one test instance of its host (flows/worker.py).")
    return str(deployment_id)


def _heard(study: optuna.Study, finished: list[optuna.trial.FrozenTrial], seen: set[int],
           budget: int, listener: Any) -> None:
    """Tell ``listener`` (the CLI's bar: ``trial_done``) of the finished trials not yet told."""
    stats = ExploreStats(budget=budget, done=len(finished))
    stats.failed = sum(1 for t in finished if t.state == optuna.trial.TrialState.FAIL)
    stats.pruned = sum(1 for t in finished if is_pruned_early(t))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in sorted(finished, key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and (
                stats.best_value is None
                or (t.value > stats.best_value if maximize else t.value < stats.best_value)):
            stats.best_value, stats.best_number = t.value, t.number
    for t in finished:
        if t.number in seen:
            continue
        seen.add(t.number)
        record = t.user_attrs.get(ATTR, {})
        outcome = TrialOutcome(config=dict(record.get("config", {})),
                               instance=str(record.get("instance", "")),
                               status=TrialStatus(record.get("status", TrialStatus.FAILED)),
                               value=record.get("value"),
                               baseline_value=record.get("baseline_value"))
        listener.trial_done(str(t.number), outcome, stats)


def fan_out(job: Job, parent_run_id: str, logger: logging.Logger | Any, listener: Any = None,
            poll_s: float = 1.0, settle_s: float = 120.0) -> optuna.Study:
    """Run ``job.workers`` flow runs of ``tune-worker`` through the work pool on the job's
    shared study (created, default config queued, by the job) and wait until it holds the
    job's budget of finished trials, logging progress; then give the workers ``settle_s`` to
    end. A worker that crashed or failed does not stop the job while the others reach the
    budget; if every worker ends first, the job goes on with the trials there are.
    ``listener`` (``trial_done``) hears of every finished trial, whoever ran it. The study,
    read afresh when they are done."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    deploy_worker(work_pool())
    record = json.loads(json.dumps({k: v for k, v in asdict(job).items() if k != "home"},
                                   default=str))
    runs = [run_deployment(
        name=f"{FLOW_NAME}/{DEPLOYMENT}", timeout=0, as_subflow=True,
        parameters={"job": record, "study_name": job.study_name, "parent_run_id": parent_run_id,
                    "instance": f"{job.instance}-w{k}", "home": None},
        flow_run_name=f"{job.study_name}-w{k}") for k in range(1, job.workers + 1)]
    logger.info("%d workers started on pool %s: %s", len(runs), work_pool(),
                ", ".join(str(r.id) for r in runs))
    study = optuna.load_study(study_name=job.study_name, storage=storage_for(job.home))
    done, shown, reached_at, seen = 0, -1, None, set[int]()
    with get_client(sync_client=True) as client:
        while True:
            finished = finished_trials(study, stored_trials(study))
            done = len(finished)
            if listener is not None:
                _heard(study, finished, seen, job.budget, listener)
            if done != shown:
                logger.info("trials done: %d/%d", done, job.budget)
                shown = done
            states = [client.read_flow_run(r.id).state for r in runs]
            ended = all(s is not None and s.is_final() for s in states)
            if done >= job.budget:
                reached_at = reached_at or time.monotonic()
                if ended or time.monotonic() - reached_at > settle_s:
                    break
            elif ended:
                logger.warning("every worker ended with %d of %d trials done", done, job.budget)
                break
            time.sleep(poll_s)
    counts: dict[str, int] = {}
    for state in states:
        name = state.type.value if state is not None else "UNKNOWN"
        counts[name] = counts.get(name, 0) + 1
    if counts.get("COMPLETED", 0) < len(runs):
        logger.warning("worker flow runs: %s", counts)
    # a fresh cache: this process's own cache still holds the default it queued as waiting
    return optuna.load_study(study_name=job.study_name, storage=storage_for(job.home),
                             sampler=study.sampler)
