"""What the tuner is told of a finished trial: its value (or its ratio to the default measured
beside it), each further objective's metric, and each SLA bound's violation as an Optuna
constraint. ``tasks/explore.py`` tells it; a missing objective or baseline fails the trial."""

from __future__ import annotations

from typing import TYPE_CHECKING

from targets.base import FailureClass
from tasks.noise import ratio_to_baseline

if TYPE_CHECKING:
    import optuna

    from rules.bounds import Bound
    from tuners.trials import TrialOutcome

__all__ = ["objective_values", "relative_to", "tell_constraints"]


def relative_to(outcome: TrialOutcome, baseline: float | None) -> None:
    """Turn a trial's value into its ratio to the baseline (no baseline: the trial fails)."""
    if baseline is None or baseline <= 0:
        outcome.fail(FailureClass.INVALID,
                     "no baseline: the default config could not be measured on this instance")
        outcome.reasons = [*outcome.reasons, outcome.message]
        return
    outcome.raw_value, outcome.baseline_value = outcome.value, baseline
    assert outcome.value is not None
    outcome.value = ratio_to_baseline(outcome.value, baseline)
    if outcome.value_low is not None and outcome.value_high is not None:
        outcome.value_low = ratio_to_baseline(outcome.value_low, baseline)
        outcome.value_high = ratio_to_baseline(outcome.value_high, baseline)


def objective_values(outcome: TrialOutcome, more_objectives: list[str]) -> list[float]:
    """A clean trial's value, then each further objective's metric (one missing: the trial
    fails, and nothing is told as its values)."""
    if not outcome.ok:
        return []
    missing = [m for m in more_objectives if outcome.metrics.get(m) is None]
    if missing:
        outcome.fail(FailureClass.INVALID, f"the objective {missing[0]} was not measured")
        outcome.reasons = [*outcome.reasons, outcome.message]
        return []
    assert outcome.value is not None
    return [outcome.value, *(float(outcome.metrics[m]) for m in more_objectives)]


def tell_constraints(trial: optuna.trial.Trial, outcome: TrialOutcome, bounds: list[Bound],
                     default_metrics: dict[str, float]) -> None:
    """A clean trial's violation of each SLA bound (<= 0: met), kept in its record and set as
    the trial's Optuna constraint."""
    if not outcome.ok:
        return
    for bound in bounds:
        violation = bound.violation(outcome.metrics, default_metrics)
        outcome.constraints[bound.text] = violation
        trial.set_constraint(bound.key, violation)
