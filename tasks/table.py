"""The trial table: every trial of a service in one pandas schema, exported as Parquet.

One row per trial (from every job's Optuna study, plus rows an expert imported) with:
identity and provenance (``service``, ``target``, ``instance``, ``study``, ``trial``,
``source`` = tuner | expert), the verdict (``status`` = ok | invalid | failed, ``failure_class``,
``reason``), the objective's ``value`` with its interval and repeats (``value_low``,
``value_high``, ``repeats``, ``raw_value``/``baseline_value`` when judged against a baseline),
then ``knob.*`` (requested), ``effective.*`` (applied), ``workload.*`` (fingerprint),
``metric.*``, ``counter.*`` and ``log.*`` columns, and the gate's facts (``n_samples``,
``steady_rate`` after warm-up with its interval, ``objective_cv``, ``error_rate``, ...). ``value``
is what the tuner was told (a ratio when judged against a baseline); ``metric.*`` is what was
measured. Training and transfer read it; ``training_rows`` keeps
only what may be learned from: clean trials, and expert rows only when asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from targets.base import FailureClass

ATTR = "knobflow"  # the Optuna user attribute holding a trial's record (tasks/explore.py)
SOURCES = ("tuner", "expert")
IDENTITY = [
    "service", "target", "instance", "study", "trial", "source", "status", "failure_class",
    "reason", "objective", "direction", "value", "value_low", "value_high", "repeats",
    "raw_value", "baseline_value", "started_at", "elapsed_s",
]
_ROW_FACTS = (
    "n_samples", "duration_s", "timestamps_monotonic", "samples_finite", "error_rate",
    "objective_cv", "steady_rate", "steady_rate_low", "steady_rate_high", "config_consistent",
    "config_differences", "knobs_not_read_back",
)


def status_of(record: dict[str, Any]) -> str:
    if record.get("status") == "ok":
        return "ok"
    return "invalid" if record.get("failure_class") == str(FailureClass.INVALID) else "failed"


def trial_row(
    record: dict[str, Any], *, service: str, target: str, study: str, trial: str,
    objective: str, direction: str, source: str = "tuner", started_at: Any = None,
) -> dict[str, Any]:
    """One trial record (``TrialOutcome.record()``) as a row of the trial table."""
    row: dict[str, Any] = {
        "service": service, "target": target, "instance": record.get("instance", ""),
        "study": study, "trial": trial, "source": source, "status": status_of(record),
        "failure_class": record.get("failure_class"),
        "reason": "; ".join(record.get("reasons") or []) or record.get("message") or None,
        "objective": objective, "direction": direction, "value": record.get("value"),
        "value_low": record.get("value_low"), "value_high": record.get("value_high"),
        "repeats": len(record.get("repeat_values") or []) or (1 if record.get("value") else 0),
        "raw_value": record.get("raw_value"), "baseline_value": record.get("baseline_value"),
        "started_at": started_at, "elapsed_s": record.get("elapsed_s"),
    }
    row.update({f"knob.{k}": v for k, v in (record.get("config") or {}).items()})
    row.update({f"effective.{k}": v for k, v in (record.get("effective_config") or {}).items()})
    row.update({f"workload.{k}": v for k, v in (record.get("workload_features") or {}).items()})
    gated = record.get("row") or {}
    row.update({k: v for k, v in gated.items() if k.startswith(("metric.", "counter.", "log."))})
    if not gated:  # failed before cleaning: the metrics it has, if any
        row.update({f"metric.{k}": v for k, v in (record.get("metrics") or {}).items()})
    row.update({k: gated.get(k) for k in _ROW_FACTS})
    return row


def study_rows(
    study: optuna.Study, *, service: str, target: str, objective: str, direction: str
) -> list[dict[str, Any]]:
    """The finished trials of one job's study as trial-table rows."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        record = t.user_attrs.get(ATTR)
        if not record or record.get("failure_class") in (
            str(FailureClass.INTERRUPTED), str(FailureClass.BLOCKED)
        ):
            continue  # it did not run: interrupted, or kept from running by a rule
        rows.append(trial_row(
            record, service=service, target=target, study=study.study_name, trial=str(t.number),
            objective=objective, direction=direction, started_at=t.datetime_start,
        ))
    return rows


def as_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with the identity columns first and the rest grouped by kind."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=IDENTITY)
    for col in IDENTITY:
        if col not in df.columns:
            df[col] = None
    rest = sorted(c for c in df.columns if c not in IDENTITY)
    return _arrow_safe(df[IDENTITY + rest])


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet wants one type per column: a column that mixes kinds of values becomes text."""
    for col in df.columns:
        if df[col].dtype != object:
            continue
        kinds = {type(v) for v in df[col] if v is not None and not _missing(v)}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = [None if _missing(v) else str(v) for v in df[col]]
    return df


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def training_rows(table: pd.DataFrame, use_expert: bool = False) -> pd.DataFrame:
    """What a model may learn from: clean trials; expert rows only when asked (they are
    hand-picked and bias a model toward what a person already believed)."""
    keep = table["status"] == "ok"
    if not use_expert:
        keep &= table["source"] != "expert"
    return table[keep & table["value"].notna()].reset_index(drop=True)


def write_parquet(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` atomically (a crash never leaves half a table behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else as_table([])
