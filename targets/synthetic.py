"""The synthetic target: a seeded, cheap response surface with a known optimum.

Made for tests, benchmarks and transfer experiments. It has knobs of every type with
interactions, configurable multiplicative noise, a region that is refused (mode gamma with one
thread), a region that crashes the trial process (threads > 48 with compress on), a region that
hangs (mode beta with y > 200), a silent clamp (buffer_kb rounded down to a multiple of 16), and a
workload parameter ``shift`` in [0, 1] that moves the optimum. Its peaks are flat-topped, like
the plateaus real systems show once a buffer or a thread pool is big enough. A run reports its
mean rate so far after every interval (``Target.report``), so a pruner can stop it early.

The surface and its regions are plain functions (``SyntheticTarget.true_value``, ``refusal``,
``crashes``, ``hangs``, ``noisy``) so the live imitation of this system
(``targets.synthetic_server``) serves exactly the throughput a trial measures.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from targets.base import (
    MAXIMIZE,
    MINIMIZE,
    ConfigRefused,
    ContractExamples,
    Measurement,
    Target,
)

_PEAK = 1000.0
_THREADS_BEST = {"alpha": 8, "beta": 16, "gamma": 32}
_CRASH_THREADS = 48
_HANG_Y = 200.0


def _mode_factor(mode: str, compress: bool, shift: float) -> float:
    """Mode and compression effects; at shift 0 alpha wins, at shift 1 gamma with compress wins."""
    base = {"alpha": 1.0 - 0.05 * shift, "beta": 0.98, "gamma": 0.97 + 0.05 * shift}
    gain = (1.02 if mode == "gamma" else 0.98) if compress else 1.0
    return base[mode] * gain


def refusal(config: Mapping[str, Any]) -> str | None:
    """The synthetic system's own refusal of ``config`` (its FATAL line), or None."""
    if config["mode"] == "gamma" and int(config["threads"]) < 2:
        return "FATAL: mode 'gamma' needs threads >= 2"
    return None


def crashes(config: Mapping[str, Any]) -> bool:
    """Whether the synthetic system crashes on ``config`` (threads > 48 with compress on)."""
    return bool(config["compress"]) and int(config["threads"]) > _CRASH_THREADS


def hangs(config: Mapping[str, Any]) -> bool:
    """Whether the synthetic system hangs on ``config`` (mode beta with y > 200)."""
    return config["mode"] == "beta" and float(config["y"]) > _HANG_Y


def noisy(truth: float, noise: float, rng: random.Random) -> float:
    """``truth`` times multiplicative log-normal noise of mean 1 and coefficient of variation
    ``noise``: one interval's rate."""
    sigma = math.sqrt(math.log(1.0 + noise**2))
    return truth * math.exp(rng.gauss(-(sigma**2) / 2, sigma))


