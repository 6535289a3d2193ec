"""The pruner factory: a ``--pruner`` name becomes an Optuna pruner (early stopping).

A pruner reads the intermediate values a target reports while a trial runs (``Target.report``,
e.g. the mean rate after each interval) and stops a trial whose values are clearly worse than
those of earlier trials at the same step (``tasks/explore.py`` asks it after every report).

* ``none`` (default): every trial runs to its end;
* ``median``: Optuna's ``MedianPruner``: after ``MEDIAN_STARTUP`` trials ran to their end, a trial
  whose best value so far is worse than the median of earlier trials at the same step is
  stopped, from its ``MEDIAN_WARMUP``-th report on (the first reports of a run are its warm-up);
* ``hyperband``: Optuna's ``HyperbandPruner`` (successive halving in brackets), over steps
  0..``max_resource`` (the target's number of reports in a run, when known).

Optuna is imported when a pruner is made: the CLI reads ``PRUNERS`` and must start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from targets.common.errors import KnobflowError, did_you_mean

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

__all__ = ["MEDIAN_STARTUP", "MEDIAN_WARMUP", "PRUNERS", "make_pruner", "prunes"]

PRUNERS = ("none", "median", "hyperband")
#: Trials that run to their end before the median pruner stops any (Optuna: 5; a system
#: trial costs seconds to minutes, and budgets are small).
MEDIAN_STARTUP = 3
#: Reports of a run (steps 0..MEDIAN_WARMUP-1) in which the median pruner stops nothing.
MEDIAN_WARMUP = 1


def make_pruner(name: str, max_resource: int | None = None) -> BasePruner:
    """A new pruner for ``name`` (one of ``PRUNERS``); ``max_resource``: reports in a full run."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP,
                                           n_warmup_steps=MEDIAN_WARMUP)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_resource if max_resource else "auto")
    raise KnobflowError(
        f"The 'pruner' option must be one of {', '.join(PRUNERS)}. "
        f"Got '{name}' instead{did_you_mean(name, PRUNERS)}."
    )


def prunes(pruner: BasePruner) -> bool:
    """Whether ``pruner`` ever stops a trial (not Optuna's ``NopPruner``)."""
    import optuna

    return not isinstance(pruner, optuna.pruners.NopPruner)
