"""Rules wired into the tune flow and the CLI: candidates checked before they run, rules learned
from failures and reviewed, configs validated before they are applied."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import invoke_cli, missing_executables, needs

from flows.job import Job
from flows.report import RunSummary
from flows.spec import JobSpec
from flows.tune import tune
from rules.language import RuleError
from rules.learn import LearnedRules, learned_path
from rules.ruleset import RuleSet
from targets.sqlite import SqliteTarget
from targets.synthetic import SyntheticTarget
from tuners.study import JOURNAL, open_study, storage_of

FAST = {"duration": 0.0, "noise": 0.02}
#: What these tests do not look at, left out of their jobs: the noise check, more than the two
#: pairs of verification, training the service's models.
LEAN: dict[str, Any] = {"noise_runs": 0, "verify_repeats": 2, "train": False}
# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")
MIB = 2**20


def _trials(home: Path, summary: RunSummary) -> list[optuna.trial.FrozenTrial]:
    study = open_study(
        home, summary.study_name, "maximize", optuna.samplers.RandomSampler(), create=False
    )
    return study.get_trials(deepcopy=False)


def _ran(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    return [t.user_attrs["knobflow"]["config"] for t in trials
            if t.user_attrs["knobflow"]["status"] != "blocked"]


@needs("Redis", missing_executables(("redis-server", "redis-benchmark", "redis-cli")),
       "on PATH; Debian: apt-get install redis-server redis-tools")
def test_a_job_with_rules_runs_none_of_the_known_hangs(
    prefect_api: str, home: Path, tmp_path: Path
) -> None:
    # a space full of the hangs of TARGETS.md: I/O threads beyond the cores, maxmemory so small
    # every SET fails
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"knobs": {"io_threads": {"range": [1, 8]},
                                               "maxmemory": {"range": [0, 4 * MIB]}},
                                     "fixed": {"maxmemory_policy": "allkeys-lru"}}))
    # no noise check: three Redis runs of the default that nothing here looks at
    summary = tune("redis", budget=4, tuner="random", seed=3, space_file=str(space),
                   workload={"requests": 100_000}, trial_timeout=20, verify_repeats=2,
                   noise_runs=0, home=str(home))
    cores = os.cpu_count() or 1
    ran = _ran(_trials(home, summary))
    assert len(ran) == 4
    hangs = [c for c in ran if c["io_threads"] > cores or 0 < c["maxmemory"] < MIB]
    assert hangs == []
    assert summary.n_blocked > 0
    assert set(summary.blocked_by) <= {"io-threads-beyond-cores", "maxmemory-too-small"}
    assert summary.n_failed == 0


def test_blocked_candidates_are_infeasible_for_the_tuner(prefect_api: str, home: Path) -> None:
    rules = home / "mine.yaml"
    rules.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "no-big-x", "kind": "forbid", "when": "x > 0.5", "message": "mine"}]}))
    summary = tune("synthetic", budget=8, tuner="random", seed=4, workload=FAST,
                   rule_files=[str(rules)], **LEAN, home=str(home))
    trials = _trials(home, summary)
    blocked = [t for t in trials if t.user_attrs["knobflow"]["status"] == "blocked"]
    assert blocked and summary.n_blocked == len(blocked)
    mine = [t for t in blocked if "no-big-x" in t.user_attrs["knobflow"]["rules"]]
    assert len(mine) == summary.blocked_by["no-big-x"] > 0
    # told to Optuna the way it marks an infeasible trial: the constraint "rules" above zero
    # (TPE keeps away), pruned with no value: nothing shows a measurement never made
    assert {t.state for t in blocked} == {optuna.trial.TrialState.PRUNED}
    assert all(t.value is None and t.values is None for t in blocked)
    assert all(t.constraints == {"rules": 1.0} for t in blocked)
    assert all(t.user_attrs["blocked_by"] == ", ".join(t.user_attrs["knobflow"]["rules"])
               for t in blocked)
    ran = [t for t in trials if t not in blocked]
    assert all(t.constraints == {} and t.state != optuna.trial.TrialState.PRUNED for t in ran)
    study = optuna.load_study(study_name=summary.study_name, storage=storage_of(home / JOURNAL))
    assert study.metric_names == ["throughput"]
    assert all(t.params["x"] > 0.5 for t in mine)
    assert all(c["x"] <= 0.5 for c in _ran(trials)) and len(_ran(trials)) == 8
    assert summary.best_config["x"] <= 0.5


def test_crashes_teach_rules_that_later_jobs_apply_and_operators_review(
    prefect_api: str, home: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"knobs": {"threads": {"range": [1, 64]},
                                               "x": {"range": [0.0, 1.0]}},
                                     "fixed": {"compress": True, "mode": "alpha"}}))
    first = tune("synthetic", budget=16, tuner="random", seed=7, workload=FAST,
                 space_file=str(space), trial_timeout=2.0, **LEAN, home=str(home))
    assert first.failure_classes.get("crash", 0) >= 1
    assert first.learned_rules
    store = LearnedRules(learned_path(home, "synthetic"), SyntheticTarget.knob_spec())
    docs = store.documents()
    assert [d["id"] for d in docs] == first.learned_rules
    crashed = [t for t in _trials(home, first) if t.user_attrs["knobflow"].get("failure_class")
               == "crash"]
    first_crash = crashed[0]
    doc = docs[0]
    assert doc["status"] == "proposed" and doc["kind"] == "forbid"
    assert doc["provenance"]["failure_class"] == "crash"
    assert doc["provenance"]["trial"] == first_crash.number
    # the rule forbids the config that crashed, and no config that ran well before it
    crash_config = first_crash.user_attrs["knobflow"]["config"]
    good = [t.user_attrs["knobflow"]["config"] for t in _trials(home, first)
            if t.state == optuna.trial.TrialState.COMPLETE and t.number < first_crash.number
            and t.user_attrs["knobflow"]["status"] == "ok"]
    ruleset = RuleSet.for_target(SyntheticTarget, learned=store.rules()[:1])
    assert ruleset.check(crash_config).blocked
    assert good and not any(ruleset.check(c).blocked for c in good)

    # a later job of the service applies them; --no-learned-rules does not
    second = tune("synthetic", budget=10, tuner="random", seed=8, workload=FAST,
                  space_file=str(space), trial_timeout=2.0, **LEAN, home=str(home))
    learned_blocks = {k: v for k, v in second.blocked_by.items() if k.startswith("learned-")}
    assert learned_blocks
    plain = tune("synthetic", budget=6, tuner="random", seed=8, workload=FAST,
                 space_file=str(space), trial_timeout=2.0, learn_rules=False, **LEAN,
                 home=str(home))
    assert not any(k.startswith("learned-") for k in plain.blocked_by)
    assert len(store.documents()) == len(docs) + len(second.learned_rules)

    # operators list, accept and drop them
    rule_id = doc["id"]
    listed = invoke_cli(["rules", "list", "synthetic", "--home", str(home)])
    assert listed.returncode == 0, listed.stderr
    assert rule_id in listed.stdout and "proposed" in listed.stdout
    accepted = invoke_cli(["rules", "accept", "synthetic", rule_id, "--home", str(home)])
    assert accepted.returncode == 0, accepted.stderr
    assert store.documents()[0]["status"] == "accepted"
    dropped = invoke_cli(["rules", "drop", "synthetic", rule_id, "--home", str(home)])
    assert dropped.returncode == 0, dropped.stderr
    assert store.documents()[0]["status"] == "dropped"
    assert rule_id not in {r.id for r in store.rules()}
    unknown = invoke_cli(["rules", "drop", "synthetic", "learned-nope", "--home", str(home)])
    assert unknown.returncode == 2
    assert "no learned rule 'learned-nope'" in unknown.stderr and rule_id in unknown.stderr


def test_validate_exit_codes(home: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"mode": "gamma", "threads": 4}))
    bad = tmp_path / "refused.yaml"
    bad.write_text(yaml.safe_dump({"mode": "gamma", "threads": 1}))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"mode": "gamma", "treads": 1}))
    passed = invoke_cli(["validate", "synthetic", str(good), "--home", str(home)])
    assert passed.returncode == 0, passed.stderr
    assert "passes" in passed.stdout
    blocked = invoke_cli(["validate", "synthetic", str(bad), "--home", str(home)])
    assert blocked.returncode == 3, blocked.stderr
    assert "BLOCKED" in blocked.stdout and "gamma-needs-threads" in blocked.stdout
    assert "threads=1" in blocked.stdout
    wrong = invoke_cli(["validate", "synthetic", str(unknown), "--home", str(home)])
    assert wrong.returncode == 2
    assert "treads" in wrong.stderr and "threads" in wrong.stderr
    missing = invoke_cli(["validate", "synthetic", str(tmp_path / "nope.yaml"), "--home",
                          str(home)])
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_validate_applies_policies_and_learned_rules(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "best.yaml"
    config.write_text(yaml.safe_dump({"journal_mode": "off", "synchronous": "off"}))
    assert invoke_cli(["validate", "sqlite", str(config), "--home", str(home)]).returncode == 0
    durable = invoke_cli(["validate", "sqlite", str(config), "--policy", "durability",
                       "--home", str(home)])
    assert durable.returncode == 3 and "durable-journal" in durable.stdout
    store = LearnedRules(learned_path(home, "sqlite"), SqliteTarget.knob_spec())
    rule = store.add("journal_mode == 'off'", rules=RuleSet.for_target(SqliteTarget),
                     study="s", trial=3, failure_class="crash", message="boom")
    assert rule.id == "learned-1"
    learned = invoke_cli(["validate", "sqlite", str(config), "--home", str(home)])
    assert learned.returncode == 3 and "learned-1" in learned.stdout


def test_rules_check_lints_a_file(tmp_path: Path) -> None:
    # a long path: the verdict is one line with the path whole, past the console's 80 columns
    # (CI once cut it after "ok.yaml: 2", where its temporary folder's name made it 80 wide)
    good = tmp_path / ("a-folder-with-a-long-name-" * 3) / "ok.yaml"
    good.parent.mkdir()
    good.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "a", "kind": "constraint", "expr": "threads <= machine.cores * 8"},
        {"id": "b", "kind": "trigger", "when": "after.throughput < 0.9 * before.throughput",
         "action": "rollback"}]}))
    ok = invoke_cli(["rules", "check", str(good)])
    assert ok.returncode == 0, ok.stderr
    assert (f"{good}: 2 rules for target 'synthetic' are valid (1 constraint, 0 forbid, "
            "1 trigger)") in ok.stdout.splitlines(), ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: synthetic\nrules:\n  - id: a\n    kind: forbid\n    when: treads > 2\n")
    failed = invoke_cli(["rules", "check", str(bad)])
    assert failed.returncode == 2
    assert "bad.yaml:5:11: rule 'a'" in failed.stderr and "threads" in failed.stderr


def test_a_space_the_rules_block_entirely_is_refused_before_the_job(
    home: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"knobs": {"journal_mode": {"values": ["off", "memory"]}}}))
    Job.create(JobSpec.of(target="sqlite", space_file=str(space)), home)  # fine without policy
    with pytest.raises(RuleError, match="every config of the search space fails the rules "
                                        r"\(e.g. rule 'durable-journal'"):
        Job.create(JobSpec.of(target="sqlite", space_file=str(space), policies=["durability"]),
                   home)
