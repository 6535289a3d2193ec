"""The synthetic target's surface as factors (``SyntheticTarget.factors``): what
``benchmarks/samplers.py`` reads to say which knobs a search's best config got wrong."""

from __future__ import annotations

import math
import random

import pytest

from targets.synthetic import SyntheticTarget

BEST = {"x": 0.25, "y": 10**0.125, "threads": 8, "buffer_kb": 1024, "mode": "alpha",
        "compress": False}  # shift 0: log10(y) best at 0.5 + 1.5 * (0.25 - 0.5)


def _random_config(rng: random.Random) -> dict[str, object]:
    return {"x": rng.random(), "y": 10 ** rng.uniform(-3, 3), "threads": rng.randint(1, 64),
            "buffer_kb": rng.randint(16, 65536), "mode": rng.choice(["alpha", "beta", "gamma"]),
            "compress": rng.random() < 0.5}


def test_the_factors_multiply_to_the_true_value() -> None:
    rng = random.Random(7)
    for _ in range(500):
        config, workload = _random_config(rng), {"shift": rng.random()}
        product = 1000.0 * math.prod(SyntheticTarget.factors(config, workload).values())
        assert SyntheticTarget.true_value(config, workload) == pytest.approx(max(product, 1.0))


def test_the_best_config_has_every_factor_at_one_and_reaches_the_known_optimum() -> None:
    factors = SyntheticTarget.factors(BEST, {"shift": 0.0})
    assert factors == pytest.approx({n: 1.0 for n in factors})
    assert SyntheticTarget.true_value(BEST, {"shift": 0.0}) == pytest.approx(
        SyntheticTarget.known_optimum_value({"shift": 0.0}))


@pytest.mark.parametrize(("knob", "value", "moved"), [
    ("buffer_kb", 64, {"buffer_kb"}),
    ("mode", "gamma", {"mode", "threads"}),  # the best thread count moves with the mode
    ("compress", True, {"mode"}),
    ("x", 0.9, {"x", "y"}),  # the best y moves with x
    ("y", 1000.0, {"y"}),
    ("threads", 40, {"threads"}),
])
def test_a_knob_moves_only_its_own_factors(knob: str, value: object, moved: set[str]) -> None:
    before = SyntheticTarget.factors(BEST, {"shift": 0.0})
    after = SyntheticTarget.factors({**BEST, knob: value}, {"shift": 0.0})
    assert {n for n in before if not math.isclose(before[n], after[n])} == moved
