"""The contract every sampler of ``TUNERS`` keeps: valid params for every knob type, the same
suggestions for the same seed, no breakdown on a history of only failed or only blocked trials,
and a study resumed from its journal by a new sampler."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from targets.spec import parse_spec
from tuners.samplers import TUNERS, make_sampler
from tuners.space import SearchSpace
from tuners.trials import blocked_record, blocked_trial, is_blocked

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: one knob of each kind a spec can hold
SPEC = parse_spec({
    "target": "contract",
    "knobs": {
        "ratio": {"type": "float", "range": [0.0, 1.0], "default": 0.5},
        "size_kb": {"type": "int", "range": [16, 65536], "default": 256, "log": True},
        "threads": {"type": "int", "range": [1, 64], "default": 2},
        "scale": {"type": "float", "range": [0.001, 1000.0], "default": 1.0, "log": True},
        "mode": {"type": "categorical", "values": ["alpha", "beta", "gamma"],
                 "default": "alpha"},
        "compress": {"type": "bool", "default": False},
    },
}, "contract.yaml")
SPACE = SearchSpace.full(SPEC)
#: past the surrogate's 10 startup draws, so its model proposes too
TRIALS = 16


def _objective(params: dict[str, Any]) -> float:
    """A cheap surface with an interaction (the best ``scale`` moves with ``ratio``)."""
    value = (params["ratio"] - 0.3) ** 2 + (math.log10(params["scale"]) - 2 * params["ratio"]) ** 2
    value += abs(math.log2(params["size_kb"]) - 10) / 10 + abs(params["threads"] - 8) / 64
    value += {"alpha": 0.0, "beta": 0.2, "gamma": 0.4}[params["mode"]]
    return value + (0.1 if params["compress"] else 0.0)


def _run(study: optuna.Study, n: int, tell: str = "value") -> list[dict[str, Any]]:
    """Ask ``n`` candidates of the space, tell each as a value, a failure or a blocked one."""
    dists = SPACE.distributions()
    asked = []
    for _ in range(n):
        trial = study.ask(dists)
        asked.append(dict(trial.params))
        if tell == "value":
            study.tell(trial, _objective(trial.params))
        elif tell == "fail":
            study.tell(trial, state=TrialState.FAIL)
        else:
            record = blocked_record(SPACE.config(trial.params), ["no-go"], "blocked by no-go")
            blocked_trial(study, trial, record)
    return asked


def _assert_valid(params: dict[str, Any]) -> None:
    assert sorted(params) == sorted(SPACE.names)
    for knob in SPACE.tuned:
        value = params[knob.name]
        assert knob.problem_with(value) is None, (knob.name, value)
        expected = {"int": int, "float": float, "bool": bool}.get(knob.type, str)
        assert type(value) is expected, (knob.name, value)


@pytest.mark.parametrize("tuner", TUNERS)
def test_params_are_valid_for_every_knob_type(tuner: str) -> None:
    study = optuna.create_study(direction="minimize", sampler=make_sampler(tuner, 1))
    for params in _run(study, TRIALS):
        _assert_valid(params)
    assert len({tuple(sorted(p.items())) for p in (t.params for t in study.trials)}) > TRIALS // 2


@pytest.mark.parametrize("tuner", TUNERS)
def test_the_same_seed_gives_the_same_suggestions(tuner: str) -> None:
    runs = [_run(optuna.create_study(sampler=make_sampler(tuner, seed)), TRIALS)
            for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("tuner", TUNERS)
@pytest.mark.parametrize("tell", ["fail", "blocked"])
def test_a_history_of_only_failed_or_blocked_trials(tuner: str, tell: str) -> None:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(tuner, 3))
    for params in _run(study, TRIALS, tell=tell):
        _assert_valid(params)
    if tell == "blocked":
        assert all(is_blocked(t) and t.state == TrialState.PRUNED for t in study.trials)
    # and it still finds its way once something runs
    for params in _run(study, 3):
        _assert_valid(params)
    assert study.best_trial.state == TrialState.COMPLETE


@pytest.mark.parametrize("tuner", TUNERS)
def test_a_study_resumes_from_its_journal_with_a_new_sampler(tuner: str, tmp_path: Path) -> None:
    path = str(tmp_path / "studies.journal")
    first = optuna.create_study(study_name="job", direction="minimize",
                                storage=JournalStorage(JournalFileBackend(path)),
                                sampler=make_sampler(tuner, 5))
    _run(first, TRIALS)
    before = first.best_value
    # another process: a new storage object on the same file, a new sampler (as --resume makes)
    again = optuna.load_study(study_name="job", storage=JournalStorage(JournalFileBackend(path)),
                              sampler=make_sampler(tuner, 5 + TRIALS))
    assert len(again.trials) == TRIALS
    for params in _run(again, 6):
        _assert_valid(params)
    reread = optuna.load_study(study_name="job", storage=JournalStorage(JournalFileBackend(path)))
    assert [t.number for t in reread.trials] == list(range(TRIALS + 6))
    assert all(t.state == TrialState.COMPLETE for t in reread.trials)
    assert reread.best_value <= before
