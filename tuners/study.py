"""Optuna studies of tuning jobs: every job of a home in one journal, ``<home>/optuna.journal``.

One storage per home lets ``optuna-dashboard <home>/optuna.journal`` show every job together;
jobs of different instances run at the same time and append to it under Optuna's own file lock.
Homes from before keep each study in ``<home>/studies/<study>.journal``: such a study is still
read (and resumed) from its own file; new jobs go to the shared journal.

With a shared stack (``Settings.optuna_storage``) every study lives in Optuna's ``RDBStorage`` on
PostgreSQL instead (``storage_for``): one storage per process, with heartbeats, so a trial whose
worker died is marked failed by the next ``fail_stale_trials`` and queued again by
``RetryHeartbeatStaleTrialCallback``. ``study_lock`` serialises what must not interleave between
the workers of one study (counting its trials and asking for the next) with a PostgreSQL
advisory lock; ``stored_trials`` reads them past Optuna's cache.

``open_job_study`` is the step of a tuning job that opens its study (a Prefect task): a new one
with the default config queued first and its metric named, or the study of a job to resume with
its interrupted trials queued again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tuners.pruners import make_pruner
from tuners.samplers import make_sampler
from tuners.trials import finished_trials, requeue_interrupted

__all__ = [
    "GRACE_ENV", "HEARTBEAT_ENV", "JOURNAL", "MAX_RETRY", "is_shared", "journal_path",
    "metric_name", "name_metric", "open_job_study", "open_study", "shared_storage_url",
    "storage_for", "storage_of", "stored_trials", "study_lock", "study_names",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)
# knobflow asks and tells (tasks/explore.py) and beats for its running trials itself
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental",
                        category=optuna.exceptions.ExperimentalWarning)

JOURNAL = "optuna.journal"  # the home's Optuna storage, beside mlflow.db

_storages: dict[tuple[str, int], JournalStorage] = {}
_storages_lock = threading.Lock()
_rdb: dict[str, RDBStorage] = {}

#: Seconds between a running trial's heartbeats, and without one before it counts as dead
#: (the worker running it was killed, or its host is gone): environment overrides for a fleet's
#: operator (and tests); defaults 10 s and 60 s.
HEARTBEAT_ENV, GRACE_ENV = "KNOBFLOW_OPTUNA_HEARTBEAT_S", "KNOBFLOW_OPTUNA_GRACE_S"
#: How often one config is retried after its worker died running it.
MAX_RETRY = 3


def shared_storage_url(home: Path | None = None) -> str | None:
    """The URL of the shared Optuna storage (``Settings.optuna_storage``) with the stack's
    password put in (for SQLAlchemy only: never print or log it), or None when studies stay in
    the home's journal."""
    from targets.common.settings import configured, current_settings, database_url

    if not configured():  # the settings object loads in ~0.3 s: only when something is set
        return None
    settings = current_settings()
    return database_url(settings.optuna_storage, settings) if settings.optuna_storage else None


def _rdb_storage(url: str) -> RDBStorage:
    """The process's ``RDBStorage`` of ``url``: heartbeats on, dead workers' trials retried."""
    with _storages_lock:
        if url not in _rdb:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _rdb[url] = RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=int(os.environ.get(HEARTBEAT_ENV) or 10),
                    grace_period=int(os.environ.get(GRACE_ENV) or 60),
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY))
        return _rdb[url]


def storage_for(home: Path, study_name: str | None = None) -> BaseStorage:
    """Where the studies of ``home`` live: the shared ``RDBStorage`` when a stack is
    configured, else the home's journal (or a study's own file from before)."""
    url = shared_storage_url(home)
    if url is not None:
        return _rdb_storage(url)
    return storage_of(journal_path(home, study_name))


def is_shared(storage: BaseStorage) -> bool:
    """Whether ``storage`` (or the storage it caches) is shared between hosts (RDB)."""
    return isinstance(getattr(storage, "_backend", storage), RDBStorage)


def stored_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial of ``study`` as its storage holds it now, past Optuna's cache of an RDB
    storage: the cache keeps a trial this process created (a queued config, a retry) in the
    state it was created in once a later trial has finished, so it would count a trial another
    worker runs as still waiting."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage.get_all_trials(study._study_id, deepcopy=False)


