"""A job's results reach the tuner on time, and a job's fixed cost is paid only where it buys
something: on an instant target every result is told at most as many candidates late as there
are instances (recorded per trial and in the summary); the first job of a new service spends
nothing in transfer (no model loaded, no store made for the question); the summary reports the
whole command's time with its fixed parts apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import yaml

from flows import timing
from flows.tune import tune
from model_registry.transfer import NO_SIBLING
from tasks import explore
from tuners.study import open_study
from tuners.trials import ATTR

INSTANT = {"duration": 0.0, "noise": 0.02}


def _lags(home: Path, study_name: str) -> list[int]:
    study = open_study(home, study_name, "maximize", optuna.samplers.RandomSampler(),
                       create=False)
    return [t.user_attrs[ATTR]["tell_lag"] for t in study.trials
            if t.user_attrs.get(ATTR, {}).get("tell_lag") is not None]


def test_results_are_told_at_most_one_candidate_late_per_instance(prefect_api: str,
                                                                   home: Path) -> None:
    """TPE (it takes pending trials) on two instances of an instant target: cleaning overlaps
    the next run, yet no result is told more than 2 candidates late (it was 11-31 before). The
    job is the first of its service: transfer answers "no sibling" without loading a model."""
    summary = tune("synthetic", budget=10, seed=3, parallel=2, workload=INSTANT, train=False,
                   noise_runs=0, verify_repeats=2, home=str(home))
    lags = _lags(home, summary.study_name)
    assert len(lags) == summary.n_trials == 10
    assert max(lags) <= 2, lags
    assert summary.tell_lag_max == max(lags) and summary.tell_lag_median is not None
    plan = json.loads((home / "jobs" / summary.study_name / "transfer.json").read_text())
    assert plan["reason"] == NO_SIBLING and plan["model_loaded"] is False
    fixed = summary.fixed_s
    assert set(timing.FIXED) < set(fixed) and fixed["training"] == 0  # --no-train
    assert abs(fixed["total"] + summary.trials_s - summary.duration_s) < 0.05


def test_a_sampler_that_cannot_take_pending_trials_is_told_before_every_ask(
        prefect_api: str, home: Path) -> None:
    """CMA-ES on one instance hears of each result before it is asked again: lag 0."""
    summary = tune("synthetic", budget=6, seed=3, tuner="cmaes", workload=INSTANT,
                   train=False, transfer=False, noise_runs=0, verify_repeats=2, home=str(home))
    assert _lags(home, summary.study_name) == [0] * 6
    assert summary.tell_lag_max == 0


def test_a_blocked_candidate_does_not_hold_up_the_result_before_it(
        prefect_api: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipelined trial is cleaned once the next trial's process starts; when the next
    candidate is blocked by a rule no process starts, and the ask after it waits for that
    result: it is cleaned then, not when the cleaning's bound (made 60 s here) runs out."""
    monkeypatch.setattr(explore, "CLEAN_WAIT_S", 60.0)
    rules = home / "mine.yaml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "no-big-x", "kind": "forbid", "when": "x > 0.5", "message": "mine"}]}))
    started = time.monotonic()
    summary = tune("synthetic", budget=8, seed=4, workload=INSTANT, rule_files=[str(rules)],
                   train=False, transfer=False, noise_runs=0, verify_repeats=2, home=str(home))
    assert summary.n_blocked >= 2 and summary.n_trials == 8
    assert time.monotonic() - started < 50, summary.trials_s
    assert summary.tell_lag_max <= 1


def test_a_commands_time_counts_from_its_start_and_its_parts_add_up() -> None:
    """The command's start-up and imports, its server start and the flow's parts make up the
    duration; a second job in the same process does not inherit the first command's parts."""
    timing.command_started(time.time() - 2.0)  # the process started 2 s ago
    timing.command_phase("imports")  # more imports until now
    time.sleep(0.1)  # the server starting
    timing.command_phase("server", 0.1)
    clock = timing.JobClock()
    with clock.phase("trials"):
        time.sleep(0.05)
    duration, fixed, trials = clock.split()
    assert duration >= 2.15 and 1.9 <= fixed["imports"] < 2.1 and fixed["server"] == 0.1
    assert trials >= 0.05
    assert abs(fixed["total"] + trials - duration) < 0.01
    assert abs(sum(v for k, v in fixed.items() if k != "total") - fixed["total"]) < 0.01
    again = timing.JobClock()
    assert again.split()[1]["imports"] == 0 and again.split()[0] < 1.0
