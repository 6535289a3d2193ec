"""Trials as data: the record of one trial, the questions asked of a study, the trial table.

* ``TrialOutcome`` is what one trial produced after cleaning; its ``record()`` is stored on the
  Optuna trial (user attribute ``ATTR``) and is what MLflow and the trial table are built from.
  ``TrialStatus`` and ``FailureClass`` travel as enums from the trial process to MLflow.
* Study queries (``finished_trials``, ``ranked_trials``, ``best_trial``, ``is_blocked``,
  ``is_pruned_early``, ``is_prior``, ``requeue_interrupted``) say what a study's trials mean to
  knobflow; ``blocked_trial`` tells a candidate the rules blocked as an infeasible trial with no
  value, ``pruned_trial`` a trial the pruner stopped early as Optuna's pruned trial.
* The trial table: one row per trial of a service in one pandas schema (``IDENTITY`` first, then
  ``knob.*``, ``effective.*``, ``workload.*``, ``metric.*``, ``counter.*``, ``log.*`` and the
  gate's facts), exported as Parquet. ``value`` is what the tuner was told (a ratio when judged
  against a baseline); ``metric.*`` is what was measured. ``training_rows`` keeps only what a
  model may learn from: clean trials, and expert rows only when asked.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from targets.base import FailureClass, Measurement, TrialStatus
from targets.common.files import atomic_path

if TYPE_CHECKING:
    from rules.ruleset import RuleSet

__all__ = [
    "ATTR", "BLOCKED_BY_ATTR", "BLOCKED_CONSTRAINT", "IDENTITY", "PRIOR_ATTR", "PRUNED_ATTR",
    "RETRY_ATTR", "TRANSFER_ATTR", "RowStatus", "TrialOutcome", "TrialStatus", "as_table",
    "best_trial", "blocked_record", "blocked_trial", "clean_trials", "finished_trials",
    "is_blocked", "is_feasible", "is_prior", "is_pruned_early", "pareto_trials", "pruned_trial",
    "ranked_trials", "read_parquet", "requeue_interrupted", "study_rows", "training_rows",
    "trial_row", "write_parquet",
]

ATTR = "knobflow"  # the Optuna user attribute holding a trial's record
PRIOR_ATTR = "knobflow.prior"  # a sibling's trial added as a prior observation (transfer)
RETRY_ATTR = "knobflow.retry_of"  # set on a trial re-enqueued for an interrupted one
TRANSFER_ATTR = "knobflow.transfer"  # a trial queued by transfer: "model" or "sibling"
BLOCKED_BY_ATTR = "blocked_by"  # the rules that kept a candidate from running (for dashboards)
BLOCKED_CONSTRAINT = "rules"  # the Optuna constraint of a blocked candidate (> 0: infeasible)
PRUNED_ATTR = "knobflow.pruned_at"  # the step a pruner stopped a trial at (``pruned_trial``)


class RowStatus(enum.StrEnum):
    """A trial-table row's verdict: what a model may learn from (``ok``) and what not."""

    OK = "ok"
    INVALID = "invalid"  # it ran, and the measurement gate refused its measurement
    FAILED = "failed"


