"""Rules over a whole search space before a job, range hints after it, triggers after an
actuation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from rules.language import RuleError
from rules.review import check_space, range_hints
from rules.ruleset import RuleSet
from targets.postgres import PostgresTarget
from targets.redis import RedisTarget
from targets.rocksdb import RocksdbTarget
from targets.synthetic import SyntheticTarget
from tuners.space import SearchSpace, load_space

MIB = 2**20


def _space(target_cls: type, knobs: dict, tmp_path: Path, fixed: dict | None = None
           ) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"knobs": knobs, "fixed": fixed or {}}))
    return load_space(str(path), target_cls.knob_spec())


def test_a_range_beyond_the_machine_is_reported_at_load(tmp_path: Path) -> None:
    space = _space(PostgresTarget, {"shared_buffers": {"range": [128, 8192]}}, tmp_path)
    rules = RuleSet.for_target(PostgresTarget)
    small = replace(rules, facts={**rules.facts, "machine.memory_mb": 8192.0})
    warnings = check_space(small, space, "space.yaml")
    assert any(w.startswith("range of shared_buffers") and "(high end)" in w
               and "shared-buffers-fit-memory" in w for w in warnings), warnings
    big = replace(rules, facts={**rules.facts, "machine.memory_mb": 1024.0 * 1024})
    assert not any("shared_buffers" in w for w in check_space(big, space, "space.yaml"))


def test_a_space_the_rules_block_entirely_stops_with_the_rule(tmp_path: Path) -> None:
    space = _space(SyntheticTarget, {"x": {"range": [0.0, 1.0]}}, tmp_path,
                   fixed={"threads": 1, "mode": "gamma"})
    with pytest.raises(RuleError, match=r"space\.yaml: every config of the search space fails "
                                        r"the rules \(e\.g\. rule 'gamma-needs-threads'"):
        check_space(RuleSet.for_target(SyntheticTarget), space, "space.yaml")


def test_range_hints_name_the_knob_the_bound_and_the_count(tmp_path: Path) -> None:
    space = _space(RocksdbTarget, {"write_buffer_size": {"range": [MIB, 64 * MIB]},
                                   "block_cache_size": {"range": [MIB, 512 * MIB]}}, tmp_path)
    best = [{"write_buffer_size": 64 * MIB, "block_cache_size": c * MIB}
            for c in (10, 100, 200, 300)]
    best.append({"write_buffer_size": 8 * MIB, "block_cache_size": 400 * MIB})
    hints = range_hints(best, space)
    assert len(hints) == 1
    assert hints[0].startswith("write_buffer_size: 4 of the 5 best configs are at the upper "
                               "bound 64 MiB")
    assert "range may be too narrow" in hints[0]
    # three at the edge are not enough to blame the range
    assert range_hints(best[1:], space) == []
    lower = [{"write_buffer_size": MIB, "block_cache_size": MIB} for _ in range(5)]
    assert {h.split(":")[0] for h in range_hints(lower, space)} == {"write_buffer_size",
                                                                    "block_cache_size"}
    assert all("lower bound" in h for h in range_hints(lower, space))


def test_a_wide_integer_knobs_edge_is_judged_by_ratio(tmp_path: Path) -> None:
    # Redis's hz, 1-500 Hz: its default 10 Hz is 2 % of the range from 1 Hz on a linear scale
    # (it was "at the lower bound 1 Hz; the range may be too narrow"), not near 1 Hz by ratio
    space = _space(RedisTarget, {"hz": {"range": [1, 500]},
                                 "active_expire_effort": {"range": [1, 10]}}, tmp_path)
    best = [{"hz": hz, "active_expire_effort": 1} for hz in (10, 2, 10, 2, 10)]
    hints = range_hints(best, space)
    assert [h.split(":")[0] for h in hints] == ["active_expire_effort"], hints
    at_one = [{"hz": 1, "active_expire_effort": 5} for _ in range(5)]
    assert [h.split(":")[0] for h in range_hints(at_one, space)] == ["hz"]
    top = [{"hz": hz, "active_expire_effort": 5} for hz in (500, 480, 450, 460, 20)]
    assert [h.split(":")[0] for h in range_hints(top, space)] == ["hz"]  # within 2 % by ratio


def test_triggers_fire_on_measurements_before_and_after(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "slower", "kind": "trigger", "action": "rollback",
         "when": "after.latency_ms > 1.1 * before.latency_ms",
         "message": "median latency up more than 10%"},
        {"id": "throughput-drop", "kind": "trigger", "action": "retune", "severity": "warn",
         "when": "after.throughput < 0.8 * before.throughput"},
    ]}))
    rules = RuleSet.for_target(SyntheticTarget, files=[str(path)])
    # the shipped trigger first, then the file's
    assert [r.id for r in rules.triggers] == ["throughput-halved", "slower", "throughput-drop"]
    fired = rules.fired_triggers({"latency_ms": 1.0, "throughput": 100.0},
                                 {"latency_ms": 1.2, "throughput": 95.0})
    assert [f.rule for f in fired] == ["slower"]
    assert fired[0].message.startswith("rollback: ")
    assert fired[0].values == {"after.latency_ms": 1.2, "before.latency_ms": 1.0}
    both = rules.fired_triggers({"latency_ms": 1.0, "throughput": 100.0},
                                {"latency_ms": 1.5, "throughput": 50.0})
    assert [f.rule for f in both] == ["slower", "throughput-drop"]
    assert rules.fired_triggers({"latency_ms": 1.0, "throughput": 100.0},
                                {"latency_ms": 1.05, "throughput": 99.0}) == []
    # a metric this actuation did not measure: the trigger is skipped, not an error
    assert [f.rule for f in rules.fired_triggers({"throughput": 100.0}, {"throughput": 10.0})
            ] == ["throughput-halved", "throughput-drop"]
    # triggers are not config rules: a config never fails them
    assert not rules.check({}).failures
