"""How the surrogate sampler (``tuners.surrogate``) sees a search space: knob values as points
of the unit cube and as a model's features.

Numeric knobs are scaled to [0, 1]; a knob whose spec says ``log`` is scaled in log space, and so
is a wide integer knob (``targets.spec.wide_range``): thread counts, queue lengths and the like
act by ratios, and on a linear scale 1-8 threads is an eighth of 1-64, a region a search rarely
visits. Whether a wide knob's values really follow its log is for the data to say: the sampler's
Gaussian process is fit on both scales and keeps the one with the higher marginal likelihood
(``Encoder.linear`` gives the other; ``benchmarks/RESULTS.md``, issue 17). Categorical and bool
knobs are an index in a point and one-hot columns in the features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from targets.spec import wide_range

__all__ = ["Encoder", "in_log_space"]


def _wide_int(d: BaseDistribution) -> bool:
    return isinstance(d, IntDistribution) and not d.log and wide_range(d.low, d.high)


def in_log_space(d: BaseDistribution) -> bool:
    """Whether the sampler places numeric knob ``d`` in log space: a log knob or a wide one."""
    return _wide_int(d) or bool(getattr(d, "log", False))


class Encoder:
    """Params of a search space <-> points of the unit cube (numeric knobs; log knobs and wide
    integer knobs in log space) plus one index per categorical knob; and the model's features
    (one-hot)."""

    def __init__(self, space: dict[str, BaseDistribution]) -> None:
        self.names = sorted(space)
        self.dists = [space[n] for n in self.names]
        self.numeric = [i for i, d in enumerate(self.dists)
                        if not isinstance(d, CategoricalDistribution)]
        self.categorical = [i for i, d in enumerate(self.dists)
                            if isinstance(d, CategoricalDistribution)]
        self.sizes = [len(d.choices) if isinstance(d, CategoricalDistribution) else 0
                      for d in self.dists]
        self.logged = [in_log_space(d) for d in self.dists]
        #: the feature columns of the wide integer knobs (log space here, linear in the spec)
        self.wide = [j for j, i in enumerate(self.numeric) if _wide_int(self.dists[i])]

    def _bounds(self, d: FloatDistribution | IntDistribution) -> tuple[float, float]:
        low, high = float(d.low), float(d.high)
        if isinstance(d, IntDistribution):
            low, high = low - 0.5, high + 0.5  # each integer owns an equal slice of [0, 1]
        return (math.log(low), math.log(high)) if in_log_space(d) else (low, high)

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        """One point: a unit value per numeric knob, an index per categorical knob."""
        row = np.empty(len(self.names))
        for i, (name, d) in enumerate(zip(self.names, self.dists, strict=True)):
            if isinstance(d, CategoricalDistribution):
                row[i] = d.to_internal_repr(params[name])
                continue
            low, high = self._bounds(d)
            value = math.log(params[name]) if self.logged[i] else float(params[name])
            row[i] = 0.5 if high <= low else (value - low) / (high - low)
        return row

    def decode(self, points: np.ndarray) -> list[dict[str, Any]]:
        """Points as params, all at once (thousands are decoded at every suggestion)."""
        columns: list[list[Any]] = []
        for i, d in enumerate(self.dists):
            if isinstance(d, CategoricalDistribution):
                columns.append([d.choices[int(c)] for c in points[:, i]])
                continue
            low, high = self._bounds(d)
            values = low + np.clip(points[:, i], 0.0, 1.0) * (high - low)
            if self.logged[i]:
                values = np.exp(values)
            if isinstance(d, IntDistribution):
                values = d.low + np.round((values - d.low) / d.step) * d.step
                columns.append([int(v) for v in np.clip(values, d.low, d.high)])
                continue
            if d.step is not None:
                values = d.low + np.round((values - d.low) / d.step) * d.step
            columns.append([float(v) for v in np.clip(values, d.low, d.high)])
        return [dict(zip(self.names, row, strict=True)) for row in zip(*columns, strict=True)]

    def features(self, points: np.ndarray) -> np.ndarray:
        """What the forest sees: the numeric columns, then one-hot columns per categorical."""
        cols = [points[:, self.numeric]]
        for i in self.categorical:
            cols.append(np.eye(self.sizes[i])[points[:, i].astype(int)])
        return np.hstack(cols) if cols else np.empty((len(points), 0))

    def linear(self, features: np.ndarray) -> np.ndarray:
        """``features`` with the wide integer knobs' columns on their spec's linear scale."""
        out = features.copy()
        for j in self.wide:
            low, high = self._bounds(self.dists[self.numeric[j]])  # log space
            value = np.exp(low + np.clip(out[:, j], 0.0, 1.0) * (high - low))
            out[:, j] = (value - math.exp(low)) / (math.exp(high) - math.exp(low))
        return out

    def random(self, rng: np.random.RandomState, n: int) -> np.ndarray:
        points = rng.uniform(size=(n, len(self.names)))
        for i in self.categorical:
            points[:, i] = rng.randint(self.sizes[i], size=n)
        return points

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Points of the unit cube (Sobol) as points of this encoding."""
        points = unit.copy()
        for i in self.categorical:
            points[:, i] = np.minimum((unit[:, i] * self.sizes[i]).astype(int), self.sizes[i] - 1)
        return points

    def key(self, params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(params[n] for n in self.names)
