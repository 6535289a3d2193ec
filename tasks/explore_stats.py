"""An exploration's progress (``ExploreStats``): what the progress bar, the logs and the
listeners see; counted as trials are told (``count``), or read from a resumed study
(``stats_so_far``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from tuners.trials import finished_trials, is_pruned_early, ranked_trials

if TYPE_CHECKING:
    import optuna

    from tuners.trials import TrialOutcome

__all__ = ["ExploreStats", "stats_so_far"]


@dataclass
class ExploreStats:
    """Progress of an exploration, as the progress bar and the logs show it."""

    budget: int
    done: int = 0
    failed: int = 0
    blocked: int = 0
    blocked_by: dict[str, int] = field(default_factory=dict)
    pruned: int = 0  # stopped early by the pruner (they ran, part of the way: in ``done``)
    best_value: float | None = None  # of the (first) objective, among feasible trials
    best_number: int | None = None
    infeasible: int = 0  # clean trials that broke an SLA bound (--constraint)

    def count(self, number: int, outcome: TrialOutcome, maximize: bool) -> None:
        """Count trial ``number``, just told with ``outcome``."""
        self.done += 1
        if outcome.pruned:
            self.pruned += 1
        elif not outcome.ok:
            self.failed += 1
        elif any(v > 0 for v in outcome.constraints.values()):
            self.infeasible += 1  # the best is among feasible trials only
        elif outcome.value is not None and (
                self.best_value is None
                or (outcome.value > self.best_value if maximize
                    else outcome.value < self.best_value)):
            self.best_value, self.best_number = outcome.value, number


def stats_so_far(study: optuna.Study, budget: int) -> ExploreStats:
    """The stats of the trials a resumed study already holds."""
    done = finished_trials(study)
    stats = ExploreStats(budget=budget, done=len(done))
    stats.failed = sum(1 for t in done if t.state == TrialState.FAIL)
    stats.pruned = sum(1 for t in done if is_pruned_early(t))
    ranked = ranked_trials(study)
    if ranked:
        stats.best_value, stats.best_number = ranked[0].values[0], ranked[0].number
    return stats