_local_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def study_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the study's lock: a PostgreSQL advisory lock (held on a connection of the storage's
    own engine, so across processes and hosts) for a shared storage, a process-wide lock else."""
    storage = study._storage
    inner = getattr(storage, "_backend", storage)  # Optuna may wrap it in a cache
    if isinstance(inner, RDBStorage) and inner.engine.dialect.name == "postgresql":
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(f"optuna:{study.study_name}".encode()).digest()[:8],
                             "big", signed=True)
        with inner.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    with _storages_lock:
        lock = _local_locks.setdefault(study.study_name, threading.Lock())
    with lock:
        yield


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


class SyncOnTell(JournalFileBackend):
    """Optuna's journal file, flushed to disk (fsync) when a trial ends or the study changes, not
    at each of an asked trial's parameters: Optuna syncs every append, and the 4-6 appends of
    one ask cost ~20 ms of fsync on the path to the next trial (an ask on a 30-trial journal:
    32 ms, 12 ms without). A trial's record (its user attributes, set just before it is told)
    is synced with the tell that follows it, not on its own.
    What is not synced yet is an unfinished trial (run again on ``--resume``); a killed process's
    appends are in the page cache and survive it; the next sync flushes them all."""

    #: Appends that need no sync of their own: an asked trial and what it is given before it
    #: ends (a trial's attributes can only be set while it runs: its end is synced).
    UNSYNCED = frozenset({JournalOperation.CREATE_TRIAL, JournalOperation.SET_TRIAL_PARAM,
                          JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
                          JournalOperation.SET_TRIAL_SYSTEM_ATTR,
                          JournalOperation.SET_TRIAL_USER_ATTR})

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if any(log.get("op_code") not in self.UNSYNCED for log in logs):
            super().append_logs(logs)  # Optuna's own: written and synced
            return
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with get_lock_file(self._lock), open(self._file_path, "ab") as fh:
            fh.write(text.encode("utf-8"))


def storage_of(path: Path) -> JournalStorage:
    """The journal storage of ``path``, one per file and process: a storage replays the whole
    journal when made, then only reads what other processes appended since."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    key = (str(path.resolve()), path.stat().st_ino)  # a file deleted and made again is new
    with _storages_lock:
        if key not in _storages:
            # an open()-based lock: symlink locks misbehave on some shared filesystems
            backend = SyncOnTell(str(path), lock_obj=JournalFileOpenLock(str(path)))
            _storages[key] = JournalStorage(backend)
        return _storages[key]


def study_names(home: Path) -> list[str]:
    """The names of every study under ``home``: the shared journal's and older files' own."""
    url = shared_storage_url(home)
    if url is not None:
        return optuna.get_all_study_names(_rdb_storage(url))
    names = []
    if (home / JOURNAL).exists():
        names = optuna.get_all_study_names(storage_of(home / JOURNAL))
    legacy = sorted((home / "studies").glob("*.journal")) if (home / "studies").exists() else []
    return names + [p.stem for p in legacy if p.stem not in names]


def metric_name(objective: str, relative: bool = False) -> str:
    """What a study's values are: the objective, or its ratio to the default config measured
    beside the trial (``--baseline-every``)."""
    return f"{objective} / default" if relative else objective


def name_metric(study: optuna.Study, name: str | list[str]) -> None:
    """Name the study's objective, or each of its objectives (``optuna-dashboard`` and
    ``trials_dataframe`` show them)."""
    names = [name] if isinstance(name, str) else list(name)
    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def open_study(
    home: Path, study_name: str, direction: str, sampler: BaseSampler, *, create: bool,
    directions: list[str] | None = None, pruner: BasePruner | None = None,
) -> optuna.Study:
    """Create (``create=True``) or load the study of a job from the home's storage (the shared
    one when a stack is configured); with ``directions`` (several objectives) a
    multi-objective study, ``direction`` being the first; ``pruner`` stops bad trials early
    (None: none does)."""
    storage = storage_for(home, study_name)
    pruner = pruner or optuna.pruners.NopPruner()
    if create:
        if directions is not None and len(directions) > 1:
            return optuna.create_study(
                study_name=study_name, storage=storage, directions=directions, sampler=sampler)
        return optuna.create_study(
            study_name=study_name, storage=storage, direction=direction, sampler=sampler,
            pruner=pruner,
        )
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                             pruner=pruner)


@task(name="open-study", cache_policy=NO_CACHE)
def open_job_study(home: Path, study_name: str, direction: str, tuner: str, seed: int,
                   default_params: dict[str, Any] | None, resume: bool,
                   metric: str | list[str] | None = None,
                   accept: Callable[[dict[str, Any]], bool] | None = None,
                   directions: list[str] | None = None, pruner: str = "none",
                   max_resource: int | None = None) -> optuna.Study:
    """The job's study: new with the default config queued first (trial 0 measures the
    baseline to beat), or reloaded to resume with its interrupted trials queued again; its
    values are named ``metric`` (one name per objective with several ``directions``).
    ``accept(params)``, the rules' say on a candidate, goes to the sampler (``make_sampler``);
    ``pruner`` (``tuners/pruners.py``) stops bad trials early."""
    stopper = make_pruner(pruner, max_resource)
    if not resume:
        study = open_study(home, study_name, direction, make_sampler(tuner, seed, accept=accept),
                           create=True, directions=directions, pruner=stopper)
        if metric is not None:
            name_metric(study, metric)
        if default_params is not None:
            study.enqueue_trial(default_params)
        return study
    study = open_study(home, study_name, direction, make_sampler(tuner, seed, accept=accept),
                       create=False, pruner=stopper)
    if metric is not None:
        name_metric(study, metric)  # a study of before was not named
    # a new seed, or the sampler would replay the draws the killed job already made
    study.sampler = make_sampler(tuner, seed + len(study.trials), accept=accept)
    requeued = requeue_interrupted(study)
    get_run_logger().info(
        "Resuming %s: %d finished trials kept, %d interrupted trials queued again",
        study_name, len(finished_trials(study)), requeued,
    )
    return study
