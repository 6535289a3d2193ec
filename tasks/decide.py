"""Keep or roll back an actuation: a statistical test of noisy windows, and the trigger rules.

Why not the ratio of two means alone: a live system's windows of a few seconds each spread by
several percent (the shared machine, the load generator, checkpoints, compactions); a ratio of
0.93 between two means says nothing without the spread. Rolling back on it alone either rolls
back good changes (a threshold close to 1) or keeps bad ones (a threshold far from it). So
``test_change`` compares the windows before and after the change:

* Welch's t-test on the logarithms of the window values (``scipy.stats.ttest_ind`` with
  ``equal_var=False``): a change of a system's speed is multiplicative and its noise roughly
  proportional to it, so on the log scale the test is scale-free and the difference of the
  means is the log of a ratio; the spread may differ before and after (Welch);
* the p-value is one-sided against the minimum effect: "after is worse by more than
  ``min_effect``" (the ratio below 1 - ``min_effect`` for ``maximize``, above 1 + ``min_effect``
  for ``minimize``), the t statistic taken against that margin; a second one-sided p-value is kept
  for "after is better by more than ``min_effect``", and ``p_change`` is the plain one (worse at
  all). A tiny but real change (1 % on a quiet machine) is not a reason to roll back, and neither
  is a slow drift of a few percent between the windows before and the windows after (a shared
  machine's load moves): a rollback needs the loss itself shown beyond the margin, not a point
  estimate past it (measured: ``benchmarks/actuation.py``);
* the 95 % interval is the ratio of the geometric means (from the log-scale Welch interval);
* ``worse`` is a p-value below ``alpha``; ``better`` is symmetric.

``decide`` joins the test with the trigger rules that fired (``RuleSet.fired_triggers``, whose
messages start with their action): ``rollback:`` rolls back, ``alert:`` and ``retune:`` are
reported only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from targets.common.errors import KnobflowError

if TYPE_CHECKING:
    from rules.rule import Failure

__all__ = ["ChangeTest", "Decision", "DecisionError", "decide", "test_change"]

DIRECTIONS = ("maximize", "minimize")


class DecisionError(KnobflowError, ValueError):
    """The windows cannot decide (too few, zero, negative or not a number)."""


@dataclass(frozen=True)
class ChangeTest:
    """What the windows before and after an actuation say about the change."""

    metric: str
    direction: str
    n_before: int
    n_after: int
    mean_before: float
    mean_after: float
    ratio: float  # mean after / mean before
    interval: tuple[float, float]  # 95 %, of the ratio of the geometric means
    statistic: float  # Welch's t of log(after) - log(before)
    p_value: float  # one-sided: after is worse by more than min_effect
    p_better: float  # one-sided: after is better by more than min_effect
    p_change: float  # one-sided: after is worse at all
    method: str
    alpha: float
    min_effect: float
    worse: bool
    better: bool

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["interval"] = list(self.interval)
        return doc

    def summary(self) -> str:
        """One line: the verdict, the ratio with its interval, and the p-value."""
        low, high = self.interval
        figures = (f"ratio {self.ratio:.3f} (95 % interval {low:.3f}-{high:.3f}, "
                   f"{self.n_before}+{self.n_after} windows)")
        margin = f"{self.min_effect:.0%} minimum effect"
        if self.worse:
            return f"{self.metric} got worse: {figures}, p = {self.p_value:.2g} < {self.alpha:g}"
        if self.better:
            return (f"{self.metric} got better: {figures}, p = {self.p_better:.2g} "
                    f"< {self.alpha:g}")
        if self.p_change < self.alpha:
            return f"{self.metric} worse, not shown beyond the {margin}: {figures}"
        return (f"{self.metric} not significantly worse: {figures}, p = {self.p_value:.2g} "
                f">= {self.alpha:g}")


def _values(values: Sequence[float], side: str, metric: str) -> list[float]:
    out = [float(v) for v in values]
    if len(out) < 2:
        raise DecisionError(f"the {metric} of {len(out)} window(s) {side} the change cannot "
                            "decide it: at least 2 on each side are needed (policy 'windows')")
    for i, v in enumerate(out, start=1):
        if not math.isfinite(v) or v <= 0:
            raise DecisionError(f"window {i} {side} the change measured {metric} {v!r}: the "
                                "test needs positive finite values (did the load stop?)")
    return out


def test_change(
    before: Sequence[float],
    after: Sequence[float],
    direction: str,
    *,
    alpha: float = 0.01,
    min_effect: float = 0.05,
    metric: str = "metric",
) -> ChangeTest:
    """Whether the windows ``after`` an actuation are worse (or better) than those ``before``;
    ``direction`` is the metric's (``maximize`` throughput, ``minimize`` latency)."""
    import numpy as np
    from scipy import stats

    if direction not in DIRECTIONS:
        raise DecisionError(f"direction must be one of {', '.join(DIRECTIONS)}, not "
                            f"{direction!r}")
    if not 0 < alpha < 0.5 or not 0 <= min_effect < 1:
        raise DecisionError(f"alpha must be in (0, 0.5) and min_effect in [0, 1); got {alpha} "
                            f"and {min_effect}")
    raw_before, raw_after = _values(before, "before", metric), _values(after, "after", metric)
    lb, la = np.log(raw_before), np.log(raw_after)
    diff = float(la.mean() - lb.mean())
    var = la.var(ddof=1) / len(la) + lb.var(ddof=1) / len(lb)
    sign = 1.0 if direction == "maximize" else -1.0  # worse = sign * diff < 0
    # the margins on the log scale, in "worse" and "better" terms: sign * diff below -worse_at
    # is worse beyond the minimum effect, above better_at better beyond it
    worse_at = -sign * math.log(1 - min_effect if sign > 0 else 1 + min_effect)
    better_at = sign * math.log(1 + min_effect if sign > 0 else 1 - min_effect)
    if var == 0:  # every window alike on both sides: the difference is exact
        statistic = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p_change = 0.5 if diff == 0 else float(sign * diff > 0)  # 0: surely worse
        p_worse = float(not sign * diff < -worse_at)
        p_better = float(not sign * diff > better_at)
        interval = (math.exp(diff), math.exp(diff))
    else:
        se = math.sqrt(var)
        df = var**2 / ((la.var(ddof=1) / len(la))**2 / (len(la) - 1)
                       + (lb.var(ddof=1) / len(lb))**2 / (len(lb) - 1))
        statistic = diff / se
        p_change = float(stats.t.cdf(sign * diff / se, df))
        p_worse = float(stats.t.cdf((sign * diff + worse_at) / se, df))
        p_better = float(stats.t.sf((sign * diff - better_at) / se, df))
        half = float(stats.t.ppf(0.975, df)) * se
        interval = (math.exp(diff - half), math.exp(diff + half))
    mean_before, mean_after = math.fsum(raw_before) / len(lb), math.fsum(raw_after) / len(la)
    return ChangeTest(
        metric=metric, direction=direction, n_before=len(lb), n_after=len(la),
        mean_before=mean_before, mean_after=mean_after, ratio=mean_after / mean_before,
        interval=interval, statistic=statistic, p_value=p_worse, p_better=p_better,
        p_change=p_change,
        method=("Welch t-test on log values, one-sided against the minimum effect; 95 % "
                "interval of the geometric-mean ratio"),
        alpha=alpha, min_effect=min_effect, worse=p_worse < alpha, better=p_better < alpha)


test_change.__test__ = False  # type: ignore[attr-defined]  # not a pytest test where imported


@dataclass(frozen=True)
class Decision:
    """Keep the actuation or roll it back, and why (the causes of a rollback first)."""

    keep: bool
    reasons: list[str] = field(default_factory=list)


def decide(test: ChangeTest, fired: Sequence[Failure] = ()) -> Decision:
    """Roll back when the test says worse or a fired trigger's action is ``rollback``; an
    ``alert`` or ``retune`` trigger is a reason shown, not a rollback."""
    causes: list[str] = [test.summary()] if test.worse else []
    notes: list[str] = [] if test.worse else [test.summary()]
    for failure in fired:
        action, _, message = failure.message.partition(": ")
        if action == "rollback":
            causes.append(f"trigger {failure.rule} fired: {message}")
        else:
            notes.append(f"trigger {failure.rule} fired ({action} only): {message}")
    return Decision(keep=not causes, reasons=causes + notes)
