"""Latency of a window of a live Redis from its cumulative ``LATENCY HISTOGRAM`` and commandstats.

Redis 7 keeps, per command, a histogram of the time it spends executing it, from the server's
start (``INFO latencystats``' percentiles are read from the same histograms, so they too cover
the whole uptime, not a window). ``LATENCY HISTOGRAM`` reports it as cumulative counts at
power-of-two microsecond bounds (a bound is listed once a call fell at or below it): the
difference of two such histograms is the histogram of the calls in between, whose percentiles
this module interpolates linearly within a bucket. Snapshot keys: ``hist:<command>:<bound>``,
``calls:<command>``, ``usec:<command>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["histogram_values", "latencies"]


def histogram_values(reply: Mapping[str, Any] | None) -> dict[str, float]:
    """A ``LATENCY HISTOGRAM`` reply (as the redis client parses it) as snapshot values."""
    values = {}
    for name, data in (reply or {}).items():
        for bound, count in dict(data.get("histogram_usec", {})).items():
            values[f"hist:{name}:{int(bound)}"] = float(count)
    return values


def _percentile(bounds: Sequence[float], cumulative: Sequence[float], q: float) -> float:
    """The ``q`` quantile of a cumulative histogram (bucket upper bounds ascending), linear
    within the bucket it falls in."""
    rank, low, below = q * cumulative[-1], 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank and count > below:
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = bound, count
    return bounds[-1]


def _histograms(values: Mapping[str, float], names: list[str]
                ) -> dict[str, list[tuple[int, float]]]:
    """The cumulative latency histogram of each of ``names`` in a snapshot: (bound, count)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for key, count in values.items():
        if key.startswith("hist:"):
            _, name, bound = key.rsplit(":", 2)
            if name in names:
                out.setdefault(name, []).append((int(bound), count))
    return out


def _at(rows: list[tuple[int, float]], bound: int) -> float:
    """A cumulative histogram's count at ``bound`` (its buckets are listed only once used)."""
    return max((count for x, count in rows if x <= bound), default=0.0)


def latencies(a: Mapping[str, float], b: Mapping[str, float],
              names: list[str]) -> dict[str, float]:
    """Mean and p50/p95/p99 execution time of ``names`` between two snapshots, in ms."""
    usec = sum(max(0.0, b.get(f"usec:{n}", 0.0) - a.get(f"usec:{n}", 0.0)) for n in names)
    calls = sum(max(0.0, b.get(f"calls:{n}", 0.0) - a.get(f"calls:{n}", 0.0)) for n in names)
    out = {"latency_avg_ms": usec / calls / 1000} if calls else {}
    now, then = _histograms(b, names), _histograms(a, names)
    bounds = sorted({bound for rows in now.values() for bound, _ in rows})
    cumulative = [sum(max(0.0, _at(rows, x) - _at(then.get(n, []), x))
                      for n, rows in now.items()) for x in bounds]
    if bounds and cumulative[-1] > 0:
        for q in (50, 95, 99):
            out[f"latency_p{q}_ms"] = _percentile(bounds, cumulative, q / 100) / 1000
    return out
