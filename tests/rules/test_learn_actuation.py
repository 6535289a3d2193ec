"""A rolled-back actuation's config becomes a learned forbid rule: the rule engine parses it and
blocks that config (bools, strings, ints, floats) and no other, a config already forbidden
writes nothing, and ``knobflow rules list`` shows the actuation as the rule's provenance."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import invoke_cli

from rules.learn import LearnedRules, learned_path
from rules.ruleset import RuleSet
from targets.common.errors import ConfigError
from targets.redis import RedisTarget
from targets.synthetic import SyntheticTarget


def _store(home: Path, target: type, service: str) -> LearnedRules:
    return LearnedRules(learned_path(home, service), target.knob_spec())


def _blocked(store: LearnedRules, target: type, config: dict) -> bool:
    return RuleSet.for_target(target, learned=store.rules()).check(config).blocked


def test_a_rolled_back_redis_config_is_forbidden(tmp_path: Path) -> None:
    store = _store(tmp_path, RedisTarget, "cache")
    rules = RuleSet.for_target(RedisTarget)
    fsync = {"appendonly": True, "appendfsync": "always"}
    assert not rules.check(fsync).blocked  # no shipped rule blocks it: the actuation learns it
    rule = store.add_actuation(fsync, rules=rules, instance="cache-1", actuation="A1",
                               reason="throughput got worse: ratio 0.41")
    assert (rule.id, rule.kind, rule.status, rule.expression.text) == (
        "learned-1", "forbid", "proposed", "appendfsync == 'always' and appendonly == true")
    assert rule.message == ("actuation A1 on instance cache-1 was rolled back: throughput got "
                            "worse: ratio 0.41")
    doc = yaml.safe_load(store.path.read_text())["rules"][0]
    assert set(doc["provenance"]) == {"actuation", "instance", "reason", "time"}
    assert doc["provenance"]["actuation"] == "A1" and doc["status"] == "proposed"
    assert _blocked(store, RedisTarget, fsync)
    assert not _blocked(store, RedisTarget, {"appendonly": True, "appendfsync": "everysec"})
    assert not _blocked(store, RedisTarget, {"appendonly": False, "appendfsync": "always"})
    assert not _blocked(store, RedisTarget, {})


def test_a_config_forbidden_already_writes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path, RedisTarget, "cache")
    rules = RuleSet.for_target(RedisTarget)
    first = store.add_actuation({"appendfsync": "always"}, rules=rules, instance="c1",
                                actuation="A1", reason="slower")
    before = store.path.read_bytes()
    again = store.add_actuation({"appendfsync": "always"}, rules=rules, instance="c2",
                                actuation="A2", reason="slower again")
    wider = store.add_actuation({"appendonly": "yes", "appendfsync": "always"}, rules=rules,
                                instance="c3", actuation="A3", reason="slower still")
    assert again.id == wider.id == first.id == "learned-1"
    assert store.path.read_bytes() == before
    store.set_status("learned-1", "dropped")  # a dropped rule forbids nothing any more
    assert store.add_actuation({"appendfsync": "always"}, rules=rules, instance="c1",
                               actuation="A4", reason="slower").id == "learned-2"


def test_numbers_and_categories_round_trip_through_the_rule_engine(tmp_path: Path) -> None:
    store = _store(tmp_path, SyntheticTarget, "synthetic")
    rules = RuleSet.for_target(SyntheticTarget)
    bad = {"threads": 12, "x": 0.35, "mode": "beta", "compress": False}
    rule = store.add_actuation(bad, rules=rules, instance="s1", actuation="A9", reason="r")
    assert rule.expression.text == ("compress == false and mode == 'beta' and threads == 12.0 "
                                    "and x == 0.35")
    assert _blocked(store, SyntheticTarget, bad)
    for other in ({"threads": 13}, {"x": 0.36}, {"mode": "gamma"}, {"compress": True}):
        assert not _blocked(store, SyntheticTarget, {**bad, **other}), other
    with pytest.raises(ConfigError) as caught:
        store.add_actuation({"treads": 3}, rules=rules, instance="s1", actuation="A10",
                            reason="r")
    assert str(caught.value) == ("actuation A10: unknown knob 'treads' for target 'synthetic' "
                                 "(did you mean 'threads'?)")


def test_rules_list_shows_the_actuation(home: Path) -> None:
    store = _store(home, RedisTarget, "redis")
    store.add_actuation({"appendfsync": "always"}, rules=RuleSet.for_target(RedisTarget),
                        instance="cache-1", actuation="A1", reason="slower")
    listed = invoke_cli(["rules", "list", "redis", "--home", str(home)])
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("│")[1:-1] for line in listed.stdout.splitlines() if "│" in line]
    column = [" ".join(cell.strip() for cell in cells if cell.strip())
              for cells in zip(*rows, strict=True)]  # a cell folded over lines, joined
    assert column[:3] == ["learned-1", "proposed", "forbid"]
    assert column[4].startswith("actuation A1 on cache-1 rolled back: slower at 20")