@dataclass
class TrialOutcome:
    """What one trial produced, after cleaning: a value to tell, or a failure with its reason."""

    config: dict[str, Any]
    instance: str
    status: TrialStatus
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    effective_config: dict[str, Any] = field(default_factory=dict)
    changed_knobs: list[str] = field(default_factory=list)
    failure_class: FailureClass | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    workload_features: dict[str, float] = field(default_factory=dict)
    #: The measurement row that was gated (``tasks/clean.py``) and why it failed, if it did.
    row: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    #: Noise-aware evaluation: the objective of every repeat and the 95 % interval of their mean;
    #: with a baseline, ``value`` is the ratio to it and ``raw_value`` the measured mean.
    repeat_values: list[float] = field(default_factory=list)
    value_low: float | None = None
    value_high: float | None = None
    raw_value: float | None = None
    baseline_value: float | None = None
    #: Warnings of the rules the config passed with, and a rule learned from this failure.
    rule_warnings: list[str] = field(default_factory=list)
    learned_rule: str | None = None
    #: Each SLA bound's violation (``--constraint`` text -> value; <= 0: met), when it ran.
    constraints: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: Wall-clock start and end of the run(s), seconds since the epoch (0: not run).
    started_at: float = 0.0
    finished_at: float = 0.0
    #: How late the tuner heard of this result: the candidates asked after its run ended and
    #: before it was told (0: told before the next ask; None: not told by an exploration).
    tell_lag: int | None = None
    #: Stopped early by the pruner (``--pruner``): the step it was stopped at, and the
    #: objective so far then (``value`` stays None: it is no measurement of the config).
    pruned_step: int | None = None
    pruned_value: float | None = None
    #: The trial failed because the disk the job writes to is full (the job stops).
    disk_full: bool = field(default=False, repr=False)
    #: The trial process failed before the target ran the config (no config's fault).
    harness_fault: bool = field(default=False, repr=False)
    #: The raw measurement between running and cleaning (never stored).
    measurement: Measurement | None = field(default=None, repr=False)
    #: Great Expectations' validation result (kept in MLflow, not in the study).
    validation: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.OK

    @property
    def pruned(self) -> bool:
        return self.status == TrialStatus.PRUNED

    def fail(self, failure_class: FailureClass, message: str) -> None:
        """Mark the trial failed (its value is not told to the tuner)."""
        self.status, self.failure_class, self.message = TrialStatus.FAILED, failure_class, message

    def prune(self, step: int, so_far: float | None, message: str) -> None:
        """Mark the trial stopped early by the pruner (neither a failure nor a measurement)."""
        self.status, self.failure_class, self.message = (TrialStatus.PRUNED,
                                                         FailureClass.PRUNED, message)
        self.pruned_step, self.pruned_value = step, so_far

    def record(self) -> dict[str, Any]:
        """The JSON-able record stored on the Optuna trial (samples left out: MLflow has them)."""
        return {
            "status": self.status, "value": self.value, "metrics": self.metrics,
            "config": self.config, "effective_config": self.effective_config,
            "changed_knobs": self.changed_knobs, "failure_class": self.failure_class,
            "message": self.message, "log_tail": self.log_tail, "counters": self.counters,
            "workload_features": self.workload_features, "row": self.row,
            "reasons": self.reasons, "repeat_values": self.repeat_values,
            "value_low": self.value_low, "value_high": self.value_high,
            "raw_value": self.raw_value, "baseline_value": self.baseline_value,
            "rule_warnings": self.rule_warnings, "learned_rule": self.learned_rule,
            **({"constraints": self.constraints} if self.constraints else {}),
            "instance": self.instance, "elapsed_s": round(self.elapsed_s, 4),
            "started_at": round(self.started_at, 3), "finished_at": round(self.finished_at, 3),
            "tell_lag": self.tell_lag,
            **({"pruned_step": self.pruned_step, "pruned_value": self.pruned_value}
               if self.pruned else {}),
        }


def blocked_record(config: Mapping[str, Any], rules: list[str], message: str) -> dict[str, Any]:
    """The record of a candidate the rules kept from running."""
    return {"status": TrialStatus.BLOCKED, "failure_class": FailureClass.BLOCKED,
            "config": dict(config), "rules": rules, "message": message, "instance": ""}


def blocked_trial(study: optuna.Study, trial: optuna.trial.Trial,
                  record: Mapping[str, Any]) -> None:
    """Tell ``trial`` (a candidate the rules kept from running, ``record`` its
    ``blocked_record``) the way Optuna marks an infeasible trial: the constraint ``rules`` above
    zero (how many rules it breaks) and no value, so no dashboard shows a measurement that was
    never made. Its state is PRUNED, not FAIL: TPE reads the constraints of complete and pruned
    trials only, and counts an infeasible one among the bad ones, so it learns to keep away;
    Optuna never reports a pruned trial as the best."""
    trial.set_user_attr(ATTR, dict(record))
    trial.set_user_attr(BLOCKED_BY_ATTR, ", ".join(record["rules"]))
    trial.set_constraint(BLOCKED_CONSTRAINT, float(max(1, len(record["rules"]))))
    study.tell(trial, state=TrialState.PRUNED)


def pruned_trial(study: optuna.Study, trial: optuna.trial.Trial, outcome: TrialOutcome) -> None:
    """Tell ``trial`` (stopped early by the pruner) as Optuna's own pruned trial: state PRUNED,
    the last intermediate value as its value (Optuna's doing: TPE ranks pruned trials below the
    complete ones by how far they got and that value), no constraint (it was feasible: that is
    what tells it from a blocked candidate), its step in ``PRUNED_ATTR``."""
    trial.set_user_attr(ATTR, outcome.record())
    trial.set_user_attr(PRUNED_ATTR, outcome.pruned_step)
    study.tell(trial, state=TrialState.PRUNED)


# -- study queries ---------------------------------------------------------------------------------
def _record(trial: FrozenTrial) -> dict[str, Any]:
    return trial.user_attrs.get(ATTR, {})


def is_prior(trial: FrozenTrial) -> bool:
    """A sibling instance's trial told to this job's tuner before it started (never run here)."""
    return PRIOR_ATTR in trial.user_attrs


def is_blocked(trial: FrozenTrial) -> bool:
    """A candidate the rules kept from running (told to Optuna as infeasible: ``blocked_trial``;
    a study of before holds them as complete with a stand-in value)."""
    return _record(trial).get("status") == TrialStatus.BLOCKED


def is_pruned_early(trial: FrozenTrial) -> bool:
    """A trial the pruner stopped early (``pruned_trial``): it ran, part of the way; it is
    neither a failure nor a measurement, is never verified, reported as best or learned from."""
    return (trial.state == TrialState.PRUNED
            and _record(trial).get("status") == TrialStatus.PRUNED)