def _effective(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the synthetic system applies: buffer_kb rounded down to a multiple of 16."""
    eff = dict(config)
    eff["buffer_kb"] = max(16, int(config["buffer_kb"]) // 16 * 16)
    return eff


def _buffer_factor(buffer_kb: int, shift: float) -> float:
    centre = 10.0 + 3.0 * shift  # log2 KiB: 1 MiB at shift 0, 8 MiB at shift 1
    return 0.85 + 0.15 * math.exp(-(((math.log2(buffer_kb) - centre) / 3.0) ** 2))


def _threads_factor(threads: int, mode: str) -> float:
    return math.exp(-(((math.log2(threads) - math.log2(_THREADS_BEST[mode])) / 2.5) ** 4))


class SyntheticTarget(Target):
    """A response surface that behaves like a small system, cheaply and reproducibly."""

    name: ClassVar[str] = "synthetic"
    workload_defaults: ClassVar[Mapping[str, Any]] = {
        "shift": 0.0,  # moves the optimum (a different workload)
        "noise": 0.03,  # coefficient of variation of the multiplicative noise
        "duration": 0.05,  # seconds a run takes, to imitate a real trial
        "intervals": 5,  # per-interval samples a run reports
    }
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {
        "shift": (0.0, 1.0),
        "noise": (0.0, 1.0),
        "duration": (0.0, 3600.0),
        "intervals": (1, 1000),
    }
    metrics: ClassVar[Mapping[str, str]] = {"throughput": MAXIMIZE, "latency_ms": MINIMIZE}
    default_objective: ClassVar[str] = "throughput"
    trial_timeout_s: ClassVar[float] = 3.0
    reports_progress: ClassVar[bool] = True  # the mean rate after every interval

    def start(self, config: Mapping[str, Any]) -> None:
        refused = refusal(config)
        if refused:
            raise ConfigRefused(refused)
        self.config = dict(config)
        self.applied = _effective(config)

    def run(self) -> Measurement:
        cfg = self.applied
        started = time.monotonic()
        if crashes(cfg):
            os.abort()  # a real crash: SIGABRT, no result written
        if hangs(cfg):
            while True:  # a real hang: only the trial timeout ends it
                time.sleep(3600)
        rng = random.Random(self.seed)
        truth = self.true_value(cfg, self.workload)
        noise = float(self.workload["noise"])
        n = int(self.workload["intervals"])
        step = float(self.workload["duration"]) / n
        samples = []
        for i in range(n):
            if step:
                time.sleep(step)
            rate = noisy(truth, noise, rng)
            samples.append({"t": round((i + 1) * step, 6), "phase": "run", "ops_per_s": rate})
            so_far = sum(s["ops_per_s"] for s in samples) / len(samples)
            self.report(i, {"throughput": so_far,
                            "latency_ms": 1000.0 * int(cfg["threads"]) / so_far})
        throughput = sum(s["ops_per_s"] for s in samples) / n
        return Measurement(
            metrics={
                "throughput": throughput,
                "latency_ms": 1000.0 * int(cfg["threads"]) / throughput,
            },
            effective_config=dict(cfg),
            samples=samples,
            log=[f"synthetic run: mode={cfg['mode']} threads={cfg['threads']}"],
            duration_s=time.monotonic() - started,
        )

    @classmethod
    def normalize_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _effective(config)  # documented: buffer_kb is rounded down to a multiple of 16

    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        # noise, duration and intervals describe the measurement, not the workload
        return {"shift": float(workload["shift"])}

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        return {
            "synthetic": ContractExamples(
                workload={"duration": 0.1, "noise": 0.0},
                refused={"mode": "gamma", "threads": 1},
                hang={"mode": "beta", "y": 500.0},
                timeout_s=2.0,
            )
        }

    # -- ground truth, used by tests and benchmarks ---------------------------------------------
    @classmethod
    def true_value(cls, config: Mapping[str, Any], workload: Mapping[str, Any]) -> float:
        """The noiseless throughput of ``config`` under ``workload``."""
        return max(_PEAK * math.prod(cls.factors(config, workload).values()), 1.0)

    @classmethod
    def factors(cls, config: Mapping[str, Any], workload: Mapping[str, Any]) -> dict[str, float]:
        """The noiseless throughput's factors, each at most 1 but the mode's (alpha: 1 at shift
        0): what each knob (x, y, threads, buffer_kb) and the mode with compression give. Their
        product times the peak is ``true_value`` (at least 1 op/s); a benchmark reads from them
        which knobs a search's best config got wrong."""
        cfg = _effective(config)
        shift = float(workload.get("shift", 0.0))
        x, y = float(cfg["x"]), float(cfg["y"])
        x_best = 0.25 + 0.5 * shift
        # the best y depends on x: an interaction a one-knob-at-a-time search misses
        ly_best = 0.5 + 1.0 * shift + 1.5 * (x - 0.5)
        return {
            "x": math.exp(-(((x - x_best) / 0.5) ** 4)),
            "y": math.exp(-(((math.log10(y) - ly_best) / 2.0) ** 4)),
            "threads": _threads_factor(int(cfg["threads"]), cfg["mode"]),
            "buffer_kb": _buffer_factor(int(cfg["buffer_kb"]), shift),
            "mode": _mode_factor(cfg["mode"], bool(cfg["compress"]), shift),
        }

    @classmethod
    def known_optimum_value(cls, workload: Mapping[str, Any]) -> float:
        """The best noiseless throughput any valid config reaches under ``workload``."""
        shift = float(workload.get("shift", 0.0))
        best_buffer = max(_buffer_factor(b, shift) for b in range(16, 65536 + 1, 16))
        best = 0.0
        for mode in _THREADS_BEST:
            for compress in (False, True):
                threads = max(
                    range(2 if mode == "gamma" else 1, _CRASH_THREADS + 1),
                    key=lambda t, m=mode: _threads_factor(t, m),
                )
                best = max(
                    best,
                    _PEAK
                    * _threads_factor(threads, mode)
                    * best_buffer
                    * _mode_factor(mode, compress, shift),
                )
        return best
