"""Workload fingerprints: what a workload looks like to a model, and how far apart two are.

A fingerprint is the target's numeric workload features (``Target.workload_features``: read
ratio, value size, clients, ...). Two fingerprints are compared feature by feature, each
difference scaled by the feature's limits (``Target.workload_limits``) or, without limits, by the
larger of the two values; the distance is the largest scaled difference (0 = same workload,
1 = as far apart as the limits allow). The short hash names a fingerprint in tags.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from targets.base import Target

#: Workloads closer than this are "the same workload" for transfer and for the champion.
CLOSE = 0.1


def features(target_cls: type[Target], workload: Mapping[str, Any]) -> dict[str, float]:
    """The workload's fingerprint: its numeric features, sorted by name."""
    full = {**target_cls.workload_defaults, **workload}
    return dict(sorted(target_cls.workload_features(full).items()))


def fingerprint_hash(fp: Mapping[str, float]) -> str:
    """A short, stable name of a fingerprint (12 hex digits)."""
    text = json.dumps({k: round(float(v), 9) for k, v in sorted(fp.items())})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def distance(
    a: Mapping[str, float], b: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> float:
    """How far apart two fingerprints are, in [0, 1]; a feature only one of them has is 1."""
    limits = limits or {}
    worst = 0.0
    for key in set(a) | set(b):
        if key not in a or key not in b:
            return 1.0
        x, y = float(a[key]), float(b[key])
        if key in limits and limits[key][1] > limits[key][0]:
            low, high = limits[key]
            scaled = abs(x - y) / (high - low)
        else:
            scale = max(abs(x), abs(y))
            scaled = abs(x - y) / scale if scale > 0 else 0.0
        if math.isnan(scaled):
            return 1.0
        worst = max(worst, min(1.0, scaled))
    return worst


def from_row(row: Mapping[str, Any]) -> dict[str, float]:
    """The fingerprint recorded in a trial-table row (its ``workload.*`` columns)."""
    out = {}
    for key, value in row.items():
        if key.startswith("workload.") and value is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isnan(number):
                out[key.removeprefix("workload.")] = number
    return dict(sorted(out.items()))
