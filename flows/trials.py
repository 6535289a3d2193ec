"""A service's trial table across all its jobs, and the expert rows imported for it.

Each job writes its own rows once, at its end, to ``<home>/tables/<service>/<study>.parquet``
(cost grows with the job, not with the service's history); imported expert rows live in
``<home>/expert/<service>.parquet``. ``service_table`` is their union, rebuilt from the Optuna
study (the source of truth) for a job that has not finished (it may not have written its rows, or
has trials since: a resumed job).

With shared records (``records_url``: every host's records in one PostgreSQL table) a job's rows
are also written there under the same key (``tables/<service>/<study>.parquet``), and
``service_table`` adds every other home's rows of the service from it (by study: a study of this
home is read here, never twice), so transfer and training use the whole service whichever host
ran the trials. Imported expert rows are shared the same way (``expert/<service>.parquet``,
``updating_expert`` under a lock every host takes).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd

from flows.job import Job, JobStatus, recorded_jobs
from targets.common.files import file_lock
from targets.common.records import Records, records
from tuners.study import open_study, study_names
from tuners.trials import as_table, read_parquet, study_rows, write_parquet


def table_key(service: str, study: str) -> str:
    """A job's trial table as a record: its path under the home."""
    return f"tables/{service}/{study}.parquet"


def job_table_path(job: Job) -> Path:
    return job.home / table_key(job.service, job.study_name)


def expert_path(home: Path, service: str) -> Path:
    return home / "expert" / f"{service}.parquet"


def read_expert(home: Path, service: str, store: Records | None = None) -> pd.DataFrame:
    """``service``'s imported expert rows: the shared records' when shared (this home's file
    while none were shared), else the home's file."""
    store = store or records(home=home)
    data = store.read(f"expert/{service}.parquet") if store.shared else None
    return pd.read_parquet(io.BytesIO(data)) if data else read_parquet(expert_path(home, service))


@contextlib.contextmanager
def updating_expert(home: Path, service: str) -> Iterator[tuple[pd.DataFrame, Callable[
        [pd.DataFrame], None]]]:
    """The expert rows of ``service`` and a function that stores new ones, under a lock every
    importer takes (every host's, when the records are shared): imports keep each other's rows."""
    store, path = records(home=home), expert_path(home, service)

    def write(table: pd.DataFrame) -> None:
        write_parquet(table, path)
        if store.shared:
            store.write(f"expert/{service}.parquet", path.read_bytes())

    lock = store.lock(f"expert:{service}") if store.shared else file_lock(
        path.with_name(path.name + ".lock"))
    with lock:
        yield read_expert(home, service, store), write


def jobs_of(home: Path, service: str) -> list[Job]:
    """The jobs of ``service`` (every instance) that have a study on disk."""
    names = set(study_names(home))
    return [j for j in recorded_jobs(home) if j.service == service and j.study_name in names]


def job_rows(job: Job, study: optuna.Study | None = None) -> pd.DataFrame:
    """The trial-table rows of one job, from its study."""
    if study is None:
        study = open_study(job.home, job.study_name, job.direction,
                           optuna.samplers.RandomSampler(), create=False)
    return as_table(study_rows(study, service=job.service, target=job.target,
                               objective=job.objective, direction=job.direction))


def write_job_table(job: Job, study: optuna.Study) -> Path:
    """Write the job's rows of the trial table (and to the shared records when there are);
    its path."""
    path = write_parquet(job_rows(job, study), job_table_path(job))
    store = records(home=job.home)
    if store.shared:
        store.write(table_key(job.service, job.study_name), path.read_bytes())
    return path


def service_table(home: Path, service: str, store: Records | None = None) -> pd.DataFrame:
    """Every trial of ``service``'s jobs (all instances) under ``home``, plus, with shared
    records, every other home's rows of the service, plus its imported expert rows."""
    parts: list[pd.DataFrame] = []
    studies: set[str] = set()
    for job in jobs_of(home, service):
        path = job_table_path(job)
        # a finished job wrote its rows last; one that runs, or was interrupted, may have more
        stale = job.status != JobStatus.FINISHED or not path.exists()
        parts.append(job_rows(job) if stale else pd.read_parquet(path))
        studies.add(job.study_name)
    store = store or records(home=home)
    parts.extend(shared_rows(store, service, studies))
    parts.append(read_expert(home, service, store))
    rows = [r for part in parts if not part.empty for r in part.to_dict(orient="records")]
    return as_table(rows)


def shared_rows(store: Records, service: str, skip: set[str]) -> list[pd.DataFrame]:
    """The trial tables of ``service``'s studies other homes wrote to the shared records (none
    when the records are this home's files), leaving out the studies in ``skip``."""
    if not store.shared:
        return []
    parts = []
    for key in store.keys(f"tables/{service}/"):
        study = key.rpartition("/")[2].removesuffix(".parquet")
        if study in skip or "/" in key.removeprefix(f"tables/{service}/"):
            continue
        data = store.read(key)
        if data:
            parts.append(pd.read_parquet(io.BytesIO(data)))
    return parts
