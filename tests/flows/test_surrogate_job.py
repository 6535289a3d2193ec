"""A ``--tuner surrogate`` job asks the rules before it proposes: the job's rule set reaches
the sampler (``accept``), so no candidate is blocked even where the rules forbid the optimum."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from flows.tune import tune
from tuners.study import JOURNAL, storage_of

pytestmark = pytest.mark.usefixtures("mlflow_store")


def test_a_surrogate_job_proposes_nothing_the_rules_block(prefect_api: str, home: Path) -> None:
    space = home / "space.yaml"  # mode beta hangs until the trial timeout: left out, for time
    space.write_text(yaml.safe_dump({"knobs": {"x": {}, "y": {}, "threads": {}, "buffer_kb": {},
                                               "compress": {}},
                                     "fixed": {"mode": "alpha"}}))
    rules = home / "mine.yaml"
    # the synthetic optimum is at x = 0.25 (shift 0): the model (from the 11th trial on, after
    # the default and Sobol draws) is drawn into the forbidden part
    rules.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "no-small-x", "kind": "forbid", "when": "x < 0.4", "message": "mine"}]}))
    summary = tune("synthetic", budget=12, tuner="surrogate", seed=2,
                   workload={"duration": 0.0, "noise": 0.02}, rule_files=[str(rules)],
                   space_file=str(space),
                   noise_runs=0, verify_repeats=2, train=False, home=str(home))
    study = optuna.load_study(study_name=summary.study_name, storage=storage_of(home / JOURNAL))
    assert summary.n_blocked == 0 and not summary.blocked_by, summary.blocked_by
    assert len(study.trials) >= 12 and all(t.params["x"] >= 0.4 for t in study.trials)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert summary.best_config["x"] >= 0.4
