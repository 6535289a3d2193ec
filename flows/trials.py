"""A service's trial table across all its jobs, and the expert rows imported for it.

Each job writes its own rows once, at its end, to ``<home>/tables/<service>/<study>.parquet``
(cost grows with the job, not with the service's history); imported expert rows live in
``<home>/expert/<service>.parquet``. ``service_table`` is their union, rebuilt from the Optuna
study (the source of truth) for a job that has not finished (it may not have written its rows, or
has trials since: a resumed job).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from flows.job import Job, JobStatus, recorded_jobs
from tuners.study import open_study, study_names
from tuners.trials import as_table, read_parquet, study_rows, write_parquet


def job_table_path(job: Job) -> Path:
    return job.home / "tables" / job.service / f"{job.study_name}.parquet"


def expert_path(home: Path, service: str) -> Path:
    return home / "expert" / f"{service}.parquet"


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
    """Write the job's rows of the trial table; its path."""
    return write_parquet(job_rows(job, study), job_table_path(job))


def service_table(home: Path, service: str) -> pd.DataFrame:
    """Every trial of ``service``'s jobs (all instances) under ``home``, plus its imported
    expert rows."""
    parts = []
    for job in jobs_of(home, service):
        path = job_table_path(job)
        # a finished job wrote its rows last; one that runs, or was interrupted, may have more
        stale = job.status != JobStatus.FINISHED or not path.exists()
        parts.append(job_rows(job) if stale else pd.read_parquet(path))
    parts.append(read_parquet(expert_path(home, service)))
    records = [r for part in parts if not part.empty for r in part.to_dict(orient="records")]
    return as_table(records)
