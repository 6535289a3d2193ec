"""A service's trial table across all its jobs, and the expert rows imported for it.

The table is rebuilt from the Optuna studies (the source of truth) at the end of every job and
by ``knobflow export``; imported expert rows live in ``<home>/expert/<target>.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from flows.job import Job
from tasks.table import as_table, read_parquet, study_rows, write_parquet
from tuners.study import journal_path, open_study


def table_path(home: Path, target: str) -> Path:
    return home / "tables" / f"{target}.parquet"


def expert_path(home: Path, target: str) -> Path:
    return home / "expert" / f"{target}.parquet"


def jobs_of(home: Path, target: str) -> list[Job]:
    jobs = []
    for path in sorted((home / "jobs").glob("*/job.json")):
        try:
            job = Job.load(path, home)
        except (OSError, ValueError, TypeError):
            continue
        if job.target == target and journal_path(home, job.study_name).exists():
            jobs.append(job)
    return jobs


def service_table(home: Path, target: str) -> pd.DataFrame:
    """Every trial of ``target``'s jobs under ``home``, plus its imported expert rows."""
    rows = []
    for job in jobs_of(home, target):
        study = open_study(home, job.study_name, job.direction,
                           optuna.samplers.RandomSampler(), create=False)
        rows += study_rows(study, service=job.target, target=job.target,
                           objective=job.objective, direction=job.direction)
    expert = read_parquet(expert_path(home, target))
    table = as_table(rows)
    if not expert.empty:
        table = as_table([*table.to_dict(orient="records"), *expert.to_dict(orient="records")])
    return table


def refresh_table(home: Path, target: str) -> Path:
    """Rebuild and write the trial table of ``target``; its path."""
    return write_parquet(service_table(home, target), table_path(home, target))
