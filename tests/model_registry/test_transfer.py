"""Transfer: the configs a new instance starts from come from the champion and the siblings, are
inside its search space, and are never ones the rules block (a real champion, real rules)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import yaml

from model_registry import transfer
from model_registry.registry import load_champion
from model_registry.transfer import plan_transfer
from rules.review import sample_space
from rules.ruleset import RuleSet
from targets.synthetic import SyntheticTarget
from tests.model_registry.test_registry import OBJECTIVE, SERVICE, train
from tests.synthetic_rows import trial_table
from tuners.space import SearchSpace, parse_space

SPEC = SyntheticTarget.knob_spec()
LIMITS = SyntheticTarget.workload_limits


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    train(trial_table(150, seed=11), uri)
    found = load_champion(uri, SERVICE, OBJECTIVE)
    assert found is not None
    return found


def _rules(tmp_path: Path, *whens: str) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": f"r{i}", "kind": "forbid", "when": w} for i, w in enumerate(whens)]}))
    return RuleSet.for_target(SyntheticTarget, files=[str(path)])


def _best_configs(table: pd.DataFrame, n: int) -> list[dict]:
    best = table.sort_values("value", ascending=False).head(n)
    return [{k.removeprefix("knob."): v for k, v in row.items() if k.startswith("knob.")}
            for row in best.to_dict(orient="records")]


def test_transfer_queues_the_champions_and_the_siblings_best(champion, tmp_path: Path) -> None:
    siblings = trial_table(60, seed=12, instance="kv-1")
    plan = plan_transfer(space=SearchSpace.full(SPEC), rules=_rules(tmp_path, "threads > 60"),
                         siblings=siblings, workload_fp={"shift": 0.0}, limits=LIMITS,
                         direction="maximize", champion=champion, seed=1)
    sources = [s.source for s in plan.seeds]
    assert sources.count("model") == 3 and sources.count("sibling") >= 1
    assert plan.from_instances == ["kv-1"]
    assert plan.model_name == champion.name and plan.model_version == str(champion.version)
    # the model's picks are what it predicts best among many candidates: better than the median
    # sibling measurement on the true surface
    for seed in plan.seeds:
        if seed.source == "model":
            true = SyntheticTarget.true_value(SearchSpace.full(SPEC).config(seed.params),
                                              {"shift": 0.0})
            assert true > siblings["value"].median()
    # the siblings' best measured config comes first among theirs
    sibling_seeds = [s for s in plan.seeds if s.source == "sibling"]
    assert sibling_seeds[0].measured == pytest.approx(siblings["value"].max())


@pytest.mark.parametrize("seed", range(4))
def test_transfer_never_queues_a_config_the_rules_block(champion, tmp_path: Path,
                                                         seed: int) -> None:
    siblings = trial_table(60, seed=20 + seed, instance="kv-1")
    best = _best_configs(siblings, 3)
    # forbid the region the siblings' best configs are in, and half of the space besides
    rules = _rules(tmp_path, f"x >= {min(c['x'] for c in best) - 0.01}",
                   "mode == 'gamma'", f"threads >= {10 + 8 * seed}")
    space = SearchSpace.full(SPEC)
    plan = plan_transfer(space=space, rules=rules, siblings=siblings,
                         workload_fp={"shift": 0.3}, limits=LIMITS, direction="maximize",
                         champion=champion, seed=seed)
    assert plan.seeds, plan.reason
    assert plan.n_blocked > 0
    for queued in plan.seeds:
        assert not rules.check(space.config(queued.params)).blocked, queued
    assert not any(s.params == space.project(c) for s in plan.seeds for c in best)


def test_measured_configs_come_first_and_the_model_searches_near_them(champion,
                                                                      tmp_path: Path) -> None:
    """The siblings' best measurement is the first config queued, the model's picks follow; the
    candidates drawn near the siblings' best configs are whole configs inside the space."""
    siblings = trial_table(60, seed=12, instance="kv-1")
    space = SearchSpace.full(SPEC)
    plan = plan_transfer(space=space, rules=_rules(tmp_path, "x > 2"), siblings=siblings,
                         workload_fp={"shift": 0.0}, limits=LIMITS, direction="maximize",
                         champion=champion, seed=3)
    sources = [s.source for s in plan.seeds]
    assert sources[0] == "sibling" and plan.seeds[0].measured == siblings["value"].max()
    assert sources == sorted(sources, key=lambda x: x != "sibling")  # siblings, then the model
    near = transfer._near(space, transfer._centres(siblings, space, True), 400, seed=0)
    assert len(near) == 400 and set(near.columns) == set(space.config({}))
    for knob in space.tuned:
        if knob.is_numeric:
            assert near[knob.name].between(knob.low, knob.high).all()
        else:
            assert set(near[knob.name]) <= set(knob.choices)


