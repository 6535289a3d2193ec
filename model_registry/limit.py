"""Which part of a recommended config to apply when a policy allows at most ``max_knobs``
changed knobs per actuation (``model_registry.recommend``): the part the champion predicts best.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from model_registry.recommendation import better, config_diff, same_value
from rules.ruleset import RuleSet

__all__ = ["MAX_PARTS", "limit_changes"]

#: ``max_knobs`` keeps the best predicted part of a pick's changes when there are at most this
#: many parts to score (12 changes, 3 knobs: 298; the champion scores them in one call, ~10 ms);
#: more, one knob at a time (``_limit_greedy``).
MAX_PARTS = 4096


def limit_changes(pick: dict[str, Any], current: dict[str, Any], max_knobs: int,
                  rules: RuleSet, score: Callable[[Sequence[Mapping[str, Any]]], np.ndarray] | None,
                  maximize: bool) -> dict[str, Any]:
    """At most ``max_knobs`` of the pick's changes on top of ``current``: of every part of the
    changes that large or smaller that passes the rules, the one the champion predicts best, if
    it predicts an improvement (equal predictions: the fewest knobs). Knobs that only pay
    together (a mode and the thread count it suits) are kept together, which a knob-by-knob
    choice misses. Over ``MAX_PARTS`` parts, or without a model: ``_limit_greedy``."""
    changed = list(config_diff(current, pick))
    sizes = range(1, min(max_knobs, len(changed)) + 1)
    if score is None or sum(math.comb(len(changed), n) for n in sizes) > MAX_PARTS:
        return _limit_greedy(pick, current, max_knobs, rules, score, maximize)
    parts = [{**current, **{k: pick[k] for k in part}}
             for n in sizes for part in itertools.combinations(changed, n)]
    allowed = ~rules.check_frame(pd.DataFrame(parts))["blocked"].to_numpy()
    parts = [p for p, ok in zip(parts, allowed, strict=True) if ok]
    if not parts:
        return dict(current)
    predicted = score([current, *parts])
    best = 1 + int(np.argmax(predicted[1:]) if maximize else np.argmin(predicted[1:]))
    return parts[best - 1] if better(float(predicted[best]), float(predicted[0]),
                                      maximize) else dict(current)


def _limit_greedy(pick: dict[str, Any], current: dict[str, Any], max_knobs: int,
                  rules: RuleSet, score: Callable[[Sequence[Mapping[str, Any]]], np.ndarray] | None,
                  maximize: bool) -> dict[str, Any]:
    """``limit_changes`` one knob at a time: each step the change the champion predicts best on
    top of the last (only while it predicts an improvement); without a model, the first ones in
    the knob spec's order. Every step's config passes the rules."""
    config, left = dict(current), list(config_diff(current, pick))
    base = float(score([config])[0]) if score else math.nan
    for _ in range(max_knobs):
        steps = [{**config, k: pick[k]} for k in left]
        allowed = ~rules.check_frame(pd.DataFrame(steps))["blocked"].to_numpy() if steps else []
        steps = [s for s, ok in zip(steps, allowed, strict=True) if ok]
        if not steps:
            break
        if score is None:
            config = steps[0]
        else:
            predicted = score(steps)
            best = int(np.argmax(predicted) if maximize else np.argmin(predicted))
            if not better(float(predicted[best]), base, maximize):
                break
            config, base = steps[best], float(predicted[best])
        left = [k for k in left if same_value(config[k], current[k])]
    return config
