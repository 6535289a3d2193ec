"""The rule sets knobflow ships know every hang and refusal measured in shared/TARGETS.md.

Machine facts are pinned to the machine TARGETS.md was measured on (2 cores, 24 GB), so the
verdicts do not depend on where the suite runs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rules.parse import load_rule_file
from rules.rule import machine_facts
from rules.ruleset import RuleSet
from targets.registry import load_target

REPO = Path(__file__).resolve().parents[2]
GB = 2**30
MEASURED_ON = {"machine.cores": 2.0, "machine.memory": 24.0 * GB, "machine.memory_mb": 24.0 * 1024}


def _rules(target: str, policies: tuple[str, ...] = ()) -> RuleSet:
    rules = RuleSet.for_target(load_target(target), policies=policies)
    return replace(rules, facts={**machine_facts(), **MEASURED_ON})


# (target, the bad values of TARGETS.md, what the system does with them, the rule that knows it)
KNOWN_BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("rocksdb", {"level0_file_num_compaction_trigger": -1}, "hangs (rocksdict and db_bench)",
     "l0-trigger-positive"),
    ("rocksdb", {"target_file_size_base": 0, "write_buffer_size": 65536},
     "hangs (rocksdict); 'Too many open files' after 40 s (db_bench)", "target-file-size-positive"),
    ("rocksdb", {"block_size": 8 * GB}, "refused at open", "block-size-range"),
    ("rocksdb", {"block_size": 0}, "accepted silently by db_bench", "block-size-range"),
    ("rocksdb", {"write_buffer_size": 0}, "clamped silently to 65536", "sizes-positive"),
    ("rocksdb", {"write_buffer_size": -1}, "OverflowError / accepted silently", "sizes-positive"),
    ("rocksdb", {"block_cache_size": -1}, "accepted silently by db_bench", "sizes-positive"),
    ("postgres", {"max_connections": 3}, "FATAL: below the reserved connections",
     "connections-above-reserved"),
    ("postgres", {"shared_buffers": 20 * 1024}, "starts on 24 GB, OOM later",
     "shared-buffers-fit-memory"),
    ("redis", {"maxmemory": 1}, "starts, every SET fails with OOM", "maxmemory-too-small"),
    ("redis", {"io_threads": 4}, "~60x slower on 2 cores: a hang", "io-threads-beyond-cores"),
]


@pytest.mark.parametrize(
    ("target", "config", "rule"),
    [pytest.param(t, c, r, id=f"{t}-{r}-{what}") for t, c, what, r in KNOWN_BAD],
)
def test_every_known_hang_and_refusal_is_blocked(
    target: str, config: dict[str, Any], rule: str
) -> None:
    verdict = _rules(target).check(config)
    assert verdict.blocked
    assert rule in {f.rule for f in verdict.errors}, verdict.failures
    failure = next(f for f in verdict.errors if f.rule == rule)
    # the values that made it fail are named, with the offending knob among them
    assert set(config) & set(failure.values)


@pytest.mark.parametrize("target", ["synthetic", "sqlite", "rocksdb", "postgres", "redis"])
def test_default_config_passes_the_shipped_rules(target: str) -> None:
    spec = load_target(target).knob_spec()
    verdict = _rules(target).check(spec.defaults())
    assert not verdict.failures, verdict.failures


@pytest.mark.parametrize(
    ("target", "config"),
    [
        ("sqlite", {"journal_mode": "off"}),
        ("sqlite", {"journal_mode": "memory"}),
        ("sqlite", {"synchronous": "off"}),
        ("postgres", {"synchronous_commit": "off"}),
        ("redis", {"appendonly": False}),
        ("redis", {"appendonly": True, "appendfsync": "no"}),
    ],
)
def test_durability_is_a_policy_the_operator_turns_on(target: str, config: dict) -> None:
    assert not _rules(target).check(config).blocked
    verdict = _rules(target, policies=("durability",)).check(config)
    assert verdict.blocked and verdict.errors[0].rule.startswith("durable-")


def test_redis_io_threads_follow_the_cores_of_the_machine() -> None:
    rules = _rules("redis")
    eight_cores = replace(rules, facts={**rules.facts, "machine.cores": 8.0})
    assert rules.check({"io_threads": 4}).blocked
    assert not eight_cores.check({"io_threads": 4}).failures
    # every core taken by I/O threads: half the throughput, reported but not blocked
    for facts in (rules, eight_cores):
        cores = int(facts.facts["machine.cores"])
        verdict = facts.check({"io_threads": cores})
        assert not verdict.blocked
        assert [f.rule for f in verdict.warnings] == ["io-threads-all-cores"]


def test_rocksdb_level1_must_hold_level0() -> None:
    rules = _rules("rocksdb")
    mib = 2**20
    base = {"write_buffer_size": 64 * mib, "min_write_buffer_number_to_merge": 1,
            "level0_file_num_compaction_trigger": 4, "max_write_buffer_number": 2}
    assert not rules.check({**base, "max_bytes_for_level_base": 256 * mib}).blocked
    verdict = rules.check({**base, "max_bytes_for_level_base": 128 * mib})
    # a warning (RocksDB's tuning guide), not a hang: reported, not blocked
    assert not verdict.blocked
    assert [f.rule for f in verdict.warnings] == ["level1-holds-level0"]
    assert verdict.warnings[0].values["max_bytes_for_level_base"] == 128 * mib


@pytest.mark.parametrize("path", sorted(REPO.glob("examples/*rules*.yaml")), ids=lambda p: p.name)
def test_example_rule_files_are_valid(path: Path) -> None:
    import yaml

    target_cls = load_target(yaml.safe_load(path.read_text())["target"])
    rules = load_rule_file(path, target_cls.knob_spec(), target_cls)
    assert {r.kind for r in rules} == {"constraint", "forbid", "trigger"}
