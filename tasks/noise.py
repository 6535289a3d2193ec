"""Noise-aware evaluation: repeated runs of one config, and judging a config against a baseline.

On a shared 2-core machine one run of a few seconds lies by 5-20 %. A trial may therefore be
repeated a fixed number of times, or until the 95 % interval of its mean is narrower than a bound
(up to a maximum); its value is the mean of the repeats and its interval is reported with it. A
config may also be judged against the default config measured on the same instance shortly
before (the baseline): the machine's drift cancels in the ratio, and the tuner can be told the
ratio rather than the raw value.

Whether a job needs either is measured at its start (``NoiseCheck``): the default config is run a
few times, and when those runs spread more than a threshold the job repeats every trial and
re-measures the default now and then, unless the user chose those settings.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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


#: What a noisy machine switches on (the options a user did not give).
NOISY_REPEATS = 2
NOISY_BASELINE_EVERY = 5


def spread(values: Sequence[float]) -> float:
    """How much ``values`` vary: (max - min) / mean (0 for fewer than two values)."""
    mean = statistics.fmean(values) if values else 0.0
    if len(values) < 2 or mean <= 0:
        return 0.0
    return (max(values) - min(values)) / mean


@dataclass(frozen=True)
class NoiseCheck:
    """The default config's runs at a job's start and what the job does about their spread.

    ``repeats`` and ``baseline_every`` are the settings the job runs with; ``switched`` names
    those this check turned on; ``failures`` says why runs of the default gave no value."""

    values: list[float]
    runs: int
    threshold: float
    repeats: int
    baseline_every: int
    switched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def spread(self) -> float:
        return spread(self.values)

    @property
    def noisy(self) -> bool:
        return len(self.values) >= 2 and self.spread > self.threshold

    @property
    def message(self) -> str:
        """One line for the summary, the logs and MLflow."""
        if len(self.values) < 2:
            return (f"noise not measured: the default gave a value in {len(self.values)} of "
                    f"{self.runs} runs ({'; '.join(self.failures)[:200]})")
        varied = f"default varied {100 * self.spread:.0f} % over {len(self.values)} runs"
        if not self.noisy:
            return (f"quiet machine: {varied} (threshold {100 * self.threshold:.0f} %); "
                    "each trial runs once")
        said = []
        if "repeats" in self.switched:
            said.append(f"each trial {self.repeats}x")
        if "baseline_every" in self.switched:
            said.append(f"the default every {self.baseline_every} trials")
        given = " and ".join(f"--{name.replace('_', '-')} {getattr(self, name)}"
                             for name in self.kept)
        if not said:
            return f"noisy machine: {varied}; keeping {given} as given"
        return (f"noisy machine: {varied}; repeating " + " and ".join(said)
                + (f" ({given} as given)" if given else ""))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread, "noisy": self.noisy,
                "message": self.message}


def check_noise(values: Sequence[float], runs: int, threshold: float, *, repeats: int,
                baseline_every: int, free: Sequence[str],
                failures: Sequence[str] = ()) -> NoiseCheck:
    """What a job does after the default's ``values`` (of ``runs`` runs): on a noisy machine
    (spread above ``threshold``) the settings named in ``free`` (those the user did not give:
    ``repeats``, ``baseline_every``) are switched on; the others are kept."""
    noisy = len(values) >= 2 and spread(values) > threshold
    switched, kept = [], []
    if noisy:
        if "repeats" in free and repeats < NOISY_REPEATS:
            repeats = NOISY_REPEATS
            switched.append("repeats")
        if "baseline_every" in free and not baseline_every:
            baseline_every = NOISY_BASELINE_EVERY
            switched.append("baseline_every")
        kept = [name for name in ("repeats", "baseline_every") if name not in free]
    return NoiseCheck(list(values), runs, threshold, repeats, baseline_every, switched, kept,
                      list(failures))
