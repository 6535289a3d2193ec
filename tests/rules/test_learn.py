"""Rules learned from failures: the proposed forbid rule covers the failure's region, generally,
and blocks no config that ran well."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rules.learn import LearnedRules, propose_forbid
from rules.parse import rule_from_dict
from rules.review import sample_space
from rules.rule import Rule
from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget
from tuners.space import SearchSpace, parse_space

SPEC = SyntheticTarget.knob_spec()
SPACE = SearchSpace.full(SPEC)
DEFAULT = SPEC.defaults()  # x 0.7, y 1.0, threads 2, buffer_kb 256, alpha, compress off


def _rules() -> RuleSet:
    return RuleSet.for_target(SyntheticTarget)


def _config(**values: Any) -> dict[str, Any]:
    return {**DEFAULT, **values}


def _blocked(expression: str, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Which of ``configs`` a forbid rule with ``expression`` blocks (the real rule engine)."""
    rule = rule_from_dict({"id": "learned-test", "kind": "forbid", "when": expression},
                          "test", SPEC)
    frame = pd.DataFrame([SPEC.full_config(c) for c in configs])
    return RuleSet(spec=SPEC, rules=[rule]).check_frame(frame)["blocked"].to_numpy()


def _crashes(config: Mapping[str, Any]) -> bool:
    return bool(config["compress"]) and int(config["threads"]) > 48


def _hangs(config: Mapping[str, Any]) -> bool:
    return config["mode"] == "beta" and float(config["y"]) > 200


def _sample(n: int, seed: int) -> list[dict[str, Any]]:
    frame = sample_space(SPACE, n, seed=seed)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


#: configs that ran well on the synthetic target: the default and a few around the crash region
GOODS = [
    DEFAULT,
    _config(x=0.3, y=5.0, threads=40, buffer_kb=1024, mode="alpha", compress=True),
    _config(x=0.5, y=0.2, threads=62, buffer_kb=4096, mode="gamma", compress=False),
    _config(x=0.9, y=30.0, threads=24, buffer_kb=64, mode="beta", compress=True),
    _config(x=0.2, y=80.0, threads=56, buffer_kb=512, mode="beta", compress=False),
    _config(x=0.6, y=2.0, threads=12, buffer_kb=8192, mode="gamma", compress=True),
]


def test_a_crash_forbids_its_region_and_no_config_that_ran() -> None:
    failed = _config(x=0.4, y=3.0, threads=60, buffer_kb=2048, mode="gamma", compress=True)
    expression = propose_forbid(failed, GOODS, SPACE, _rules())
    # the knobs of the crash, on the crash's side: more threads than any good config with
    # compression had (40), with compression on
    assert expression == "threads >= 51 and compress == true"
    assert _blocked(expression, [failed]).all()
    assert not _blocked(expression, GOODS).any()
    # configs deep in the crash region are blocked, whatever the other knobs are
    deep = [{**c, "threads": t, "compress": True} for c, t in
            zip(_sample(200, seed=1), np.random.default_rng(1).integers(52, 65, 200), strict=True)]
    assert _blocked(expression, deep).all()
    # and configs far from it are not: fewer threads, or no compression
    safe = [c for c in _sample(500, seed=2)
            if int(c["threads"]) <= 48 or not c["compress"]]
    assert not _blocked(expression, safe).any()


def test_a_hang_forbids_its_region_on_y_and_mode() -> None:
    goods = [*GOODS, _config(x=0.5, y=150.0, threads=20, mode="beta"),
             _config(x=0.5, y=600.0, threads=20, mode="alpha")]
    failed = _config(x=0.45, y=700.0, threads=18, buffer_kb=300, mode="beta")
    expression = propose_forbid(failed, goods, SPACE, _rules())
    assert expression is not None
    assert expression.startswith("y >= ") and expression.endswith("and mode == 'beta'")
    threshold = float(expression.split()[2])
    assert 150.0 < threshold < 700.0  # between the beta config that ran and the failure
    assert not _blocked(expression, goods).any()
    deep = [{**c, "mode": "beta", "y": y} for c, y in
            zip(_sample(200, seed=3), np.geomspace(700.0, 1000.0, 200), strict=True)]
    assert _blocked(expression, deep).all()


@pytest.mark.parametrize("seed", range(12))
def test_a_proposal_never_blocks_a_config_that_ran_and_always_the_failed_one(seed: int) -> None:
    """Random histories: goods outside the failure regions, one failure inside one of them."""
    configs = _sample(300, seed=100 + seed)
    ran = [c for c in configs if not _crashes(c) and not _hangs(c)]
    goods = [DEFAULT, *ran[:5 + 3 * seed]]
    failed = next(c for c in configs if _crashes(c) or _hangs(c))
    expression = propose_forbid(failed, goods, SPACE, _rules())
    assert expression is not None
    assert _blocked(expression, [failed]).all()
    assert not _blocked(expression, goods).any()
    # a pair of conditions, never a pin on the failed config's every knob
    assert expression.count(" and ") == 1


