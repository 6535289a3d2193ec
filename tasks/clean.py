"""Measurement cleaning: a raw measurement becomes a row to learn from, or reasons why not.

``measurement_row`` turns what a target reported (metrics, per-interval samples, counters, log
lines, the effective config) into one flat row: the metrics; facts about the samples (how many,
whether time runs forward, whether every value is finite and non-negative, the error rate, the
run-to-run noise of the steady state after warm-up); whether the system applied the config as
requested (after the target's documented rounding); counters and log signals (stalls,
compactions, errors) as columns a model can use. ``clean_measurement`` then gates the row with the
target's Great Expectations suite (``tasks/gate.py``): a row that fails is invalid, its reasons
say which expectation failed on which value, and it is never told to the tuner as a value nor
kept for training.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from targets.base import Measurement, Target

_LOG_SIGNALS = {
    "log.errors": re.compile(r"\b(error|fatal|panic|failed)\b", re.I),
    "log.warnings": re.compile(r"\bwarn(ing)?\b", re.I),
    "log.stalls": re.compile(r"\bstall(ed|s|ing)?\b|\bslowdown\b|\bstopping writes\b", re.I),
    "log.compactions": re.compile(r"\bcompaction", re.I),
}
_RATE_COLUMNS = ("ops_per_s", "tps", "rps")
_ERROR_COLUMNS = ("errors", "failed")


@dataclass
class Cleaned:
    """The verdict on one measurement."""

    valid: bool
    metrics: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    changed_knobs: list[str] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _same(requested: Any, applied: Any) -> bool:
    """Whether the system applied the requested value: numbers to 6 significant digits (what
    systems print), bools by truth, names case-blind."""
    if isinstance(requested, bool) or isinstance(applied, bool):
        text = str(applied).strip().lower()
        if text not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
            return False
        return bool(requested) == (text in ("true", "1", "on", "yes"))
    if isinstance(requested, (int, float)) and isinstance(applied, (int, float)):
        return math.isclose(float(requested), float(applied), rel_tol=1e-5, abs_tol=1e-9)
    return str(requested).strip().lower() == str(applied).strip().lower()


def config_differences(
    target_cls: type[Target], requested: Mapping[str, Any], effective: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """Knobs the system applied differently than documented, as (names, 'requested -> applied')."""
    expected = target_cls.normalize_config(requested)
    names, texts = [], []
    for knob, value in expected.items():
        if knob in effective and not _same(value, effective[knob]):
            names.append(knob)
            texts.append(f"{knob} requested {requested.get(knob)!r}, applied {effective[knob]!r}")
    return names, texts


def changed_knobs(requested: Mapping[str, Any], effective: Mapping[str, Any]) -> list[str]:
    """Knobs whose effective value differs from the request at all (rounding included)."""
    return [k for k, v in requested.items() if k in effective and not _same(v, effective[k])]


def _number(value: Any) -> float | None:
    """A metric as a float; None when it is not a number at all (a string, a bool, missing)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _sample_facts(samples: list[Any], warmup_s: float) -> tuple[dict[str, Any], list[str]]:
    """Facts about the per-interval samples, and structural problems (reasons)."""
    facts: dict[str, Any] = {
        "n_samples": len(samples), "timestamps_monotonic": None, "samples_finite": None,
        "error_rate": None, "objective_cv": None,
    }
    problems = []
    if not samples:
        return facts, problems
    if not all(isinstance(s, Mapping) for s in samples):
        return facts, ["samples: every sample must be a mapping of column to value"]
    times = [s.get("t") for s in samples]
    if any(_number(t) is None for t in times):
        problems.append("samples: a sample has no time 't'")
    else:
        facts["timestamps_monotonic"] = times[0] >= 0 and all(
            b >= a for a, b in itertools.pairwise(times)
        )
    values = [v for s in samples for k, v in s.items() if k != "t" and not isinstance(v, str)]
    facts["samples_finite"] = all(
        _number(v) is not None and math.isfinite(v) and v >= 0 for v in values if v is not None
    ) and all(v is not None for v in values)
    ops = sum(_number(s.get("ops")) or 0.0 for s in samples)
    errors = sum(_number(s.get(c)) or 0.0 for s in samples for c in _ERROR_COLUMNS)
    if any(c in s for s in samples for c in _ERROR_COLUMNS) and ops > 0:
        facts["error_rate"] = errors / ops
    rates = [
        r for s in samples
        if (r := next((_number(s.get(c)) for c in _RATE_COLUMNS if c in s), None)) is not None
        and (_number(s.get("t")) or 0.0) > warmup_s and s.get("kind", "interval") == "interval"
    ]
    if len(rates) >= 3 and statistics.fmean(rates) > 0:
        facts["objective_cv"] = statistics.stdev(rates) / statistics.fmean(rates)
    return facts, problems


def measurement_row(
    measurement: Measurement,
    target_cls: type[Target],
    requested: Mapping[str, Any],
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The measurement as one flat row, the structural problems found, and the changed knobs."""
    problems: list[str] = []
    row: dict[str, Any] = {}
    for name in {**dict.fromkeys(target_cls.metrics), **measurement.metrics}:
        raw = measurement.metrics.get(name)
        value = _number(raw)
        if name in measurement.metrics and value is None:
            problems.append(f"metric.{name}: must be a number (got {raw!r})")
        row[f"metric.{name}"] = value if value is not None else math.nan
    facts, sample_problems = _sample_facts(measurement.samples, target_cls.warmup_s)
    row.update(facts)
    problems += sample_problems
    duration = _number(measurement.duration_s)
    row["duration_s"] = duration if duration is not None else math.nan
    effective = measurement.effective_config or {}
    if not isinstance(effective, Mapping) or not effective:
        problems.append("effective config: the target reported none (it must read it back)")
        effective = {}
    names, texts = config_differences(target_cls, requested, effective)
    row["config_consistent"] = not names if effective else None
    row["config_differences"] = "; ".join(texts)
    row["knobs_not_read_back"] = len([k for k in requested if k not in effective])
    for name, raw in measurement.counters.items():
        value = _number(raw)
        row[f"counter.{name}"] = value if value is not None else math.nan
    for name, pattern in _LOG_SIGNALS.items():
        row[name] = float(sum(bool(pattern.search(line)) for line in measurement.log))
    return row, problems, changed_knobs(requested, effective)


def clean_measurement(
    measurement: Measurement,
    target_cls: type[Target],
    objective: str,
    requested: Mapping[str, Any],
) -> Cleaned:
    """Gate ``measurement``: valid, or invalid with every reason it may not be learned from."""
    import pandas as pd

    from tasks.gate import validate_rows

    row, problems, changed = measurement_row(measurement, target_cls, requested)
    gate = validate_rows(target_cls, pd.DataFrame([row]))
    reasons = problems + gate.reasons[0]
    metrics = {
        k.removeprefix("metric."): v for k, v in row.items()
        if k.startswith("metric.") and isinstance(v, float) and not math.isnan(v)
    }
    if objective not in metrics and not any(r.startswith(f"metric.{objective}") for r in reasons):
        reasons.insert(0, f"metric.{objective}: the objective was not measured")
    return Cleaned(not reasons, metrics, reasons, changed, row)
