"""Studies on disk: every job of a home in one Optuna journal, studies of older homes still read,
blocked candidates stored as infeasible trials with no value, the metric named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tuners.samplers import make_sampler
from tuners.study import JOURNAL, journal_path, name_metric, open_study, storage_of, study_names
from tuners.trials import ATTR, blocked_record, blocked_trial, finished_trials, is_blocked

X = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def _sampler() -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=0)


def test_jobs_of_a_home_share_one_journal(tmp_path: Path) -> None:
    for name in ("svc-a-1", "svc-b-1"):
        study = open_study(tmp_path, name, "maximize", _sampler(), create=True)
        name_metric(study, "throughput")
        study.tell(study.ask(X), 1.0)
    assert [p.name for p in tmp_path.iterdir()] == [JOURNAL]
    # a fresh storage (another process) sees both, named
    other = JournalStorage(JournalFileBackend(str(tmp_path / JOURNAL)))
    assert sorted(optuna.get_all_study_names(other)) == ["svc-a-1", "svc-b-1"]
    assert optuna.load_study(study_name="svc-b-1", storage=other).metric_names == ["throughput"]
    assert study_names(tmp_path) == ["svc-a-1", "svc-b-1"]


def test_a_study_of_an_older_home_is_read_and_resumed_from_its_own_file(tmp_path: Path) -> None:
    legacy = tmp_path / "studies" / "old-job.journal"
    legacy.parent.mkdir()
    old = optuna.create_study(study_name="old-job", direction="maximize",
                              storage=JournalStorage(JournalFileBackend(str(legacy))))
    old.tell(old.ask(X), 2.0)
    new = open_study(tmp_path, "new-job", "maximize", _sampler(), create=True)
    new.tell(new.ask(X), 3.0)

    assert journal_path(tmp_path, "old-job") == legacy
    assert journal_path(tmp_path, "new-job") == tmp_path / JOURNAL
    assert study_names(tmp_path) == ["new-job", "old-job"]
    resumed = open_study(tmp_path, "old-job", "maximize", _sampler(), create=False)
    assert [t.value for t in resumed.trials] == [2.0]
    resumed.tell(resumed.ask(X), 4.0)  # a resumed old job goes on writing to its own file
    reread = optuna.load_study(study_name="old-job",
                               storage=JournalStorage(JournalFileBackend(str(legacy))))
    assert [t.value for t in reread.trials] == [2.0, 4.0]
    assert optuna.get_all_study_names(storage_of(tmp_path / JOURNAL)) == ["new-job"]


def test_a_blocked_candidate_is_an_infeasible_trial_with_no_value(tmp_path: Path) -> None:
    study = open_study(tmp_path, "job", "maximize",
                       optuna.samplers.TPESampler(seed=0, n_startup_trials=2), create=True)
    ran = study.ask(X)
    study.tell(ran, 5.0)
    trial = study.ask(X)
    blocked_trial(study, trial, blocked_record({"x": 0.9}, ["no-big-x", "other"], "mine"))
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.PRUNED and frozen.value is None
    assert frozen.constraints == {"rules": 2.0}
    assert frozen.user_attrs["blocked_by"] == "no-big-x, other"
    assert frozen.user_attrs[ATTR]["status"] == "blocked" and is_blocked(frozen)
    assert [t.number for t in finished_trials(study)] == [ran.number]
    assert study.best_trial.number == ran.number
    study.ask(X)  # TPE samples with an infeasible pruned trial in its history
    # the journal (what optuna-dashboard reads) ends the trial pruned, with no value
    ops = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]
    ends = [op for op in ops if op.get("trial_id") == frozen._trial_id and "state" in op]
    assert [(op["state"], op["values"]) for op in ends] == [(TrialState.PRUNED.value, None)]


def test_cmaes_reads_a_blocked_candidate_as_its_worst_draw_tpe_as_infeasible(
    tmp_path: Path,
) -> None:
    study = open_study(tmp_path, "job", "minimize", make_sampler("cmaes", 0), create=True)
    for value in (3.0, 7.0):
        study.tell(study.ask(X), value)
    trial = study.ask(X)
    blocked_trial(study, trial, blocked_record({"x": 0.5}, ["r"], "m"))
    seen = {t.number: (t.state, t.value) for t in study.sampler._get_trials(study)}
    assert seen == {0: (TrialState.COMPLETE, 3.0), 1: (TrialState.COMPLETE, 7.0),
                    trial.number: (TrialState.COMPLETE, 7.0)}
    assert study.trials[trial.number].value is None  # the stand-in is the sampler's view only

    tpe = open_study(tmp_path, "tpe", "minimize", make_sampler("tpe", 0), create=True)
    tpe.tell(tpe.ask(X), 1.0)
    blocked = tpe.ask(X)
    blocked_trial(tpe, blocked, blocked_record({"x": 0.5}, ["r"], "m"))
    below, above = _split_trials(tpe, tpe.get_trials(states=(TrialState.COMPLETE,
                                                               TrialState.PRUNED)), 1)
    assert [t.number for t in below] == [0] and [t.number for t in above] == [blocked.number]


def test_the_journal_is_synced_when_a_trial_ends_not_at_each_asked_parameter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "journal.log"
    study = optuna.create_study(storage=storage_of(path), study_name="s")
    at_create = len(synced)
    assert at_create >= 1  # the study itself is synced
    trial = study.ask({"a": optuna.distributions.FloatDistribution(0, 1),
                       "b": optuna.distributions.IntDistribution(1, 9),
                       "c": optuna.distributions.CategoricalDistribution(["x", "y"])})
    assert len(synced) == at_create  # an asked trial and its 3 parameters: no sync
    trial.set_user_attr("knobflow", {"status": "ok"})
    assert len(synced) == at_create  # its record: synced with the tell that follows it
    study.tell(trial, 0.5)
    assert len(synced) > at_create  # the finished trial is on disk, its parameters with it
    # what another process reads (a fresh storage replaying the file): the whole trial
    fresh = JournalStorage(JournalFileBackend(str(path)))
    (done,) = optuna.load_study(study_name="s", storage=fresh).trials
    assert done.state == TrialState.COMPLETE
    assert done.params == trial.params and done.value == 0.5
    assert done.user_attrs == {"knobflow": {"status": "ok"}}
