"""Measurement cleaning: a raw measurement becomes metrics that may be learned from, or a reason.

Checks that every trial passes before its value reaches the tuner: the objective was measured,
every metric is a finite number within physical limits, and the effective config is compared
with the request (a silently changed knob is flagged, not hidden).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from targets.base import MAXIMIZE, Measurement, Target


@dataclass
class Cleaned:
    """The verdict on one measurement."""

    valid: bool
    metrics: dict[str, float]
    reason: str = ""
    changed_knobs: list[str] = field(default_factory=list)


def _same(requested: Any, applied: Any) -> bool:
    """Whether the system applied the requested value (numbers by value, names case-blind)."""
    if isinstance(requested, bool) or isinstance(applied, bool):
        return bool(requested) == bool(applied) and str(applied).lower() in (
            "true",
            "false",
            "1",
            "0",
            "on",
            "off",
            "yes",
            "no",
        )
    if isinstance(requested, (int, float)) and isinstance(applied, (int, float)):
        return math.isclose(float(requested), float(applied), rel_tol=1e-9, abs_tol=1e-12)
    return str(requested).strip().lower() == str(applied).strip().lower()


def changed_knobs(requested: Mapping[str, Any], effective: Mapping[str, Any]) -> list[str]:
    """Knobs whose effective value differs from the request (knobs not read back are skipped)."""
    return [k for k, v in requested.items() if k in effective and not _same(v, effective[k])]


def clean_measurement(
    measurement: Measurement,
    target_cls: type[Target],
    objective: str,
    requested: Mapping[str, Any],
) -> Cleaned:
    """Validate ``measurement``; invalid ones carry the reason they may not be learned from."""
    metrics: dict[str, float] = {}
    for name, raw in measurement.metrics.items():
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return Cleaned(False, {}, f"metric '{name}' is not a number: {raw!r}")
        if not math.isfinite(value):
            return Cleaned(False, {}, f"metric '{name}' is {value}")
        if value < 0:
            return Cleaned(False, {}, f"metric '{name}' is negative ({value:g})")
        metrics[name] = value
    changed = changed_knobs(requested, measurement.effective_config)
    if objective not in metrics:
        return Cleaned(False, metrics, f"objective '{objective}' was not measured", changed)
    if target_cls.metrics.get(objective) == MAXIMIZE and metrics[objective] <= 0:
        return Cleaned(
            False, metrics, f"objective '{objective}' is zero: nothing was done", changed
        )
    if not measurement.effective_config:
        return Cleaned(False, metrics, "the target reported no effective config", changed)
    return Cleaned(True, metrics, "", changed)
