"""The keep/rollback decision on noisy windows: a clear drop is worse, equal windows are rarely
called worse (rate measured over seeded repetitions), a drop below the minimum effect is kept,
minimize works the other way, and rollback triggers roll back while alerts only report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rules.ruleset import RuleSet
from targets.common.errors import KnobflowError
from targets.synthetic import SyntheticTarget
from tasks.decide import ChangeTest, DecisionError, decide
from tasks.decide import test_change as change_test


def _windows(rng: np.random.Generator, level: float, noise: float, n: int = 5) -> list[float]:
    return list(level * (1 + noise * rng.standard_normal(n)))


def _rate(drop: float, noise: float, reps: int = 200, seed: int = 0, **kw: float) -> float:
    """The share of ``reps`` seeded repetitions whose change test says worse."""
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(reps):
        before, after = _windows(rng, 100, noise), _windows(rng, 100 * (1 - drop), noise)
        worse += change_test(before, after, "maximize", **kw).worse
    return worse / reps


def test_a_clear_drop_is_worse() -> None:
    rng = np.random.default_rng(7)
    test = change_test(_windows(rng, 1000, 0.03), _windows(rng, 700, 0.03), "maximize",
                       metric="throughput")
    assert test.worse and not test.better
    assert (test.n_before, test.n_after) == (5, 5)
    assert test.ratio == pytest.approx(0.7, abs=0.03)
    assert test.interval[0] < test.ratio < test.interval[1] < 0.8
    assert test.p_value < 1e-4 and test.statistic < 0 and test.p_better > 0.99
    assert test.summary().startswith("throughput got worse: ratio 0.")
    # and so in every one of 200 seeded repetitions (measured: 200 of 200)
    assert _rate(0.30, 0.03) == 1.0


def test_equal_windows_are_rarely_worse() -> None:
    """Measured: 0 of 200 with the default 5 % minimum effect; 1 of 200 (0.5 %) with none,
    near alpha = 1 % as a one-sided test at 1 % should be."""
    assert _rate(0.0, 0.03) <= 0.02
    assert _rate(0.0, 0.03, min_effect=0.0) <= 0.02


def test_a_drop_below_the_minimum_effect_is_kept() -> None:
    rng = np.random.default_rng(3)
    test = change_test(_windows(rng, 100, 0.005), _windows(rng, 97, 0.005), "maximize")
    assert test.p_change < test.alpha  # the drop is real ...
    assert not test.worse  # ... but smaller than the 5 % that is worth a rollback
    assert test.summary().startswith("metric worse, not shown beyond the 5% minimum effect: "
                                     "ratio 0.9")
    assert decide(test, []).keep
    assert _rate(0.03, 0.01) == 0.0  # measured: 0 of 200 (with 3 % noise too)


def test_minimize_works_the_other_way() -> None:
    rng = np.random.default_rng(11)
    before = _windows(rng, 2.0, 0.03)
    slower = change_test(before, _windows(rng, 2.6, 0.03), "minimize", metric="p99 latency")
    assert slower.worse and slower.ratio == pytest.approx(1.3, abs=0.05)
    faster = change_test(before, _windows(rng, 1.4, 0.03), "minimize")
    assert faster.better and not faster.worse
    assert not change_test(before, _windows(rng, 2.6, 0.03), "maximize").worse


def test_identical_windows_give_an_exact_answer() -> None:
    same = change_test([10, 10, 10], [10, 10, 10], "maximize")
    assert (same.worse, same.better, same.p_change, same.p_value, same.ratio) == (
        False, False, 0.5, 1.0, 1.0)
    drop = change_test([10, 10], [5, 5], "maximize")
    assert drop.worse and drop.p_value == 0.0 and drop.interval == pytest.approx((0.5, 0.5))
    assert change_test([10, 10], [5, 5], "minimize").better


@pytest.mark.parametrize(("before", "after", "message"), [
    ([1.0], [1.0, 2.0], "the metric of 1 window(s) before the change cannot decide it: at least "
                        "2 on each side are needed (policy 'windows')"),
    ([1.0, 2.0], [], "the metric of 0 window(s) after the change cannot decide it"),
    ([1.0, 0.0], [1.0, 2.0], "window 2 before the change measured metric 0.0: the test needs "
                             "positive finite values (did the load stop?)"),
    ([1.0, 2.0], [1.0, math.nan], "window 2 after the change measured metric nan"),
    ([1.0, 2.0], [-1.0, 2.0], "window 1 after the change measured metric -1.0"),
])
def test_windows_that_cannot_decide_are_an_error(before: list[float], after: list[float],
                                                 message: str) -> None:
    with pytest.raises(DecisionError) as caught:
        change_test(before, after, "maximize")
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, KnobflowError) and isinstance(caught.value, ValueError)
    with pytest.raises(DecisionError, match="direction must be one of maximize, minimize"):
        change_test([1, 2], [1, 2], "max")


def _fired(tmp_path: Path, after_latency: float, after_throughput: float) -> list:
    """Triggers fired by the real rule engine (a rollback and an alert rule)."""
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "slower", "kind": "trigger", "action": "rollback",
         "when": "after.latency_ms > 1.5 * before.latency_ms",
         "message": "median latency up more than 50%"},
        {"id": "dip", "kind": "trigger", "action": "alert", "severity": "warn",
         "when": "after.throughput < 0.99 * before.throughput", "message": "throughput dipped"},
    ]}))
    rules = RuleSet.for_target(SyntheticTarget, files=[str(path)])
    return rules.fired_triggers({"latency_ms": 1.0, "throughput": 100.0},
                                {"latency_ms": after_latency, "throughput": after_throughput})


def _steady() -> ChangeTest:
    rng = np.random.default_rng(5)
    return change_test(_windows(rng, 100, 0.03), _windows(rng, 100, 0.03), "maximize",
                       metric="throughput")


def test_decide_rolls_back_on_a_rollback_trigger_and_reports_an_alert(tmp_path: Path) -> None:
    steady = _steady()
    assert not steady.worse
    alert = decide(steady, _fired(tmp_path, 1.0, 98.0))
    assert alert.keep
    assert alert.reasons[1] == "trigger dip fired (alert only): throughput dipped"
    rollback = decide(steady, _fired(tmp_path, 2.0, 98.0))
    assert not rollback.keep
    assert rollback.reasons[0] == "trigger slower fired: median latency up more than 50%"
    assert rollback.reasons[1].startswith("throughput not significantly worse: ratio ")
    assert rollback.reasons[2] == "trigger dip fired (alert only): throughput dipped"


def test_decide_rolls_back_when_the_test_says_worse() -> None:
    rng = np.random.default_rng(9)
    worse = change_test(_windows(rng, 100, 0.03), _windows(rng, 60, 0.03), "maximize")
    decision = decide(worse, [])
    assert not decision.keep and decision.reasons == [worse.summary()]
    assert decision.reasons[0] == ("metric got worse: ratio 0.598 (95 % interval 0.573-0.624, "
                                   "5+5 windows), p = 1.5e-07 < 0.01")
    assert worse.to_dict()["interval"] == list(worse.interval)
