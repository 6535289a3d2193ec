"""Verification of a job's result: the best config against the default, interleaved, repeated.

On a noisy machine the single best run of a search is an optimistic draw. Both configs are
re-measured in the same time window, alternating (ABBA order, so a drift of the machine cancels),
and the gain is the geometric mean of the paired ratios with a Student-t interval. Pairs are
added until the interval is decisive (it excludes 1.0 either way, or lies within +-2 % of it: no
difference worth a config change) or the cap is reached; never fewer than 3 pairs (or the cap).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from targets.base import MAXIMIZE
from targets.common.files import write_text_atomic
from tasks.noise import t_interval
from tasks.runner import TrialRunner, run_trial
from tuners.trials import TrialOutcome


@dataclass
class Verification:
    """Re-measured values of the default and best configs, and the gain with its interval."""

    default_values: list[float] = field(default_factory=list)
    best_values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    gain: float | None = None
    gain_low: float | None = None
    gain_high: float | None = None
    pairs: int = 0  # pairs of runs started (complete or not)
    stop_reason: str = ""
    #: Every metric of each complete pair's runs (what SLA bounds are checked on afterwards).
    default_metrics: list[dict[str, float]] = field(default_factory=list)
    best_metrics: list[dict[str, float]] = field(default_factory=list)

    def mean_metrics(self) -> dict[str, float]:
        """The best config's mean of every metric its verification runs all measured."""
        names = set.intersection(*(set(m) for m in self.best_metrics)) if self.best_metrics \
            else set()
        return {n: statistics.fmean(m[n] for m in self.best_metrics) for n in sorted(names)}

    @property
    def default_value(self) -> float | None:
        return statistics.fmean(self.default_values) if self.default_values else None

    @property
    def best_value(self) -> float | None:
        return statistics.fmean(self.best_values) if self.best_values else None

    @property
    def significant(self) -> bool:
        """Whether the whole interval lies above 1 (the best config really is better)."""
        return self.gain_low is not None and self.gain_low > 1.0