def test_everything_blocked_queues_nothing_and_says_why(champion, tmp_path: Path) -> None:
    plan = plan_transfer(space=SearchSpace.full(SPEC), rules=_rules(tmp_path, "x >= 0"),
                         siblings=trial_table(20, seed=3), workload_fp={"shift": 0.0},
                         limits=LIMITS, direction="maximize", champion=champion)
    assert plan.seeds == [] and "blocked" in plan.reason


def test_no_sibling_and_no_champion_is_a_reason_not_an_error(tmp_path: Path) -> None:
    plan = plan_transfer(space=SearchSpace.full(SPEC), rules=_rules(tmp_path, "x > 2"),
                         siblings=trial_table(0), workload_fp={"shift": 0.0}, limits=LIMITS,
                         direction="maximize")
    assert plan.seeds == [] and "no sibling" in plan.reason


def test_a_service_without_a_champion_transfers_its_siblings_measured_configs(
        tmp_path: Path) -> None:
    """A fresh service whose model was refused (too few held-out trials) has no champion: a new
    instance still starts from the siblings' best measured configs, and no model is named."""
    siblings = trial_table(14, seed=5, instance="kv-1")
    plan = plan_transfer(space=SearchSpace.full(SPEC), rules=_rules(tmp_path, "x > 2"),
                         siblings=siblings, workload_fp={"shift": 0.0}, limits=LIMITS,
                         direction="maximize", champion=None)
    assert plan.seeds and {s.source for s in plan.seeds} == {"sibling"}
    assert plan.model_name is None and plan.from_instances == ["kv-1"] and not plan.reason
    assert plan.configs[0] == _best_configs(siblings, 1)[0]


def test_sibling_configs_are_projected_into_a_narrower_space() -> None:
    space = parse_space({"knobs": {"x": {"range": [0.2, 0.4]},
                                   "mode": {"values": ["alpha", "beta"]}}}, SPEC, "space.yaml")
    assert space.project({"x": 0.9, "mode": "beta", "threads": 7}) == {"x": 0.4, "mode": "beta"}
    assert space.project({"x": 0.3, "mode": "gamma"}) is None  # a category it does not allow
    assert space.project({"x": float("nan"), "mode": "alpha"}) is None
    assert space.project({"mode": "alpha"}) is None


def test_the_champion_predicts_within_the_range_it_was_trained_on(champion) -> None:
    """Boosted trees on a log target overshoot on configs never seen together; the champion's
    predictions stay between the smallest and largest target it learned from."""
    from model_registry.features import feature_frame

    space = SearchSpace.full(SPEC)
    low, high = champion.target_range
    assert 0 < low < high < float("inf")
    frame = feature_frame(sample_space(space, 4000, seed=5), SPEC, {"shift": 0.0})
    raw = champion.model.predict(frame[champion.features])
    clipped = champion.predict(frame)
    assert clipped.min() >= low and clipped.max() <= high
    assert ((raw > high) | (raw < low)).any()  # the raw model does leave the range here
    inside = (raw >= low) & (raw <= high)
    assert (clipped[inside] == raw[inside]).all()


def test_equal_predictions_pick_the_candidates_nearest_the_siblings_best(champion,
                                                                        tmp_path: Path) -> None:
    """When the champion predicts the same for many candidates (all at the top of its range),
    the ones nearest the siblings' best measured configs are queued, not arbitrary ones."""
    siblings = trial_table(60, seed=12, instance="kv-1")
    space = SearchSpace.full(SPEC)
    flat = dataclasses.replace(champion, tags={**champion.tags, "target_min": "0",
                                               "target_max": "1e-9"})
    plan = plan_transfer(space=space, rules=_rules(tmp_path, "threads > 60"), siblings=siblings,
                         workload_fp={"shift": 0.0}, limits=LIMITS, direction="maximize",
                         champion=flat, seed=1)
    picks = [s.params for s in plan.seeds if s.source == "model"]
    centres = transfer._centres(siblings, space, True)
    assert len(picks) == 3 and centres
    near = transfer._distance_to(pd.DataFrame([space.config(p) for p in picks]), centres, space)
    anywhere = transfer._distance_to(sample_space(space, 500, seed=2), centres, space)
    assert near.max() < 0.1 < float(pd.Series(anywhere).median())
