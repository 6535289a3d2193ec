"""Important knobs first (``tuners/focus.py``) on a real Optuna study: the focused phase draws
only the top knobs, the others keep the best config's values, and the focus widens once."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from targets.synthetic import SyntheticTarget
from tuners.focus import FOCUS_ATTR, KnobFocus, top_knobs
from tuners.samplers import make_sampler
from tuners.space import SearchSpace
from tuners.trials import ATTR

SPACE = SearchSpace.full(SyntheticTarget.knob_spec())
DEFAULTS = SPACE.config({})
TOP = ("x", "y")


def _run(focus: KnobFocus, n: int, value: Any, seed: int = 0,
         tuner: str = "tpe") -> optuna.Study:
    """``n`` trials asked as the trial manager asks them, told ``value(params)``."""
    study = optuna.create_study(direction="maximize", sampler=make_sampler(tuner, seed))
    study.enqueue_trial(SPACE.default_params())  # the default first, as a job queues it
    for _ in range(n):
        focus.before_ask(study, SPACE)
        trial = study.ask(SPACE.distributions())
        trial.set_user_attr(ATTR, {"status": "ok"})
        study.tell(trial, value(trial.params))
    return study


def _others(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in TOP}


def test_top_knobs_ranks_by_importance_and_ignores_what_is_not_tuned() -> None:
    importance = {"y": 3.0, "x": 5.0, "threads": 1.0, "shift": 99.0}
    assert top_knobs(importance, SPACE, 2) == ["x", "y"]
    assert top_knobs(importance, SPACE, 4) == ["x", "y", "threads", "buffer_kb"]  # ties: order


def test_focused_trials_vary_only_the_top_knobs_then_all_knobs() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    focus = KnobFocus.for_budget(TOP, 16)  # widens at trial 8 unless the best stalls first
    study = _run(focus, 16, lambda p: SyntheticTarget.true_value(
        {**DEFAULTS, **p}, {"shift": 0.0}) + p["x"])  # each trial a new best while focused
    trials = study.trials
    focused = [t for t in trials if FOCUS_ATTR in t.user_attrs]
    assert [t.number for t in focused] == list(range(1, 8))
    for t in focused:
        assert _others(t.params) == _others(DEFAULTS), t.params
    assert len({(t.params["x"], t.params["y"]) for t in focused}) == len(focused)
    assert focus.widened(study) == {"trial": 8, "why": "8 trials started (half the budget)"}
    widened = trials[8:]
    assert any(_others(t.params) != _others(DEFAULTS) for t in widened)
    assert focus.record(study)["widened_at_trial"] == 8


def test_it_widens_early_when_the_best_stalls() -> None:
    focus = KnobFocus.for_budget(TOP, 40)  # half: 20; patience: 10
    assert focus.patience == 10
    study = _run(focus, 14, lambda p: 1.0)  # nothing ever beats the first trial
    assert focus.widened(study) == {"trial": 11,
                                    "why": "no new best in the last 10 finished trials"}


def test_other_knobs_keep_the_best_config_so_far() -> None:
    study = optuna.create_study(direction="maximize")
    better = {**SPACE.default_params(), "threads": 8, "mode": "beta"}
    for params, value in ((SPACE.default_params(), 1.0), (better, 2.0)):
        study.enqueue_trial(params)
        trial = study.ask(SPACE.distributions())
        trial.set_user_attr(ATTR, {"status": "ok"})
        study.tell(trial, value)
    focus = KnobFocus.for_budget(TOP, 20)
    focus.before_ask(study, SPACE)
    trial = study.ask(SPACE.distributions())
    assert _others(trial.params) == _others(better)
    assert trial.user_attrs[FOCUS_ATTR] == "x,y"


@pytest.mark.parametrize("tuner", ["random", "cmaes"])
def test_every_sampler_draws_only_the_top_knobs_while_focused(tuner: str) -> None:
    focus = KnobFocus.for_budget(TOP, 12)
    study = _run(focus, 12, lambda p: SyntheticTarget.true_value(
        {**DEFAULTS, **p}, {"shift": 0.0}), tuner=tuner)
    at = (focus.widened(study) or {})["trial"]
    assert 2 <= at <= 6
    for t in study.trials[1:at]:
        assert _others(t.params) == _others(DEFAULTS), t.params
    assert any(_others(t.params) != _others(DEFAULTS) for t in study.trials[at:])