def test_conditions_point_away_from_the_default_and_read_well() -> None:
    """A threshold lies between the failure and the closest value that ran; integer knobs get
    integers, float knobs as few digits as keep the threshold in that gap."""
    goods = [DEFAULT, _config(x=0.2, y=0.05, threads=30, buffer_kb=40)]
    failed = _config(x=0.1, y=0.004, threads=2, buffer_kb=20)  # below the default: "<="
    expression = propose_forbid(failed, goods, SPACE, _rules())
    assert expression is not None
    for condition in expression.split(" and "):
        name, op, value = condition.split()
        assert op == "<="
        if name in ("threads", "buffer_kb"):
            assert value.isdigit()
        else:
            assert len(value) <= 6, value  # 0.015, not 0.014142135623730952
    assert _blocked(expression, [failed]).all() and not _blocked(expression, goods).any()


def test_the_same_config_having_run_well_teaches_nothing() -> None:
    failed = _config(x=0.4, y=3.0, threads=60, compress=True)
    ran = _config(x=0.401, y=3.01, threads=60, compress=True)
    assert propose_forbid(failed, [DEFAULT, ran], SPACE, _rules()) is None


def test_without_good_configs_the_rule_still_spares_the_default() -> None:
    failed = _config(x=0.4, y=3.0, threads=60, compress=True)
    expression = propose_forbid(failed, [], SPACE, _rules())
    assert expression is not None
    assert _blocked(expression, [failed]).all()
    assert not _blocked(expression, [DEFAULT]).any()


def test_earlier_failures_of_the_kind_widen_the_rule() -> None:
    """With only threads and x tuned, a pair on threads and x fits the first crash; the second
    crash, on the other side of x, makes threads alone the cause."""
    space = parse_space({"knobs": {"threads": {"range": [1, 64]}, "x": {"range": [0.0, 1.0]}},
                         "fixed": {"compress": True, "mode": "alpha"}}, SPEC, "test")
    goods = [space.config({"threads": 2, "x": 0.7}), space.config({"threads": 40, "x": 0.2}),
             space.config({"threads": 30, "x": 0.9})]
    first = space.config({"threads": 60, "x": 0.3})
    second = space.config({"threads": 55, "x": 0.95})
    alone = propose_forbid(second, goods, space, _rules())
    assert alone is not None and "x" in alone  # one crash: x may be part of it
    widened = propose_forbid(second, goods, space, _rules(), failures=[first])
    assert widened == "threads >= 48"
    assert _blocked(widened, [first, second]).all() and not _blocked(widened, goods).any()


def test_a_failure_is_never_blamed_on_knobs_at_their_default_alone() -> None:
    """The default config ran; a failure that differs from it only in ``threads`` is put on
    threads, not on the categorical knobs it shares with the default."""
    failed = _config(threads=60)
    expression = propose_forbid(failed, [DEFAULT], SPACE, _rules())
    assert expression is not None and "threads >= " in expression
    assert not _blocked(expression, [DEFAULT]).any()


# -- the learned-rules file: widening instead of near-duplicates -------------------------------
def _store(tmp_path: Path) -> LearnedRules:
    return LearnedRules(tmp_path / "rules" / "synthetic.learned.yaml", SPEC)


def _add(store: LearnedRules, expression: str, trial: int) -> Rule:
    return store.add(expression, rules=_rules(), study="s", trial=trial, failure_class="crash",
                     message="killed by SIGABRT")


def test_a_wider_proposal_widens_the_proposed_rule_under_its_id(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = _add(store, "threads >= 52 and compress == true", 5)
    wider = _add(store, "threads >= 50 and compress == true", 31)
    docs = store.documents()
    assert first.id == wider.id == "learned-1" and len(docs) == 1
    assert docs[0]["when"] == "threads >= 50 and compress == true"
    assert docs[0]["provenance"]["trial"] == 5  # where it was learned first
    assert [w["trial"] for w in docs[0]["provenance"]["widened_by"]] == [31]
    assert wider.expression.text == "threads >= 50 and compress == true"
    # a failure inside the rule teaches nothing new: the file stays as it was
    before = store.path.read_text(encoding="utf-8")
    inside = _add(store, "threads >= 55 and compress == true", 40)
    assert inside.id == "learned-1" and store.path.read_text(encoding="utf-8") == before
    # other knobs or other values are another region: a new rule
    other = _add(store, "y >= 240.0 and mode == 'beta'", 17)
    gamma = _add(store, "threads >= 50 and compress == false", 44)
    assert (other.id, gamma.id) == ("learned-2", "learned-3")
    narrower_y = _add(store, "y >= 300.0 and mode == 'beta'", 45)
    assert narrower_y.id == "learned-2" and len(store.documents()) == 3


def test_accepted_and_dropped_rules_are_never_widened(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _add(store, "threads >= 52 and compress == true", 5)
    store.set_status("learned-1", "accepted")
    wider = _add(store, "threads >= 50 and compress == true", 31)
    assert wider.id == "learned-2"  # what the operator accepted stays as accepted
    assert store.documents()[0]["when"] == "threads >= 52 and compress == true"
    store.set_status("learned-2", "dropped")
    again = _add(store, "threads >= 49 and compress == true", 32)
    assert again.id == "learned-3"  # a dropped rule is not brought back by a wider one


def test_a_widened_rule_replaces_the_one_a_job_applies(tmp_path: Path) -> None:
    ruleset = _rules()
    store = _store(tmp_path)
    ruleset.add(_add(store, "threads >= 52 and compress == true", 5))
    ruleset.add(_add(store, "threads >= 50 and compress == true", 31))
    learned = [r for r in ruleset.rules if r.id.startswith("learned-")]
    assert [r.expression.text for r in learned] == ["threads >= 50 and compress == true"]
    assert ruleset.check(_config(threads=51, compress=True)).blocked
