"""Recommend: the config a live instance should run, from a real champion (a real MLflow store,
real LightGBM) and the siblings' measured trials, checked by real rules; the synthetic target's
known surface says whether the pick is really better."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from model_registry.features import feature_frame
from model_registry.recommend import Recommendation, recommend, recommend_task
from model_registry.recommendation import show_value
from model_registry.registry import load_champion
from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget
from tests.model_registry.test_registry import OBJECTIVE, SERVICE, train
from tests.synthetic_rows import trial_table
from tuners.space import SearchSpace
from tuners.trials import as_table

SPEC = SyntheticTarget.knob_spec()
SPACE = SearchSpace.full(SPEC)
CURRENT = {**SPEC.defaults(), "threads": 4}  # the live instance: defaults, a few more threads
#: a sibling that served another workload and measured only poor configs: the champion's pick wins
_FAR = trial_table(60, seed=12, shift=0.6, instance="kv-2", study="s2")
SIBLINGS = _FAR[_FAR["value"] < _FAR["value"].quantile(0.1)].reset_index(drop=True)
#: a sibling that served the same workload: its best measured config beats a close prediction
CLOSE_SIBLING = trial_table(60, seed=12, instance="kv-1")


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    found = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    train(trial_table(150, seed=11), found)
    return found


@pytest.fixture(scope="module")
def best(uri: str) -> Recommendation:
    """The recommendation for the live instance under the shipped rules, every knob free."""
    return run(uri)


@pytest.fixture
def empty_store(tmp_path: Path, mlflow_template: Path) -> str:
    """A store without a model: a copy of the one made once per session (tests/conftest.py)."""
    shutil.copyfile(mlflow_template, tmp_path / "empty.db")
    return f"sqlite:///{tmp_path / 'empty.db'}"


def rules_with(tmp_path: Path, *rules: dict) -> tuple[RuleSet, list[str]]:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"target": "synthetic", "rules": list(rules)}))
    return RuleSet.for_target(SyntheticTarget, files=[str(path)]), [str(path)]


def run(uri: str, **kw) -> Recommendation:
    args = dict(target_cls=SyntheticTarget, service=SERVICE, objective=OBJECTIVE,
                current=CURRENT, fingerprint={"shift": 0.0}, table=SIBLINGS, tracking_uri=uri,
                space=SPACE, rules=RuleSet.for_target(SyntheticTarget), instance="kv-live")
    return recommend(**{**args, **kw})


def true(config: dict) -> float:
    return SyntheticTarget.true_value(config, {"shift": 0.0})


def predict(uri: str, configs: list[dict]) -> list[float]:
    champion = load_champion(uri, SERVICE, OBJECTIVE)
    assert champion is not None
    return list(champion.predict(feature_frame(pd.DataFrame(configs), SPEC, {"shift": 0.0})))


def test_the_pick_beats_the_current_config_and_says_what_it_changes(best: Recommendation,
                                                                    uri: str) -> None:
    rec = best
    assert rec.decision == "change" and rec.source in ("model", "sibling"), rec.reason
    assert rec.predicted > rec.predicted_current and rec.predicted_gain > 1.0
    assert rec.predicted_gain == pytest.approx(rec.predicted / rec.predicted_current)
    assert [rec.predicted_current, rec.predicted] == pytest.approx(predict(uri, [CURRENT,
                                                                               rec.config]))
    assert rec.changes == {k: {"from": CURRENT[k], "to": rec.config[k]}
                           for k in SPEC.names if rec.config[k] != CURRENT[k]}
    assert rec.changes and set(rec.config) == set(SPEC.names)
    for name, value in rec.config.items():
        assert SPEC[name].problem_with(value) is None, (name, value)
    assert true(rec.config) > 1.5 * true(CURRENT)  # better on the system's true surface too
    p = rec.provenance
    assert (p["model_name"], p["model_version"]) == ("knobflow-orders-kv-throughput", "1")
    assert p["model_run_id"] and p["instances"] == ["kv-1", "kv-2"] and p["trials"] == []
    # the champion ranks 4000 configs; the 6 measured sibling configs and the current config
    assert len(SIBLINGS) == 6 and p["n_candidates"] == 4000 + 6 + 1
    assert rec.filled_features == {} and rec.deferred_changes == {} and rec.warnings == []
    assert json.loads(json.dumps(rec.to_dict())) == rec.to_dict()
    lines = rec.lines()
    allowed = p["n_candidates"] - p["n_blocked"]
    assert rec.source == "model" and rec.reason == (
        f"the best the champion predicts of the {allowed} candidates the rules allow")
    assert lines[0] == (f"kv-live ({SERVICE}): change {len(rec.changes)} knob(s) (model): "
                        + rec.reason)
    assert lines[1:1 + len(rec.changes)] == [
        f"  {k}: {show_value(c['from'])} -> {show_value(c['to'])}" for k, c in rec.changes.items()]
    assert f"({rec.predicted_gain:.3f}x, maximize)" in lines[1 + len(rec.changes)]
    assert lines[-1].startswith("from model knobflow-orders-kv-throughput v1; trials ")


def test_a_measured_sibling_config_beats_a_close_prediction(
        best: Recommendation, uri: str) -> None:
    """The champion's best predictions sit at the top of what it was trained on (clipped): a
    config that ran, predicted within MEASURED_BAND of them, is picked."""
    rec = run(uri, table=CLOSE_SIBLING)
    assert rec.decision == "change" and rec.source == "sibling"
    (trial,) = rec.provenance["trials"]
    row = CLOSE_SIBLING[CLOSE_SIBLING["trial"] == trial["trial"]].iloc[0]
    assert rec.config == {k: SPEC[k].coerce(row[f"knob.{k}"]) for k in SPEC.names}
    assert trial == {"instance": "kv-1", "study": "s1", "trial": row["trial"],
                     "value": row["value"]}
    assert rec.reason.startswith(
        f"measured {show_value(row['value'])} on sibling kv-1 (workload distance 0.0): a config "
        "that ran beats a prediction, and the champion predicts it within 20% of its best "
        "unmeasured pick (")
    assert rec.predicted > rec.predicted_current
    assert true(rec.config) > 1.5 * true(CURRENT)


def test_a_rule_blocking_the_best_candidate_makes_the_next_one_the_pick(
        best: Recommendation, uri: str, tmp_path: Path) -> None:
    x, threads = best.config["x"], best.config["threads"]
    rules, _ = rules_with(tmp_path, {
        "id": "not-that-one", "kind": "forbid", "message": "a bad config (test)",
        "when": f"x > {x - 1e-9!r} and x < {x + 1e-9!r} and threads == {threads}"})
    assert rules.check(best.config).blocked
    rec = run(uri, rules=rules)
    assert rec.decision == "change" and rec.config != best.config
    assert not rules.check(rec.config).blocked
    assert rec.predicted <= best.predicted and rec.predicted > rec.predicted_current
    # exactly one more candidate blocked than under the shipped rules: the best one
    assert rec.provenance["n_blocked"] == best.provenance["n_blocked"] + 1
    assert rec.provenance["n_candidates"] == best.provenance["n_candidates"]


def test_max_knobs_keeps_the_change_the_champion_predicts_best(best: Recommendation,
                                                               uri: str) -> None:
    assert len(best.changes) > 1
    rec = run(uri, max_knobs=1)
    assert rec.decision == "change" and len(rec.changes) == 1
    (knob,) = rec.changes
    assert rec.changes[knob] == best.changes[knob]
    assert rec.deferred_changes == {k: c for k, c in best.changes.items() if k != knob}
    singles = {k: predict(uri, [{**CURRENT, k: c["to"]}])[0] for k, c in best.changes.items()}
    assert singles[knob] == max(singles.values()) == pytest.approx(rec.predicted)
    assert rec.predicted > rec.predicted_current
    assert "at most 1 knob(s) per actuation" in rec.reason
    assert any(line.startswith("  deferred (max knobs per actuation): ") for line in rec.lines())


def test_a_current_config_already_at_the_best_is_kept(best: Recommendation, uri: str) -> None:
    rec = run(uri, current=best.config)
    assert rec.decision == "keep" and rec.source == "current" and rec.changes == {}
    assert rec.config == best.config
    assert rec.predicted == rec.predicted_current and rec.predicted_gain == 1.0
    assert rec.lines()[0].startswith(
        f"kv-live ({SERVICE}): keep the current config: the current config is the best the "
        "champion predicts of the ")


def test_no_champion_and_no_sibling_is_nothing_to_recommend(empty_store: str) -> None:
    rec = run(empty_store, table=as_table([]))
    assert rec.decision == "nothing" and rec.changes == {} and rec.config == CURRENT
    assert rec.predicted_gain is None and rec.provenance["model_name"] is None
    assert rec.lines()[0] == (
        f"kv-live ({SERVICE}): nothing to recommend: no champion model for {SERVICE}'s "
        f"throughput and no instance of {SERVICE} has measured trials of it; tune a test "
        "instance first")


def test_without_a_champion_the_closest_siblings_best_measured_config_is_the_pick(
        empty_store: str) -> None:
    near, far = trial_table(30, seed=5, instance="kv-1"), trial_table(
        30, seed=6, shift=0.9, instance="kv-2", study="s2")
    far["value"] *= 3  # the far workload measures higher: distance comes first
    rec = run(empty_store, table=pd.concat([far, near]),
              fingerprint={"shift": 0.05})
    top = near.loc[near["value"].idxmax()]
    assert rec.decision == "change" and rec.source == "sibling"
    assert rec.config == {k: SPEC[k].coerce(top[f"knob.{k}"]) for k in SPEC.names}
    assert rec.predicted is None and rec.predicted_gain is None
    assert rec.provenance["trials"] == [{"instance": "kv-1", "study": "s1",
                                         "trial": top["trial"], "value": top["value"]}]
    assert rec.provenance["instances"] == ["kv-1"]
    assert f"predicted {OBJECTIVE}: unknown (no champion model)" in rec.lines()
    assert rec.reason.startswith(f"no champion model for {SERVICE}'s throughput: the best "
                                 "config measured ")


def test_unobserved_features_come_from_the_champion_and_policies_given_up_are_warned(
        uri: str, tmp_path: Path) -> None:
    rules, files = rules_with(tmp_path, {
        "id": "always-durable", "kind": "forbid", "when": "x <= 1",
        "policy": "durability", "message": "every config gives this up (test)"}, {
        "id": "few-threads", "kind": "forbid", "when": "threads < 1000", "severity": "warn",
        "message": "a warning every config gets (test)"})
    rec = run(uri, fingerprint={}, rules=rules, rule_files=files)
    assert rec.filled_features == {"shift": 0.0}
    assert rec.decision == "change"
    warnings = rec.warnings
    assert warnings[0] == (f"threads={rec.config['threads']} (rule few-threads: a warning every "
                           "config gets (test))")
    assert warnings[1].startswith("the recommended config gives up durability: x=")
    assert warnings[1].endswith("(rule always-durable: every config gives this up (test)). "
                                "Add --policy durability to keep such configs out")
    assert any(line.startswith("workload features not observed, taken from the champion's "
                               "training workload: shift=0") for line in rec.lines())


def test_trials_run_under_the_live_instances_own_name_are_candidates(empty_store: str) -> None:
    """A tuning job run as ``kv-live`` on a test copy measured configs for exactly this
    instance: they are not left out as "not a sibling"."""
    own = trial_table(20, seed=8, instance="kv-live", study="tune-kv-live")
    rec = run(empty_store, table=own)
    top = own.loc[own["value"].idxmax()]
    assert rec.source == "sibling" and rec.provenance["instances"] == ["kv-live"]
    assert [t["trial"] for t in rec.provenance["trials"]] == [top["trial"]]


def test_a_current_config_the_rules_block_is_left_and_said(best: Recommendation, uri: str,
                                                           tmp_path: Path) -> None:
    rules, _ = rules_with(tmp_path, {"id": "no-four", "kind": "forbid", "when": "threads == 4",
                                     "message": "four threads is banned (test)"})
    rec = run(uri, rules=rules)
    assert rec.decision == "change" and rec.config["threads"] != 4
    assert rec.warnings == ["the current config is blocked by rule no-four: four threads is "
                            "banned (test) (threads=4)"]
    assert rec.provenance["n_blocked"] > best.provenance["n_blocked"]


def test_bad_input_is_a_clear_error(uri: str) -> None:
    with pytest.raises(ValueError, match=r"^the current config lacks knob\(s\) compress; read "):
        run(uri, current={k: v for k, v in CURRENT.items() if k != "compress"})
    with pytest.raises(ValueError, match=r"^workload feature\(s\) read_ratio are not features "
                                         r"of target 'synthetic' \(known: shift\)"):
        run(uri, fingerprint={"shift": 0.0, "read_ratio": 0.5})
    with pytest.raises(ValueError, match="max_knobs must be at least 1"):
        run(uri, max_knobs=0)


def test_recommend_is_a_prefect_task() -> None:
    assert recommend_task.name == "recommend" and recommend_task.fn is recommend