def finished_trials(study: optuna.Study,
                    trials: Iterable[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Trials that count against the budget: complete, stopped early by the pruner (they ran),
    or failed for a reason of their own (not blocked, not interrupted, not a sibling's trial
    told as a prior observation); of
    ``trials`` when given (the study's as read some other way), else of the study's."""
    return [
        t for t in (study.get_trials(deepcopy=False) if trials is None else trials)
        if (t.state == TrialState.COMPLETE and not is_blocked(t) and not is_prior(t))
        or is_pruned_early(t)
        or (t.state == TrialState.FAIL
            and _record(t).get("failure_class") not in (None, FailureClass.INTERRUPTED))
    ]


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` meets every constraint it was told with (SLA bounds, ``--constraint``;
    a blocked candidate's ``rules``): all of them <= 0, as Optuna counts feasibility."""
    return all(v <= 0 for v in trial.constraints.values())


def clean_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran, were clean and met every SLA bound (blocked candidates never ran)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _record(t).get("status") == TrialStatus.OK and t.values and is_feasible(t)]


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran, were clean and met every SLA bound, best first in the (first)
    objective."""
    maximize = study.directions[0].name == "MAXIMIZE"
    return sorted(clean_trials(study), key=lambda t: t.values[0], reverse=maximize)


def _dominates(a: list[float], b: list[float], maximize: list[bool]) -> bool:
    """Whether values ``a`` are at least as good as ``b`` in every objective and better in one."""
    better = [x > y if up else x < y for x, y, up in zip(a, b, maximize, strict=True)]
    worse = [x < y if up else x > y for x, y, up in zip(a, b, maximize, strict=True)]
    return any(better) and not any(worse)


def pareto_trials(study: optuna.Study, rules: RuleSet | None = None) -> list[FrozenTrial]:
    """The Pareto front of a study of several objectives: the clean, feasible trials whose
    configs the rules (as they are now) pass and which no other such trial dominates, best
    first in the first objective."""
    maximize = [d.name == "MAXIMIZE" for d in study.directions]
    allowed = [t for t in ranked_trials(study)
               if rules is None or not rules.check(t.user_attrs[ATTR]["config"]).blocked]
    return [t for t in allowed
            if not any(_dominates(o.values, t.values, maximize) for o in allowed)]


def best_trial(study: optuna.Study, rules: RuleSet | None = None) -> FrozenTrial | None:
    """The best clean trial whose config the rules (as they are now) pass; None if there is none.

    Rules learned late in a job can forbid a config that ran earlier: the recommendation is
    checked again before it is reported."""
    for trial in ranked_trials(study):
        if rules is None or not rules.check(trial.user_attrs[ATTR]["config"]).blocked:
            return trial
    return None


def requeue_interrupted(study: optuna.Study) -> int:
    """Close trials a killed job left running and enqueue their configs again; return how many."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    count = 0
    for t in trials:
        stale = t.state == TrialState.RUNNING
        interrupted = t.state == TrialState.FAIL and (
            _record(t).get("failure_class") in (None, FailureClass.INTERRUPTED))
        if stale:
            study.tell(t.number, state=TrialState.FAIL)
        if (stale or interrupted) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number})
            count += 1
    return count


# -- the trial table -------------------------------------------------------------------------------
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


def _row_status(record: Mapping[str, Any]) -> RowStatus:
    if record.get("status") == TrialStatus.OK:
        return RowStatus.OK
    if record.get("failure_class") == FailureClass.INVALID:
        return RowStatus.INVALID
    return RowStatus.FAILED


def trial_row(
    record: Mapping[str, Any], *, service: str, target: str, study: str, trial: str,
    objective: str, direction: str, source: str = "tuner", started_at: Any = None,
) -> dict[str, Any]:
    """One trial record (``TrialOutcome.record()``) as a row of the trial table."""
    row: dict[str, Any] = {
        "service": service, "target": target, "instance": record.get("instance", ""),
        "study": study, "trial": trial, "source": source,
        "status": str(_row_status(record)),
        "failure_class": None if record.get("failure_class") is None
        else str(record["failure_class"]),
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
        record = _record(t)
        if not record or record.get("failure_class") in (
            FailureClass.INTERRUPTED, FailureClass.BLOCKED
        ):
            continue  # it did not run: interrupted, or kept from running by a rule
        rows.append(trial_row(
            record, service=service, target=target, study=study.study_name, trial=str(t.number),
            objective=objective, direction=direction, started_at=t.datetime_start,
        ))
    return rows


def as_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with the identity columns first and the rest sorted by name."""
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
    keep = table["status"] == RowStatus.OK
    if not use_expert:
        keep &= table["source"] != "expert"
    return table[keep & table["value"].notna()].reset_index(drop=True)


def write_parquet(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` atomically (a crash never leaves half a table behind)."""
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else as_table([])
