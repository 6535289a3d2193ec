"""Early stopping in the trial manager: when a job prunes, and what hears a trial's reports.

``pruning_on`` says whether an exploration prunes (the study has a pruner, trials are single
runs judged alone, the target reports intermediate values); ``progress_listener`` is what hears
one trial's reports (``Target.report``, read by ``tasks/trial_process.py`` as they come): each
is reported to Optuna, and the study's pruner says whether to stop the trial there.
``reports_per_run`` is how many reports a full run makes (Hyperband's largest resource).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from targets.base import Target
from tasks.trial_process import ProgressListener
from tuners.pruners import prunes
from tuners.trials import ATTR, TrialStatus, is_pruned_early

log = logging.getLogger("knobflow.explore")

__all__ = ["progress_listener", "pruning_on", "pruning_saved_s", "reports_per_run"]


def pruning_on(study: optuna.Study, target_cls: type[Target], single_runs: bool,
               baseline_every: int) -> bool:
    """Whether trials of ``study`` are pruned: it has a pruner, and a trial is one run judged
    alone (a repeat's mean, or a ratio to a baseline measured beside it, has no intermediate
    values to compare), of a target that reports them. Says why when it has one and does not."""
    if not prunes(study.pruner):
        return False
    if len(study.directions) > 1:
        log.warning("the pruner is off in this job: it has several objectives, and Optuna "
                    "prunes single-objective studies only")
        return False
    if not target_cls.reports_progress:
        log.warning("the pruner is off in this job: target %s reports no intermediate values; "
                    "every trial runs to its end", target_cls.name)
        return False
    if not single_runs or baseline_every:
        log.warning("the pruner is off in this job: trials are repeated or judged against a "
                    "baseline (--repeats, --repeat-until, --baseline-every, or the noise check "
                    "switched them on), and only single runs are pruned")
        return False
    return True


def progress_listener(trial: optuna.trial.Trial, objective: str) -> ProgressListener:
    """What hears ``trial``'s reports: the objective so far goes to Optuna at each step, and
    the pruner answers. It compares with the trials told so far (as the sampler does): trials
    still being cleaned beside this one are not among them. It is never waited for them: the
    first cleaning of a job imports Great Expectations (seconds), and a short job would then
    prune nothing (tried: see ``benchmarks/RESULTS.md``). Nothing here blocks: the trial's
    timeout is watched between reports."""
    reported: set[int] = set()

    def should_stop(step: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(objective)
        if value is None or value != value or step < 0 or step in reported:
            return False  # no value for the objective, or a step reported twice
        reported.add(step)
        trial.report(value, step)
        return trial.should_prune()

    return should_stop


def reports_per_run(target_cls: type[Target], workload: Mapping[str, Any]) -> int | None:
    """How many intermediate values a full run reports, if the workload says (the synthetic
    target's ``intervals``; pgbench's one per second of ``duration``)."""
    if not target_cls.reports_progress:
        return None
    for key in ("intervals", "duration"):
        value = workload.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 1:
            return int(value)
    return None


def pruning_saved_s(trials: Iterable[FrozenTrial]) -> tuple[int, float]:
    """How many of ``trials`` the pruner stopped, and the trial time it saved: for each, the
    median run time of the complete trials minus its own (an estimate: a full run of it)."""
    def elapsed(t: FrozenTrial) -> float:
        return float(t.user_attrs.get(ATTR, {}).get("elapsed_s") or 0.0)

    pruned = [t for t in trials if is_pruned_early(t)]
    full = [elapsed(t) for t in trials if t.state == TrialState.COMPLETE
            and t.user_attrs.get(ATTR, {}).get("status") == TrialStatus.OK]
    if not pruned or not full:
        return len(pruned), 0.0
    typical = statistics.median(full)
    return len(pruned), sum(max(0.0, typical - elapsed(t)) for t in pruned)
