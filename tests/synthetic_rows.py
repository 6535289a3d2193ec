"""Trial-table rows of the synthetic target for model tests: random configs whose measured
throughput is the known response surface with multiplicative noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from targets.synthetic import SyntheticTarget


def trial_table(n: int, *, seed: int = 0, shift: float = 0.0, noise: float = 0.03,
                instance: str = "kv-1", study: str = "s1",
                service: str = "orders-kv") -> pd.DataFrame:
    """``n`` clean rows of one instance's trials, as ``tuners.trials`` lays them out."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cfg = {"x": float(rng.random()), "y": float(10 ** rng.uniform(-3, 3)),
               "threads": int(rng.integers(2, 49)), "buffer_kb": int(2 ** rng.uniform(4, 16)),
               "mode": str(rng.choice(["alpha", "beta", "gamma"])),
               "compress": bool(rng.random() < 0.5)}
        value = SyntheticTarget.true_value(cfg, {"shift": shift}) * math.exp(rng.normal(0, noise))
        rows.append({
            "service": service, "target": "synthetic", "instance": instance, "study": study,
            "trial": str(i), "source": "tuner", "status": "ok", "objective": "throughput",
            "direction": "maximize", "value": value, "metric.throughput": value,
            "workload.shift": shift, **{f"knob.{k}": v for k, v in cfg.items()},
        })
    return pd.DataFrame(rows)
