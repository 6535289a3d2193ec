"""The problems of ``benchmarks/samplers.py`` (described in its docstring): Branin, Hartmann-6,
``mixed``, and the synthetic target in-process, measured as a trial of it measures
(``synthetic``) and with 3 % noise on a trial (``synthetic-noisy``)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget, crashes, hangs, noisy, refusal
from tasks.guard import RuleFilter
from tuners.space import SearchSpace

PROBLEMS = ("branin", "hartmann6", "mixed", "synthetic", "synthetic-noisy")
INTERACTING = ("mixed", "synthetic")


@dataclass
class Problem:
    name: str
    dists: dict[str, BaseDistribution]
    #: params -> value to minimise, or None when the trial fails
    evaluate: Callable[[dict[str, Any], random.Random], float | None]
    regret: Callable[[float], float]  # best measured value (or true value) -> regret
    default: dict[str, Any] | None = None
    accept: Any = None  # the rules, for problems that have some


def _branin(p: dict[str, Any], _: random.Random) -> float:
    x, y = p["x"], p["y"]
    return ((y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10)


_H_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                 [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                        [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def _hartmann6(p: dict[str, Any], _: random.Random) -> float:
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-np.sum(_H_ALPHA * np.exp(-np.sum(_H_A * (x - _H_P) ** 2, axis=1))))


_MIXED_THREADS = {"p": 2, "q": 8, "r": 32, "s": 16}  # the best int for each category
_MIXED_OFFSET = {"p": 0.3, "q": 0.0, "r": 0.1, "s": 0.2}


def _mixed(p: dict[str, Any], _: random.Random) -> float:
    """Optimum 0 at mode q, compress off, threads 8, ratio 0.7, scale 10**0.1."""
    mode, compress, ratio = p["mode"], p["compress"], p["ratio"]
    value = ((math.log2(p["threads"]) - math.log2(_MIXED_THREADS[mode])) / 2) ** 2
    best_scale = 3 * ratio - 1.5 + (0.5 if compress else -0.5)  # log10: moves with two knobs
    value += (math.log10(p["scale"]) - best_scale) ** 2
    value += (ratio - 0.7) ** 2 * (1.0 if mode in ("p", "q") else 4.0)
    value += _MIXED_OFFSET[mode] + (0.2 if compress and mode == "q" else 0.0)
    return value


#: The target's own workload defaults: 3 % noise on each of 5 intervals.
SYNTHETIC_WORKLOAD = {"shift": 0.0, "noise": SyntheticTarget.workload_defaults["noise"],
                      "intervals": SyntheticTarget.workload_defaults["intervals"]}


#: ``synthetic-noisy``: the same target with 3 % noise on a trial's mean (6.7 % on each
#: interval), the noise real trials show on these machines.
NOISY_WORKLOAD = {**SYNTHETIC_WORKLOAD,
                  "noise": 0.03 * math.sqrt(float(SYNTHETIC_WORKLOAD["intervals"]))}


def _synthetic(workload: dict[str, Any]) -> Callable[[dict[str, Any], random.Random],
                                                      float | None]:
    """The synthetic target under ``workload``, measured as a trial of it measures (the mean of
    its intervals' noisy rates), negated (minimised); the true value is kept for regret."""
    noise, intervals = float(workload["noise"]), int(workload["intervals"])

    def evaluate(p: dict[str, Any], rng: random.Random) -> float | None:
        config = p  # the whole space is tuned: every knob is in ``p``
        if refusal(config) or crashes(config) or hangs(config):
            return None
        truth = SyntheticTarget.true_value(config, workload)
        TRUTH[id(p)] = truth
        return -statistics.fmean(noisy(truth, noise, rng) for _ in range(intervals))
    return evaluate


#: The true value of each synthetic evaluation, by ``id`` of its params (popped by the runner).
TRUTH: dict[int, float] = {}


def problem(name: str) -> Problem:
    f = FloatDistribution
    if name == "branin":
        return Problem(name, {"x": f(-5.0, 10.0), "y": f(0.0, 15.0)}, _branin,
                       lambda best: best - 0.397887)
    if name == "hartmann6":
        return Problem(name, {f"x{i}": f(0.0, 1.0) for i in range(6)}, _hartmann6,
                       lambda best: best + 3.32237)
    if name == "mixed":
        return Problem(name, {
            "threads": IntDistribution(1, 64, log=True), "scale": f(1e-3, 1e3, log=True),
            "ratio": f(0.0, 1.0), "mode": CategoricalDistribution(["p", "q", "r", "s"]),
            "compress": CategoricalDistribution([False, True])}, _mixed, lambda best: best)
    workload = NOISY_WORKLOAD if name == "synthetic-noisy" else SYNTHETIC_WORKLOAD
    space = SearchSpace.full(SyntheticTarget.knob_spec())
    rules = RuleSet.for_target(SyntheticTarget, workload=workload)
    optimum = SyntheticTarget.known_optimum_value(workload)
    return Problem(name, space.distributions(), _synthetic(workload),
                   lambda truth: 1 - truth / optimum, default=space.default_params(),
                   accept=RuleFilter(rules, space))
