"""Observe: a passive measurement of a live instance, from the system's own counters.

An observation is a number of consecutive windows (``targets.live.LiveSystem.observe``): each
window's throughput, latency where the system reports it, workload fingerprint and resource use.
The windows become one ``Measurement`` (the metrics' means; one sample per window) and pass the
same measurement row and Great Expectations gate as a trial (``tasks.clean``), restricted to the
metrics the live driver can read (``observed_metrics``). The per-window values are kept: the
actuation's statistical test compares the windows before and after a change, not two means.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from targets.base import Measurement
from targets.live import LiveSystem, Window
from tasks.clean import clean_measurement

__all__ = ["Observation", "observe", "observe_task", "summarize"]


@dataclass
class Observation:
    """Windows of a live instance, their means, and the gate's verdict on them."""

    target: str
    objective: str
    direction: str
    windows: list[Window]
    config: dict[str, Any]
    valid: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.windows)

    def values(self, metric: str | None = None) -> list[float]:
        """One value per window of ``metric`` (default: the objective)."""
        name = metric or self.objective
        return [float(w.metrics[name]) for w in self.windows if name in w.metrics]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["windows"] = [w.to_dict() for w in self.windows]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        fields = dict(data)
        fields["windows"] = [Window.from_dict(w) for w in data.get("windows", [])]
        return cls(**fields)

    def lines(self) -> list[str]:
        """What an operator reads: the objective per window, the means, the fingerprint."""
        values = self.values()
        spread = (f" (windows {min(values):,.1f}-{max(values):,.1f})" if len(values) > 1 else "")
        out = [f"{len(self.windows)} windows, {self.seconds:.0f} s: {self.objective} "
               f"{self.metrics.get(self.objective, float('nan')):,.1f}{spread}"]
        others = {k: v for k, v in self.metrics.items() if k != self.objective}
        if others:
            out.append("metrics: " + ", ".join(f"{k} {v:,.3g}" for k, v in sorted(others.items())))
        if self.fingerprint:
            out.append("workload: " + ", ".join(f"{k} {v:,.3g}"
                                                 for k, v in sorted(self.fingerprint.items())))
        if not self.valid:
            out.append("NOT VALID (not learned from): " + "; ".join(self.reasons))
        return out


def _means(parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    names = {k for p in parts for k in p}
    return {k: statistics.fmean(float(p[k]) for p in parts if k in p) for k in sorted(names)}


def summarize(live: LiveSystem, windows: Sequence[Window], config: Mapping[str, Any],
              objective: str | None = None) -> Observation:
    """``windows`` as one gated measurement of the instance's ``config``."""
    target_cls = live.target_cls
    objective = objective or target_cls.default_objective
    metrics = _means([w.metrics for w in windows])
    samples, t = [], 0.0
    for w in windows:
        t += w.seconds
        rate = {"ops_per_s": w.metrics[objective]} if (
            objective in w.metrics and target_cls.direction(objective) == "maximize") else {}
        samples.append({"t": round(t, 6), "kind": "interval", **rate, **w.metrics})
    measurement = Measurement(
        metrics=metrics, effective_config=dict(config), samples=samples,
        counters=_means([w.counters for w in windows]),
        log=[f"observed {len(windows)} windows of the live {target_cls.name} instance"],
        duration_s=t)
    cleaned = clean_measurement(measurement, target_cls, objective, dict(config),
                                expected=live.observed_metrics)
    return Observation(
        target=target_cls.name, objective=objective,
        direction=target_cls.direction(objective), windows=list(windows), config=dict(config),
        valid=cleaned.valid, reasons=list(cleaned.reasons), metrics=metrics,
        fingerprint=_means([w.fingerprint for w in windows]), counters=measurement.counters)


def observe(live: LiveSystem, *, windows: int, window_s: float, objective: str | None = None,
            on_window: Callable[[int, Window], None] | None = None) -> Observation:
    """Read the instance's config, then observe ``windows`` windows of ``window_s`` seconds."""
    config = live.read_config()
    observed = live.observe(windows, window_s, on_window)
    return summarize(live, observed, config, objective)


observe_task = task(name="observe", cache_policy=NO_CACHE)(observe)
