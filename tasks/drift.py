"""Drift: whether a live instance's workload, performance or scale moved away from its reference.

``compare(reference, windows, config)`` puts the windows of a watch beside the reference's
(``tasks.reference``) and gives a ``DriftReport`` with one piece of ``Evidence`` per feature:

* **fingerprint** (each workload feature both observations have, e.g. ``shift``, ``read_ratio``,
  ``clients``): a two-sample test on the per-window values, KS (``scipy.stats.ks_2samp``) or PSI
  (reference-quantile bins), *and* the relative change of the mean. A feature drifts only when
  both say so: the difference is significant (KS p < ``alpha``, or PSI >= ``psi``) and the mean
  moved by at least ``rel`` (a relative change; from a reference mean of 0, any change counts).
  The relative threshold keeps a statistically clear but tiny change (many quiet windows) from
  re-tuning anything; the test keeps a noisy feature from drifting on one odd window.
* **performance** (the objective, e.g. ``throughput``): the same rule with ``perf_rel``; either
  direction counts (a faster instance under the same config ran another workload).
* **scale** (the driver's ``scale_features``: data size, the memory the data takes; and the
  host's cores and memory beside them): the relative change of the mean alone, beyond
  ``scale_rel``. A scale value is a level, not a sample: it barely varies within an observation,
  so any test would call a steady growth significant.

Few windows make KS weak: with n and m windows its p-value cannot fall below that of two fully
separated samples (3 against 3: p = 0.1), so at ``alpha`` = 0.01 it could never see anything.
When that smallest attainable p is above ``alpha``, KS counts as significant only when the
samples are fully separated (statistic 1: every window now lies outside the reference windows'
range), and the evidence says so ("ks, few windows"). Fewer than ``MIN_WINDOWS`` on either side:
no test at all, the feature cannot drift ("too few windows"). PSI is a population measure: below
some 50 windows a side two samples of one distribution often differ by more than 0.2 (values
outside the reference's range weigh much), so with few windows the relative threshold decides;
prefer KS there.

``DriftConfig.of_policy`` reads the thresholds from an instance's policy (``drift_*`` keys,
defaults and validation in ``tasks.instances``). ``observed_workload`` is the workload the
re-tune of a drifted instance is given. No Prefect here: ``flows.watch`` runs it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from targets.live import Window
from targets.registry import load_target
from tasks.instances import DRIFT_POLICY, Instance
from tasks.reference import Reference

__all__ = [
    "MIN_WINDOWS", "DriftConfig", "DriftReport", "Evidence", "compare", "observed_workload",
    "psi", "window_values",
]

#: Windows each side needs for a test.
MIN_WINDOWS = 2
_ZERO = 1e-12


@dataclass(frozen=True)
class DriftConfig:
    """The thresholds of drift (an instance's ``drift_*`` policy), the objective whose
    performance is compared (None: none) and the names of the scale values."""

    test: str = DRIFT_POLICY["drift_test"]
    alpha: float = DRIFT_POLICY["drift_alpha"]
    psi: float = DRIFT_POLICY["drift_psi"]
    rel: float = DRIFT_POLICY["drift_rel"]
    perf_rel: float = DRIFT_POLICY["drift_perf_rel"]
    scale_rel: float = DRIFT_POLICY["drift_scale_rel"]
    cooldown_s: float = DRIFT_POLICY["drift_cooldown_s"]
    objective: str | None = None
    scale: tuple[str, ...] = ()

    @classmethod
    def of_policy(cls, policy: Mapping[str, Any], *, objective: str | None = None,
                  scale: Sequence[str] = ()) -> DriftConfig:
        """From a checked policy (``tasks.instances.check_policy``); missing keys: defaults."""
        given = {**DRIFT_POLICY, **{k: v for k, v in policy.items() if k in DRIFT_POLICY}}
        return cls(**{k.removeprefix("drift_"): v for k, v in given.items()},
                   objective=objective, scale=tuple(scale))


@dataclass(frozen=True)
class Evidence:
    """What one feature says: its means, their relative change (None: from a mean of 0), the
    test and its figures (``statistic`` and ``p`` for KS, ``psi`` for PSI), the verdict."""

    name: str
    kind: str  # fingerprint | performance | scale
    reference: float
    now: float
    change: float | None
    test: str
    drifted: bool
    statistic: float | None = None
    p: float | None = None
    psi: float | None = None
    significant: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def change_text(self) -> str:
        if self.change is None:
            return "from 0" if abs(self.now) > _ZERO else "0%"
        return f"{self.change:+.0%}"

    def test_text(self) -> str:
        if self.p is not None:
            return f"{self.test} D={self.statistic:.2f} p={self.p:.3g}"
        if self.psi is not None:
            return f"{self.test} {self.psi:.3g}"
        return self.test


@dataclass
class DriftReport:
    """The evidence of one comparison, and how many windows each side had."""

    evidence: list[Evidence]
    reference_windows: int
    windows: int
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(e.drifted for e in self.evidence)

    @property
    def summary(self) -> str:
        """One line: what drifted and by how much, or that nothing did."""
        sides = f"{self.windows} windows vs {self.reference_windows} of the reference"
        moved = [e for e in self.evidence if e.drifted]
        if moved:
            said = ", ".join(f"{e.name} {_fmt(e.reference)} -> {_fmt(e.now)} "
                             f"({e.change_text()}, {e.kind})" for e in moved)
            return f"drift: {said} ({sides})"
        kinds = sorted({e.kind for e in self.evidence})
        weak = [e.name for e in self.evidence if e.test == "too few windows"]
        tail = f"; too few windows to test {', '.join(weak)}" if weak else ""
        return f"no drift in {len(self.evidence)} features ({', '.join(kinds)}; {sides}){tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "summary": self.summary,
                "reference_windows": self.reference_windows, "windows": self.windows,
                "notes": list(self.notes), "evidence": [e.to_dict() for e in self.evidence]}


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def window_values(windows: Sequence[Window], name: str, kind: str) -> list[float]:
    """One value of ``name`` per window that has it: a metric (``performance``), a counter or
    fingerprint value (``scale``: wherever the driver puts it), a fingerprint feature."""
    if kind == "performance":
        parts = [w.metrics for w in windows]
    elif kind == "scale":
        parts = [{**w.fingerprint, **w.counters} for w in windows]
    else:
        parts = [w.fingerprint for w in windows]
    return [float(p[name]) for p in parts if name in p and math.isfinite(float(p[name]))]


def _change(reference: float, now: float) -> float | None:
    return None if abs(reference) <= _ZERO else (now - reference) / abs(reference)


def _beyond(reference: float, now: float, threshold: float) -> bool:
    change = _change(reference, now)
    return abs(now) > _ZERO if change is None else abs(change) >= threshold


@lru_cache(maxsize=256)
def _ks_floor(n: int, m: int) -> float:
    """The smallest p-value KS can give for samples of n and m (fully separated samples)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(range(n), range(n, n + m)).pvalue)


