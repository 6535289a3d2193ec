"""Optuna studies of tuning jobs, persisted as journal files under the knobflow home.

``open_job_study`` is the step of a tuning job that opens its study (a Prefect task): a new one
with the default config queued first, or the study of a job to resume with its interrupted trials
queued again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tuners.samplers import make_sampler
from tuners.trials import finished_trials, requeue_interrupted

__all__ = ["journal_path", "open_job_study", "open_study"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal_path(home: Path, study_name: str) -> Path:
    return home / "studies" / f"{study_name}.journal"


def open_study(
    home: Path, study_name: str, direction: str, sampler: BaseSampler, *, create: bool
) -> optuna.Study:
    """Create (``create=True``) or load the study of a job; one journal file per study."""
    path = journal_path(home, study_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an open()-based lock: symlink locks misbehave on some shared filesystems
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    storage = JournalStorage(backend)
    if create:
        return optuna.create_study(
            study_name=study_name, storage=storage, direction=direction, sampler=sampler
        )
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)


@task(name="open-study", cache_policy=NO_CACHE)
def open_job_study(home: Path, study_name: str, direction: str, tuner: str, seed: int,
                   default_params: dict[str, Any] | None, resume: bool) -> optuna.Study:
    """The job's study: new with the default config queued first (trial 0 measures the
    baseline to beat), or reloaded to resume with its interrupted trials queued again."""
    if not resume:
        study = open_study(home, study_name, direction, make_sampler(tuner, seed), create=True)
        if default_params is not None:
            study.enqueue_trial(default_params)
        return study
    study = open_study(home, study_name, direction, make_sampler(tuner, seed), create=False)
    # a new seed, or the sampler would replay the draws the killed job already made
    study.sampler = make_sampler(tuner, seed + len(study.trials))
    requeued = requeue_interrupted(study)
    get_run_logger().info(
        "Resuming %s: %d finished trials kept, %d interrupted trials queued again",
        study_name, len(finished_trials(study)), requeued,
    )
    return study
