"""Which part of a pick's changes a ``max_knobs`` policy keeps (``model_registry/limit.py``):
the part predicted best of every part that small, under real rules. The scorer here is a known
surface with an interaction (a mode that pays only with the thread count it suits), standing in
for a champion so that the right part is known; ``test_recommend.py`` does it with a real one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from model_registry import limit
from model_registry.limit import _limit_greedy, limit_changes
from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget

CURRENT = SyntheticTarget.knob_spec().defaults()  # mode alpha, 2 threads, x 0.7
PICK = {**CURRENT, "mode": "beta", "threads": 16, "x": 0.2}
SHIPPED = RuleSet.for_target(SyntheticTarget)


def interacting(configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """1.0 at the current config; x = 0.2 adds 0.1; mode beta or 16 threads alone cost 0.1,
    the two together add 0.5."""
    def one(c: Mapping[str, Any]) -> float:
        beta, many = c["mode"] == "beta", c["threads"] == 16
        return (1.0 + (0.5 if beta and many else -0.1 if beta or many else 0.0)
                + (0.1 if c["x"] == 0.2 else 0.0))
    return np.array([one(c) for c in configs])


def changed(config: Mapping[str, Any]) -> set[str]:
    return {k for k in config if config[k] != CURRENT[k]}


def test_knobs_that_pay_only_together_are_kept_together() -> None:
    assert changed(limit_changes(PICK, CURRENT, 2, SHIPPED, interacting, True)) == {
        "mode", "threads"}
    # one knob at a time takes x (the best single change), then finds no second that helps
    assert changed(_limit_greedy(PICK, CURRENT, 2, SHIPPED, interacting, True)) == {"x"}
    assert changed(limit_changes(PICK, CURRENT, 3, SHIPPED, interacting, True)) == {
        "mode", "threads", "x"}


def test_a_part_the_rules_block_is_passed_over(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"target": "synthetic", "rules": [{
        "id": "no-beta-crowd", "kind": "forbid", "when": "mode == 'beta' and threads > 8",
        "message": "beta with many threads is banned (test)"}]}))
    rules = RuleSet.for_target(SyntheticTarget, files=[str(path)])
    assert rules.check({**CURRENT, "mode": "beta", "threads": 16}).blocked
    assert changed(limit_changes(PICK, CURRENT, 2, rules, interacting, True)) == {"x"}


def test_equal_predictions_take_the_fewest_knobs_and_no_gain_keeps_the_current() -> None:
    def x_only(configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([float(c["x"] == 0.2) for c in configs])

    assert changed(limit_changes(PICK, CURRENT, 3, SHIPPED, x_only, True)) == {"x"}
    # minimised: every change is predicted worse, so nothing is changed
    assert limit_changes(PICK, CURRENT, 2, SHIPPED, x_only, False) == CURRENT


def test_without_a_model_or_with_too_many_parts_one_knob_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # no model: the first changes in the knob spec's order
    assert changed(limit_changes(PICK, CURRENT, 2, SHIPPED, None, True)) == {"x", "threads"}
    monkeypatch.setattr(limit, "MAX_PARTS", 5)  # 3 changes, 2 knobs: 6 parts
    assert changed(limit_changes(PICK, CURRENT, 2, SHIPPED, interacting, True)) == {"x"}
