"""The summary's account of how the search went beyond its best: the SLA bounds and the trials
that broke them, several objectives and ``--prefer``, the pruner and the time it saved, and how
late results reached the tuner (``search_parts``, merged into ``flows.report.RunSummary``)."""

from __future__ import annotations

import statistics
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from flows.job import Job
from tasks.pruning import pruning_saved_s
from tasks.verify import Verification
from tuners.trials import ATTR

__all__ = ["search_parts"]


def search_parts(job: Job, done: list[FrozenTrial], v: Verification) -> dict[str, Any]:
    """The summary's fields of the search from its finished trials ``done`` and the best
    config's verification ``v``."""
    bounds = job.bounds()
    infeasible = [t for t in done if t.state == TrialState.COMPLETE and t.constraints
                  and any(value > 0 for value in t.constraints.values())]
    verified_metrics = v.mean_metrics()
    n_pruned, saved_s = pruning_saved_s(done)
    lags = [t.user_attrs[ATTR]["tell_lag"] for t in done
            if t.user_attrs.get(ATTR, {}).get("tell_lag") is not None]
    several = {"objectives": job.objective_names, "directions": job.objective_directions,
               "prefer": dict(job.prefer)} if job.several else {}
    return {
        "constraints": [b.describe(job.default_metrics) for b in bounds],
        "n_infeasible": len(infeasible),
        "constraints_verified": {b.text: b.met(verified_metrics, job.default_metrics)
                                 for b in bounds} if verified_metrics else {},
        "pruner": job.pruner, "n_pruned": n_pruned, "pruned_saved_s": round(saved_s, 2),
        "tell_lag_max": max(lags) if lags else None,
        "tell_lag_median": statistics.median(lags) if lags else None,
        **several,
    }
