"""Optuna studies of tuning jobs: every job of a home in one journal, ``<home>/optuna.journal``.

One storage per home lets ``optuna-dashboard <home>/optuna.journal`` show every job together;
jobs of different instances run at the same time and append to it under Optuna's own file lock.
Homes from before keep each study in ``<home>/studies/<study>.journal``: such a study is still
read (and resumed) from its own file; new jobs go to the shared journal.

``open_job_study`` is the step of a tuning job that opens its study (a Prefect task): a new one
with the default config queued first and its metric named, or the study of a job to resume with
its interrupted trials queued again.
"""

from __future__ import annotations

import threading
import warnings
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

__all__ = [
    "JOURNAL", "journal_path", "metric_name", "name_metric", "open_job_study", "open_study",
    "storage_of", "study_names",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)

JOURNAL = "optuna.journal"  # the home's Optuna storage, beside mlflow.db

_storages: dict[tuple[str, int], JournalStorage] = {}
_storages_lock = threading.Lock()


def _legacy_path(home: Path, study_name: str) -> Path:
    """Where a home from before the shared journal kept a study: a journal file of its own."""
    return home / "studies" / f"{study_name}.journal"


def journal_path(home: Path, study_name: str | None = None) -> Path:
    """The journal that holds ``study_name`` (the home's shared one unless the study is from a
    home of before, with a file of its own), or the home's shared journal."""
    if study_name is not None:
        legacy = _legacy_path(home, study_name)
        if legacy.exists():
            return legacy
    return home / JOURNAL


def storage_of(path: Path) -> JournalStorage:
    """The journal storage of ``path``, one per file and process: a storage replays the whole
    journal when made, then only reads what other processes appended since."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    key = (str(path.resolve()), path.stat().st_ino)  # a file deleted and made again is new
    with _storages_lock:
        if key not in _storages:
            # an open()-based lock: symlink locks misbehave on some shared filesystems
            backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            _storages[key] = JournalStorage(backend)
        return _storages[key]


def study_names(home: Path) -> list[str]:
    """The names of every study under ``home``: the shared journal's and older files' own."""
    names = []
    if (home / JOURNAL).exists():
        names = optuna.get_all_study_names(storage_of(home / JOURNAL))
    legacy = sorted((home / "studies").glob("*.journal")) if (home / "studies").exists() else []
    return names + [p.stem for p in legacy if p.stem not in names]


def metric_name(objective: str, relative: bool = False) -> str:
    """What a study's values are: the objective, or its ratio to the default config measured
    beside the trial (``--baseline-every``)."""
    return f"{objective} / default" if relative else objective


def name_metric(study: optuna.Study, name: str) -> None:
    """Name the study's one objective (``optuna-dashboard`` and ``trials_dataframe`` show it)."""
    if study.metric_names == [name]:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name])


def open_study(
    home: Path, study_name: str, direction: str, sampler: BaseSampler, *, create: bool
) -> optuna.Study:
    """Create (``create=True``) or load the study of a job from the home's storage."""
    storage = storage_of(journal_path(home, study_name))
    if create:
        return optuna.create_study(
            study_name=study_name, storage=storage, direction=direction, sampler=sampler
        )
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)


@task(name="open-study", cache_policy=NO_CACHE)
def open_job_study(home: Path, study_name: str, direction: str, tuner: str, seed: int,
                   default_params: dict[str, Any] | None, resume: bool,
                   metric: str | None = None) -> optuna.Study:
    """The job's study: new with the default config queued first (trial 0 measures the
    baseline to beat), or reloaded to resume with its interrupted trials queued again; its
    values are named ``metric``."""
    if not resume:
        study = open_study(home, study_name, direction, make_sampler(tuner, seed), create=True)
        if metric is not None:
            name_metric(study, metric)
        if default_params is not None:
            study.enqueue_trial(default_params)
        return study
    study = open_study(home, study_name, direction, make_sampler(tuner, seed), create=False)
    if metric is not None:
        name_metric(study, metric)  # a study of before was not named
    # a new seed, or the sampler would replay the draws the killed job already made
    study.sampler = make_sampler(tuner, seed + len(study.trials))
    requeued = requeue_interrupted(study)
    get_run_logger().info(
        "Resuming %s: %d finished trials kept, %d interrupted trials queued again",
        study_name, len(finished_trials(study)), requeued,
    )
    return study