def _ks(ref: Sequence[float], now: Sequence[float], alpha: float) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    result = ks_2samp(ref, now)
    statistic, p = float(result.statistic), float(result.pvalue)
    if _ks_floor(len(ref), len(now)) > alpha:  # p cannot reach alpha: separation decides
        return {"test": "ks, few windows", "statistic": statistic, "p": p,
                "significant": statistic >= 1.0}
    return {"test": "ks", "statistic": statistic, "p": p, "significant": p < alpha}


def psi(ref: Sequence[float], now: Sequence[float], bins: int = 10) -> float:
    """The population stability index of ``now`` against ``ref``: up to ``bins`` bins between
    the reference's quantiles (at least 5 reference values a bin; its minimum and maximum
    included), one below and one above its range (a constant reference: below, equal, above);
    shares smoothed by half a count a bin (an empty bin would make the index infinite)."""
    import numpy as np

    inner = max(1, min(bins, len(ref) // 5))
    edges = np.unique(np.quantile(np.asarray(ref, dtype=float), np.linspace(0, 1, inner + 1)))
    last = len(edges)

    def shares(values: Sequence[float]) -> Any:
        x = np.asarray(values, dtype=float)
        index = np.searchsorted(edges, x, side="right")  # edges <= x: 0 below the range
        if last > 1:  # the maximum is in the last bin of the range
            index = np.where(x == edges[-1], last - 1, index)
        index = np.where(x > edges[-1], last + 1, index)  # above the range
        counts = np.bincount(index, minlength=last + 2)
        return (counts + 0.5) / (len(x) + 0.5 * (last + 2))

    a, b = shares(ref), shares(now)
    return float(np.sum((b - a) * np.log(b / a)))


def _evidence(name: str, kind: str, ref: Sequence[float], now: Sequence[float],
              config: DriftConfig) -> Evidence:
    r, n = statistics.fmean(ref), statistics.fmean(now)
    if kind == "scale":
        beyond = _beyond(r, n, config.scale_rel)
        return Evidence(name, kind, r, n, _change(r, n), "relative", beyond)
    if min(len(ref), len(now)) < MIN_WINDOWS:
        return Evidence(name, kind, r, n, _change(r, n), "too few windows", False)
    if config.test == "psi":
        index = psi(ref, now)
        test = {"test": "psi", "psi": index, "significant": index >= config.psi}
    else:
        test = _ks(ref, now, config.alpha)
    beyond = _beyond(r, n, config.perf_rel if kind == "performance" else config.rel)
    return Evidence(name, kind, r, n, _change(r, n), drifted=test["significant"] and beyond,
                    **test)


def compare(reference: Reference, windows: Sequence[Window], config: DriftConfig, *,
            host: Mapping[str, float] | None = None,
            now_config: Mapping[str, Any] | None = None) -> DriftReport:
    """The evidence of drift of ``windows`` against ``reference`` (rules: the module's doc).
    ``host``: this host's cores and memory now (``tasks.reference.host_facts``), compared with
    the reference's when both have them; ``now_config``: the config now, noted when it is not
    the reference's (then a performance change may be the config's doing)."""
    found: list[Evidence] = []
    scale = set(config.scale)
    names = sorted({k for w in reference.windows for k in w.fingerprint} - scale)
    kinds = [(n, "fingerprint") for n in names]
    if config.objective:
        kinds.append((config.objective, "performance"))
    kinds += [(n, "scale") for n in config.scale]
    for name, kind in kinds:
        ref, now = (window_values(reference.windows, name, kind),
                    window_values(windows, name, kind))
        if ref and now:
            found.append(_evidence(name, kind, ref, now, config))
    for name in sorted(set(reference.host) & set(host or {})):
        r, n = float(reference.host[name]), float((host or {})[name])
        found.append(Evidence(name, "scale", r, n, _change(r, n), "relative (host)",
                              _beyond(r, n, config.scale_rel)))
    notes = []
    if now_config is not None and dict(now_config) != reference.config:
        changed = sorted(k for k in {*now_config, *reference.config}
                         if now_config.get(k) != reference.config.get(k))
        notes.append("the config is not the reference's (changed outside knobflow?): "
                     + ", ".join(changed))
    return DriftReport(evidence=found, reference_windows=len(reference.windows),
                       windows=len(windows), notes=notes)


def observed_workload(instance: Instance, windows: Sequence[Window]) -> dict[str, Any]:
    """The workload the instance runs now, as its target's workload parameters: its record's
    ``workload`` with each parameter that the windows' fingerprint measures (the same name, a
    number) set to the observed mean, cast to the parameter's type and kept in its limits. It
    passes the target's workload check (``Target.parse_workload``): it is what a re-tune of the
    instance is given (``--set-workload``)."""
    target_cls = load_target(instance.target)
    workload = dict(instance.workload or {})
    for name, default in target_cls.workload_defaults.items():
        values = window_values(windows, name, "fingerprint")
        if not values or isinstance(default, bool) or not isinstance(default, int | float):
            continue
        low, high = target_cls.workload_limits.get(name, (-math.inf, math.inf))
        value = min(max(statistics.fmean(values), low), high)
        if isinstance(default, int):
            whole = round(value)
            workload[name] = (math.ceil(low) if whole < low else
                              math.floor(high) if whole > high else whole)
        else:
            workload[name] = float(f"{value:.6g}")
    target_cls.parse_workload(workload, f"instance {instance.name}: the observed workload")
    return workload
