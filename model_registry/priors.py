"""Prior observations: sibling trials told to the tuner of a new instance before it starts.

With ``--transfer-priors``, the clean trials of sibling instances whose workload fingerprint is
close to this instance's (``fingerprint.CLOSE``) are added to the job's Optuna study as finished
trials, so the sampler's model starts from them. They are marked (``PRIOR_ATTR``): they never
count against the budget, never become the job's best config, and never enter its trial table
(they are already in the sibling's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
import pandas as pd

from model_registry import fingerprint
from rules.ruleset import RuleSet
from tuners.space import SearchSpace
from tuners.trials import PRIOR_ATTR, is_prior

__all__ = ["MAX_PRIORS", "PRIOR_ATTR", "is_prior", "prior_trials"]

#: At most this many priors (the closest workloads, then the best values).
MAX_PRIORS = 200


def prior_trials(
    siblings: pd.DataFrame,
    space: SearchSpace,
    rules: RuleSet,
    workload_fp: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]],
    direction: str,
) -> list[optuna.trial.FrozenTrial]:
    """Sibling trials with close workloads as finished Optuna trials of this job's space.

    Only rows whose ``value`` is the measured objective (not a ratio to a baseline) are used;
    configs outside the space or blocked by the rules are left out.
    """
    if siblings.empty:
        return []
    rows = []
    for row in siblings.to_dict(orient="records"):
        if row.get("baseline_value") is not None and not _nan(row.get("baseline_value")):
            continue  # a ratio to that instance's default: not comparable
        value = row.get("value")
        if value is None or _nan(value):
            continue
        gap = fingerprint.distance(fingerprint.from_row(row), workload_fp, limits)
        if gap <= fingerprint.CLOSE:
            rows.append((gap, float(value), row))
    rows.sort(key=lambda r: (r[0], -r[1] if direction == "maximize" else r[1]))
    distributions = space.distributions()
    out: list[optuna.trial.FrozenTrial] = []
    for gap, value, row in rows:
        if len(out) >= MAX_PRIORS:
            break
        config = {k.removeprefix("knob."): v for k, v in row.items() if k.startswith("knob.")}
        params = space.project(config)
        if params is None or rules.check(space.config(params)).blocked:
            continue
        out.append(optuna.trial.create_trial(
            params=params, distributions=distributions, value=value,
            user_attrs={PRIOR_ATTR: {"instance": str(row.get("instance")),
                                     "study": str(row.get("study")),
                                     "trial": str(row.get("trial")),
                                     "workload_distance": round(gap, 4)}},
        ))
    return out


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