def gain_interval(
    default_values: list[float], best_values: list[float], direction: str, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """Gain of best over default (> 1 is better) from paired runs: (gain, low, high)."""
    pairs = [(d, b) for d, b in zip(default_values, best_values, strict=False) if d > 0 and b > 0]
    if not pairs:
        return None
    logs = [math.log(b / d) if direction == MAXIMIZE else math.log(d / b) for d, b in pairs]
    low, high = t_interval(logs, confidence)
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


#: Pairs run before the interval may stop verification.
MIN_PAIRS = 3
#: An interval within 1 +- this is decisive too: any difference is too small to matter.
NARROW = 0.02


def stop_reason(result: Verification, pairs: int, cap: int) -> str | None:
    """Why verification stops after ``pairs`` pairs (``result``'s interval so far), or None."""
    if pairs < min(MIN_PAIRS, cap):
        return None
    done = len(result.best_values)
    if done == 0:
        return f"no complete pair of runs in {pairs}: see the failures"
    low, high = result.gain_low, result.gain_high
    if low is not None and high is not None and done >= 2:
        interval = f"the 95% interval {low:.3f}-{high:.3f}"
        if low > 1.0:
            return f"decisive after {done} pairs: {interval} lies above 1.0"
        if high < 1.0:
            return f"decisive after {done} pairs: {interval} lies below 1.0"
        if low >= 1 - NARROW and high <= 1 + NARROW:
            return (f"decisive after {done} pairs: {interval} lies within "
                    f"+-{100 * NARROW:g} % of 1.0")
    if pairs >= cap:
        return f"cap of {cap} pairs reached: the 95% interval still includes 1.0"
    return None


@task(name="verify-best", cache_policy=NO_CACHE)
def verify_best(
    runner: TrialRunner,
    default_config: Mapping[str, Any],
    best_config: Mapping[str, Any],
    direction: str,
    repeats: int,
    instance: str,
    on_run: Callable[[str, int, TrialOutcome], None] | None = None,
    record: Path | None = None,
) -> Verification:
    """Measure default and best interleaved ABBA on one instance, in pairs, until the gain's
    interval is decisive or ``repeats`` pairs (the cap) ran (``stop_reason``).

    With ``record`` (a JSON file), every finished run is kept there as it ends, and a run kept
    by an earlier, killed verification of the same best config is not run again."""
    kept = _kept_runs(record, best_config)
    result = Verification()
    for r in range(repeats):
        order = [("default", default_config), ("best", best_config)]
        if r % 2:
            order.reverse()
        pair: dict[str, float | None] = {}
        for label, config in order:
            key = f"verify-{r}-{label}"
            if key not in kept:
                outcome = run_trial(
                    runner, key, dict(config), instance,
                    runner.trial_seed(10**6 + 2 * r + (label == "best")),
                    single=True,  # verification repeats itself, interleaved
                )
                kept[key] = {"value": outcome.value if outcome.ok else None,
                             "metrics": dict(outcome.metrics) if outcome.ok else {},
                             "failure": "" if outcome.ok
                             else f"{outcome.failure_class}: {outcome.message}"}
                _keep(record, best_config, kept)  # first: a kill now does not run it twice
                if on_run is not None:
                    on_run(label, r, outcome)
            pair[label] = kept[key]["value"]
            if pair[label] is None:
                result.failures.append(f"{label} run {r}: {kept[key]['failure']}")
        # only complete pairs enter the gain: an unpaired run would let drift back in
        if pair["default"] is not None and pair["best"] is not None:
            result.default_values.append(pair["default"])
            result.best_values.append(pair["best"])
            result.default_metrics.append(dict(kept[f"verify-{r}-default"].get("metrics") or {}))
            result.best_metrics.append(dict(kept[f"verify-{r}-best"].get("metrics") or {}))
        interval = gain_interval(result.default_values, result.best_values, direction)
        if interval:
            result.gain, result.gain_low, result.gain_high = interval
        result.pairs = r + 1
        reason = stop_reason(result, r + 1, repeats)
        if reason is not None:
            result.stop_reason = reason
            break
    return result


def _kept_runs(record: Path | None, best_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs an earlier verification of the same best config finished (by key)."""
    if record is None or not record.exists():
        return {}
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    same = data.get("best_config") == json.loads(json.dumps(dict(best_config), default=str))
    return dict(data.get("runs", {})) if same else {}


def _keep(record: Path | None, best_config: Mapping[str, Any],
          runs: Mapping[str, Mapping[str, Any]]) -> None:
    if record is not None:
        write_text_atomic(record, json.dumps({"best_config": dict(best_config), "runs": runs},
                                             indent=1, default=str))


@dataclass
class PointVerification:
    """One point of a Pareto front re-measured beside the default: each objective's paired
    values and gain (> 1: better than the default in that objective's direction)."""

    trial: int
    config: dict[str, Any]
    observed: dict[str, float]  # its values in the search
    default_values: dict[str, list[float]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    gains: dict[str, list[float] | None] = field(default_factory=dict)  # gain, low, high
    metrics: list[dict[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        """Whether at least one complete pair of runs gave every objective a gain."""
        return bool(self.gains) and all(g is not None for g in self.gains.values())

    def as_verification(self, objective: str, stop_reason: str) -> Verification:
        """The point's verification in ``objective`` as ``verify_best`` gives one."""
        gain = self.gains.get(objective)
        return Verification(
            default_values=list(self.default_values.get(objective, [])),
            best_values=list(self.values.get(objective, [])), failures=list(self.failures),
            gain=gain[0] if gain else None, gain_low=gain[1] if gain else None,
            gain_high=gain[2] if gain else None, pairs=len(self.values.get(objective, [])),
            stop_reason=stop_reason, best_metrics=list(self.metrics))


@task(name="verify-front", cache_policy=NO_CACHE)
def verify_front(
    runner: TrialRunner,
    default_config: Mapping[str, Any],
    points: list[tuple[int, dict[str, Any], dict[str, float]]],
    objectives: list[tuple[str, str]],
    rounds: int,
    instance: str,
    on_run: Callable[[str, int, TrialOutcome], None] | None = None,
) -> list[PointVerification]:
    """Re-measure every point of a Pareto front (trial number, config, values in the search)
    beside the default on one instance: ``rounds`` rounds of the default then each point, the
    order reversed every other round (drift cancels, as in ABBA); each point's runs pair with
    the default's run of the same round. One default run serves every point of a round."""
    results = [PointVerification(trial=n, config=dict(c), observed=dict(o)) for n, c, o in points]
    for r in range(rounds):
        order: list[tuple[str, Mapping[str, Any], PointVerification | None]] = [
            ("default", default_config, None),
            *((f"trial{p.trial}", p.config, p) for p in results)]
        if r % 2:
            order.reverse()
        measured: dict[str, dict[str, float] | None] = {}
        for label, config, point in order:
            outcome = run_trial(runner, f"front-{r}-{label}", dict(config), instance,
                                runner.trial_seed(4 * 10**6 + 1000 * r + len(measured)),
                                single=True)
            if on_run is not None:
                on_run(label, r, outcome)
            measured[label] = dict(outcome.metrics) if outcome.ok else None
            if not outcome.ok and point is not None:
                point.failures.append(f"round {r}: {outcome.failure_class}: {outcome.message}")
        default = measured["default"]
        for point in results:
            mine = measured[f"trial{point.trial}"]
            if default is None or mine is None:
                if default is None:
                    point.failures.append(f"round {r}: the default's run failed")
                continue
            if any(name not in default or name not in mine for name, _ in objectives):
                point.failures.append(f"round {r}: an objective was not measured")
                continue
            point.metrics.append(mine)
            for name, _ in objectives:
                point.default_values.setdefault(name, []).append(default[name])
                point.values.setdefault(name, []).append(mine[name])
    for point in results:
        for name, direction in objectives:
            interval = gain_interval(point.default_values.get(name, []),
                                     point.values.get(name, []), direction)
            point.gains[name] = list(interval) if interval else None
    return results

