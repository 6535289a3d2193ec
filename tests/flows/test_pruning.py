"""Early stopping (``--pruner``): a target's intermediate reports reach Optuna's pruner while the
trial runs, a clearly bad trial is stopped (its process group killed, the instance left usable),
and the pruned trial is recorded as such: it counts against the budget, is neither a failure nor
a measurement, is never the best, never verified, never learned from."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from rich.console import Console

from flows.progress import print_summary
from flows.tune import tune
from targets.postgres_pgbench import ProgressReader
from tasks.pruning import pruning_saved_s
from tasks.trial_process import TrialProcesses
from tests.conftest import trial_processes
from tuners.study import open_study
from tuners.trials import ATTR, finished_trials, is_blocked, is_pruned_early

#: Runs of 1.2 s in 6 intervals: a pruned trial is stopped after a few of them. The pruner is
#: first asked once the trials before are cleaned and told (~0.1 s each, seconds on a loaded
#: machine): a run must last longer than that to be pruned.
SLOW = {"duration": 1.2, "intervals": 6, "noise": 0.02}
#: A trial timeout far above a run: a loaded machine's slow start is no hang here.
LEAN = {"noise_runs": 0, "verify_repeats": 2, "train": False, "transfer": False,
        "trial_timeout": 30.0}


def test_the_trial_process_is_stopped_at_the_step_the_listener_asks(tmp_path: Path) -> None:
    config = {"x": 0.25, "y": 3.0, "threads": 8, "buffer_kb": 1024, "mode": "alpha",
              "compress": False}
    request = {"target_ref": "targets.synthetic:SyntheticTarget",
               "data_dir": str(tmp_path / "data"), "workload": {**SLOW, "duration": 4.0,
                                                                "intervals": 40},
               "config": config, "seed": 1, "result_path": str(tmp_path / "result.json"),
               "progress_path": str(tmp_path / "progress.jsonl")}
    heard: list[int] = []

    def stop_at_2(step: int, metrics: dict[str, float]) -> bool:
        heard.append(step)
        assert metrics["throughput"] > 0
        return step >= 2

    started = time.monotonic()
    exit_ = TrialProcesses().run(request, tmp_path, timeout_s=20.0, on_progress=stop_at_2)
    assert exit_.pruned_step == 2 and heard == [0, 1, 2]
    assert exit_.result is None and not exit_.timed_out  # stopped, neither a result nor a hang
    assert time.monotonic() - started < 3.0  # long before its 4 s run would end
    assert trial_processes(str(tmp_path)) == []  # its whole group is gone


def test_pgbench_progress_is_read_as_it_is_written(tmp_path: Path) -> None:
    err = tmp_path / "pgbench.err"
    err.write_text("starting vacuum...end.\nprogress: 1.0 s, 100.0 tps, lat 2.0 ms stddev 0.5\n"
                   "progress: 2.0 s, 300.0 tps, lat 4.0 ms std")  # the second line half written
    reader = ProgressReader(err)
    assert reader.read() == [(0, {"tps": 100.0, "latency_avg_ms": 2.0})]
    with open(err, "a") as fh:
        fh.write("dev 0.1\n")
    assert reader.read() == [(1, {"tps": 200.0, "latency_avg_ms": 3.0})]  # means so far
    assert reader.read() == []


@pytest.mark.usefixtures("mlflow_store")
@pytest.mark.parametrize("tuner", ["tpe", "cmaes"])  # told beside the next run, and inline
def test_median_pruner_stops_bad_trials_early_and_records_them_apart(
    prefect_api: str, home: Path, tmp_path: Path, tuner: str
) -> None:
    # no refused, crashing or hanging region: every trial runs; far from the optimum in x and y
    # the synthetic system does ~1 op/s against ~1000 near it: clearly bad configs
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "knobs": {"x": {"range": [0.0, 1.0]}, "y": {"range": [0.1, 1000.0]}},
        "fixed": {"mode": "alpha", "compress": False, "threads": 8},
    }))
    # the first cleaning of a job imports Great Expectations (10-20 s on a loaded machine), and
    # the pruner compares with told trials only: paid here, so this short job can prune
    import great_expectations  # noqa: F401

    summary = tune("synthetic", budget=10, seed=1, workload=SLOW, space_file=str(space),
                   pruner="median", tuner=tuner, **LEAN, home=str(home))
    study = open_study(home, summary.study_name, "maximize", optuna.samplers.RandomSampler(),
                       create=False)
    pruned = [t for t in study.trials if is_pruned_early(t)]
    assert pruned, "no trial was pruned"
    assert summary.n_pruned == len(pruned) and summary.pruned_saved_s > 0
    # they ran: they count against the budget, and are neither failures nor blocked candidates
    assert summary.n_trials == 10 and len(finished_trials(study)) == 10
    assert summary.n_failed == 0, summary.failure_classes
    assert not any(is_blocked(t) for t in pruned)
    assert not summary.learned_rules
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    typical = sorted(t.user_attrs[ATTR]["elapsed_s"] for t in complete)[len(complete) // 2]
    for t in pruned:
        record = t.user_attrs[ATTR]
        assert record["status"] == "pruned" and record["value"] is None
        assert record["elapsed_s"] < typical  # stopped early
        # it was stopped before its last interval, below what the others reached there
        assert len(t.intermediate_values) < SLOW["intervals"]
        assert record["pruned_step"] == max(t.intermediate_values)
    # never the best, never verified, never in the table models learn from
    assert summary.best_trial not in {t.number for t in pruned}
    assert summary.best_value is not None and summary.verdict == "better than the default"
    table = pd.read_parquet(summary.trial_table)
    assert not set(table["trial"].astype(int)) & {t.number for t in pruned}
    # no trial process outlived its trial; the verification above ran on the instance after
    # the pruned trials (it stayed usable)
    assert trial_processes(str(home)) == []
    # the summary says what pruning did
    out = io.StringIO()
    print_summary(Console(file=out, width=200), summary)
    assert f"pruned {summary.n_pruned}, saved {summary.pruned_saved_s:.1f} s" in out.getvalue()
    assert pruning_saved_s(study.trials) == (summary.n_pruned, pytest.approx(
        summary.pruned_saved_s, abs=0.01))
    assert json.loads((home / "jobs" / summary.study_name / "result.json").read_text())[
        "n_pruned"] == summary.n_pruned
    # a sampler that cannot take a pending trial is told each result (pruned ones too) first
    assert summary.tell_lag_max is not None
    assert summary.tell_lag_max <= (1 if tuner == "tpe" else 0)


def test_a_study_of_several_objectives_is_not_pruned(caplog: pytest.LogCaptureFixture) -> None:
    from targets.synthetic import SyntheticTarget
    from tasks.pruning import pruning_on
    from tuners.pruners import make_pruner

    single = optuna.create_study(direction="maximize", pruner=make_pruner("median"))
    assert pruning_on(single, SyntheticTarget, True, 0)
    several = optuna.create_study(directions=["maximize", "minimize"],
                                  pruner=make_pruner("median"))
    assert not pruning_on(several, SyntheticTarget, True, 0)
    assert "several objectives" in caplog.text
