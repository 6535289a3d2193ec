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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from targets.base import Measurement, Target
from tasks.noise import t_interval

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
    #: Great Expectations' own validation result (what MLflow keeps beside the trial).
    validation: dict[str, Any] = field(default_factory=dict)

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


def _rate(sample: Mapping[str, Any]) -> float | None:
    return next((_number(sample.get(c)) for c in _RATE_COLUMNS if c in sample), None)


def _sample_facts(samples: list[Any], warmup_s: float) -> tuple[dict[str, Any], list[str]]:
    """Facts about the per-interval samples, and structural problems (reasons)."""
    facts: dict[str, Any] = {
        "n_samples": len(samples), "timestamps_monotonic": None, "samples_finite": None,
        "first_bad_sample": "", "error_rate": None, "objective_cv": None,
        "steady_rate": None, "steady_rate_low": None, "steady_rate_high": None,
    }
    problems = []
    if not samples:
        return facts, problems
    if not all(isinstance(s, Mapping) for s in samples):
        return facts, ["samples: every sample must be a mapping of column to value"]
    times = [_number(s.get("t")) for s in samples]
    if any(t is None for t in times):
        problems.append("samples: a sample has no time 't'")
    else:
        facts["timestamps_monotonic"] = times[0] >= 0 and all(
            b >= a for a, b in itertools.pairwise(times)
        )
    bad = next(
        (f"sample {i} {k}={v!r}" for i, s in enumerate(samples) for k, v in s.items()
         if k != "t" and not isinstance(v, str)
         and (_number(v) is None or not math.isfinite(v) or v < 0)),
        "",
    )
    facts["samples_finite"], facts["first_bad_sample"] = not bad, bad
    # operations per sample: counted, or the rate over the interval since the previous sample
    ops = 0.0
    for i, s in enumerate(samples):
        count = _number(s.get("ops"))
        if count is None and (rate := _rate(s)) is not None and None not in times:
            count = rate * max(0.0, times[i] - (times[i - 1] if i else 0.0))
        ops += count or 0.0
    if any(c in s for s in samples for c in _ERROR_COLUMNS) and ops > 0:
        errors = sum(_number(s.get(c)) or 0.0 for s in samples for c in _ERROR_COLUMNS)
        facts["error_rate"] = errors / (ops + errors)
    rates = [
        r for s in samples
        if (r := _rate(s)) is not None
        and (_number(s.get("t")) or 0.0) > warmup_s and s.get("kind", "interval") == "interval"
    ]
    if rates and all(math.isfinite(r) for r in rates):
        # the rate after warm-up, with the 95 % interval of its mean over the intervals
        facts["steady_rate"] = statistics.fmean(rates)
        facts["steady_rate_low"], facts["steady_rate_high"] = t_interval(rates)
        if len(rates) >= 3 and facts["steady_rate"] > 0:
            facts["objective_cv"] = statistics.stdev(rates) / facts["steady_rate"]
    return facts, problems


def measurement_row(
    measurement: Measurement,
    target_cls: type[Target],
    requested: Mapping[str, Any],
    expected: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The measurement as one flat row, the structural problems found, and the changed knobs.
    ``expected``: the metrics the source must report (default: all the target declares; a live
    instance's counters give fewer)."""
    problems: list[str] = []
    row: dict[str, Any] = {}
    declared = list(target_cls.metrics if expected is None else expected)
    for name in {**dict.fromkeys(target_cls.metrics), **measurement.metrics}:
        raw = measurement.metrics.get(name)
        value = _number(raw)
        if name in measurement.metrics and value is None:
            problems.append(f"metric.{name}: must be a number (got {raw!r})")
        elif name in declared and name not in measurement.metrics:
            problems.append(f"metric.{name}: the target declares it but did not report it")
        elif value is not None and math.isnan(value):
            problems.append(f"metric.{name}: is NaN")
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
    missing = [k for k in requested if k not in effective]
    row["knobs_not_read_back"] = len(missing)
    row["knobs_missing"] = ", ".join(missing)
    for name, raw in measurement.counters.items():
        value = _number(raw)
        if value is None or not math.isfinite(value) or value < 0:
            problems.append(f"counter.{name}: must be a finite number >= 0 (got {raw!r})")
        row[f"counter.{name}"] = value if value is not None else math.nan
    for name, pattern in _LOG_SIGNALS.items():
        row[name] = float(sum(bool(pattern.search(line)) for line in measurement.log))
    return row, problems, changed_knobs(requested, effective)


def clean_measurement(
    measurement: Measurement,
    target_cls: type[Target],
    objective: str,
    requested: Mapping[str, Any],
    expected: Sequence[str] | None = None,
) -> Cleaned:
    """Gate ``measurement``: valid, or invalid with every reason it may not be learned from
    (``expected``: as ``measurement_row`` has it)."""
    import pandas as pd

    from tasks.gate import validate_rows

    row, problems, changed = measurement_row(measurement, target_cls, requested, expected)
    gate = validate_rows(target_cls, pd.DataFrame([row]))
    details = {  # what a failed fact was about, for the operator reading the reason
        "config_consistent:": row["config_differences"],
        "knobs_not_read_back:": row["knobs_missing"],
        "samples_finite:": row["first_bad_sample"],
    }
    said = {r.split(":")[0] for r in problems}  # a column already explained is not repeated
    reasons = problems + [
        next((f"{r}: {text}" for prefix, text in details.items() if r.startswith(prefix)), r)
        for r in gate.reasons[0]
        if r.split(":")[0] not in said
    ]
    metrics = {
        k.removeprefix("metric."): v for k, v in row.items()
        if k.startswith("metric.") and isinstance(v, float) and not math.isnan(v)
    }
    # the objective's own problem, said as such (the generic metric checks say it less well)
    said = {
        f"metric.{objective}: the target declares it but did not report it":
            f"metric.{objective}: the objective was not measured",
        f"metric.{objective}: is NaN": f"metric.{objective}: the objective is NaN",
    }
    reasons = [said.get(r, r) for r in reasons]
    if objective not in metrics and not any(r.startswith(f"metric.{objective}") for r in reasons):
        reasons.insert(0, f"metric.{objective}: the objective was not measured")
    return Cleaned(not reasons, metrics, reasons, changed, row, gate.details)
