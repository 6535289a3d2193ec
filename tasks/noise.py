"""Noise-aware evaluation: repeated runs of one config, and judging a config against a baseline.

On a shared 2-core machine one run of a few seconds lies by 5-20 %. A trial may therefore be
repeated a fixed number of times, or until the 95 % interval of its mean is narrower than a bound
(up to a maximum); its value is the mean of the repeats and its interval is reported with it. A
config may also be judged against the default config measured on the same instance shortly
before (the baseline): the machine's drift cancels in the ratio, and the tuner can be told the
ratio rather than the raw value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class RepeatPolicy:
    """How often one config is run: ``repeats`` times, or until the interval's relative
    half-width is at most ``until`` (at least 2 and at most ``max_repeats`` runs)."""

    repeats: int = 1
    until: float | None = None
    max_repeats: int = 5

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.until is not None and not 0 < self.until < 1:
            raise ValueError(f"until must be a relative half-width in (0, 1), got {self.until}")
        if self.max_repeats < max(self.repeats, 2 if self.until else 1):
            raise ValueError(f"max_repeats must be >= repeats, got {self.max_repeats}")

    def wants_more(self, values: Sequence[float]) -> bool:
        """Whether another run is needed after ``values``."""
        if len(values) < self.repeats:
            return True
        if self.until is None or len(values) >= self.max_repeats:
            return False
        if len(values) < 2:
            return True
        low, high = t_interval(values)
        mean = statistics.fmean(values)
        return mean == 0 or (high - low) / 2 / abs(mean) > self.until


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (a point when there is one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return mean - half, mean + half


def run_repeated(
    run_once: Callable[[int], tuple[bool, float | None]], policy: RepeatPolicy
) -> tuple[list[float], bool]:
    """Call ``run_once(i)`` (returns ok, value) as the policy asks; stop at the first failure.

    Returns the values of the successful runs and whether every run succeeded.
    """
    values: list[float] = []
    i = 0
    while policy.wants_more(values):
        ok, value = run_once(i)
        i += 1
        if not ok or value is None:
            return values, False
        values.append(value)
    return values, True


def ratio_to_baseline(value: float, baseline: float) -> float:
    """``value`` relative to the baseline measured in the same window (1.0 = as good)."""
    if baseline <= 0:
        raise ValueError(f"a baseline must be positive, got {baseline}")
    return value / baseline
