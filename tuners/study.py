"""Optuna studies of tuning jobs, persisted as journal files under the knobflow home."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

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
