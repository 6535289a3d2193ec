"""Several objectives and SLA bounds in the tune flow: a two-objective SQLite job gives a
verified Pareto front and a config to apply; a constrained job never reports a config that broke
a bound, and says so when no config met them; bad ``--objective``, ``--prefer`` and
``--constraint`` text is refused before anything runs (exit 2)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from flows.cli import app
from flows.progress import print_summary
from flows.report import NONE_FEASIBLE
from flows.tune import JobFailed, tune
from rules.bounds import BoundError, parse_bound
from targets.sqlite import SqliteTarget
from targets.synthetic import SyntheticTarget
from tuners.study import open_study

#: What these tests do not look at: the noise check, long verification, models, transfer.
LEAN: dict[str, Any] = {"noise_runs": 0, "train": False, "transfer": False}
pytestmark = pytest.mark.usefixtures("mlflow_store")


def _study(home: Path, name: str) -> Any:
    import optuna

    return open_study(home, name, "maximize", optuna.samplers.RandomSampler(), create=False)


def test_a_two_objective_sqlite_job_gives_a_verified_pareto_front(prefect_api: str,
                                                                   home: Path) -> None:
    # reads against SQLite's own memory: a page cache smaller than the database saves memory and
    # costs reads (mmap_size wins some back). Seeds 0-7 gave 3, 4, 3, 5, 5, 2, 4, 3 verified points
    # beside a CPU hog (2026-12-03); reads against writes gave fronts of 1-4 points (the big levers
    # help both). A job with fewer than 3 verified points is followed by one of the next seed, up
    # to three; every front is checked
    sizes, failures = [], []
    for seed in range(3):
        summary = tune("sqlite", budget=30, seed=seed, workload={"rows": 2000, "ops": 2000},
                       objectives=["read_ops_per_s", "heap_peak_kb:min"],
                       prefer="read_ops_per_s", verify_repeats=2, home=str(home), **LEAN)
        sizes.append(_check_front(home, summary))
        # why a point did not verify (CI once verified none of a front): said if this fails
        failures.append([f for p in summary.pareto_front for f in p["failures"]])
        if sizes[-1] >= 3:
            break
    assert sizes[-1] >= 3, f"verified front points per seed: {sizes}; failures: {failures}"


def _check_front(home: Path, summary: Any) -> int:
    """Check one two-objective job's front; the number of its verified points."""
    assert summary.objectives == ["read_ops_per_s", "heap_peak_kb"]
    assert summary.directions == ["maximize", "minimize"]
    front = summary.pareto_front
    verified = [p for p in front if p["runs"] >= 2 and all(
        p["verified"][n]["gain"] is not None for n in summary.objectives)]
    assert front, "a two-objective job with no front"
    # a front: no point beats another in both objectives (as measured in the search)
    reads, heap = summary.objectives
    for a in front:
        for b in front:
            assert not (a is not b and a["observed"][reads] > b["observed"][reads]
                        and a["observed"][heap] < b["observed"][heap])
    # --prefer read_ops_per_s: the verified point with the best verified gain in reads
    chosen = [p for p in front if p["chosen"]]
    if not verified:  # none verified (CI once, under load): none is chosen; the next seed runs
        assert chosen == [], chosen
        return 0
    assert len(chosen) == 1
    assert chosen[0]["verified"]["read_ops_per_s"]["gain"] == max(
        p["verified"]["read_ops_per_s"]["gain"] for p in verified)
    assert summary.best_trial == chosen[0]["trial"]
    assert yaml.safe_load(Path(summary.best_config_file).read_text()) == chosen[0]["config"]
    assert (Path(summary.best_config_file).parent / "pareto.png").stat().st_size > 0
    study = _study(home, summary.study_name)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == summary.objectives
    data = json.loads((Path(summary.best_config_file).parent / "result.json").read_text())
    assert len(data["pareto_front"]) == len(front)
    return len(verified)


def test_a_constrained_job_reports_only_a_config_that_met_its_bounds(prefect_api: str,
                                                                     home: Path) -> None:
    # the unconstrained optimum runs ~1000 ops/s: the bound keeps it out
    summary = tune("synthetic", budget=14, seed=2, workload={"duration": 0.0, "noise": 0.02},
                   constraints=["throughput <= 800", "latency_ms <= 10 * default"],
                   verify_repeats=2, home=str(home), **LEAN)
    study = _study(home, summary.study_name)
    ran = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    broke = [t for t in ran if any(v > 0 for v in t.constraints.values())]
    assert broke and summary.n_infeasible == len(broke)  # the bound did exclude trials
    assert all(t.user_attrs["knobflow"]["metrics"]["throughput"] > 800
               or t.user_attrs["knobflow"]["metrics"]["latency_ms"] > 10 * 6.0 for t in broke)
    best = study.trials[summary.best_trial]
    assert best.constraints and all(v <= 0 for v in best.constraints.values())
    assert best.user_attrs["knobflow"]["metrics"]["throughput"] <= 800
    assert not summary.best_is_default and summary.gain is not None  # it was verified
    assert summary.best_observed_value == max(
        t.value for t in ran if t not in broke)  # the best feasible trial
    assert SyntheticTarget.true_value(summary.best_config, SyntheticTarget.workload_defaults) \
        < SyntheticTarget.known_optimum_value(SyntheticTarget.workload_defaults)
    assert summary.constraints[1].startswith("latency_ms <= 10 * default (default latency_ms")
    assert set(summary.constraints_verified) == {"throughput <= 800",
                                                 "latency_ms <= 10 * default"}
    out = io.StringIO()  # the summary says the bounds held, and how many trials broke one
    print_summary(Console(file=out, width=300), summary)
    assert (f"SLA bounds: {'; '.join(summary.constraints)}; {summary.n_infeasible} clean trials "
            "broke one; the best config met every bound in the search") in out.getvalue()


def test_nsga2_runs_a_bounded_two_objective_job(prefect_api: str, home: Path) -> None:
    # throughput against latency on the synthetic target (they trade through `threads`), with
    # a bound NSGA-II reads as a constraint: every front point met it
    summary = tune("synthetic", budget=20, seed=4, tuner="nsga2",
                   workload={"duration": 0.0, "noise": 0.02},
                   objectives=["throughput", "latency_ms:min"], constraints=["throughput <= 900"],
                   verify_repeats=2, home=str(home), **LEAN)
    study = _study(home, summary.study_name)
    assert summary.tuner == "nsga2" and summary.n_trials == 20
    assert summary.directions == ["maximize", "minimize"] and summary.pareto_front
    for point in summary.pareto_front:
        trial = study.trials[point["trial"]]
        assert all(v <= 0 for v in trial.constraints.values()), point
        assert trial.user_attrs["knobflow"]["metrics"]["throughput"] <= 900


def test_a_job_whose_bounds_nobody_meets_says_so_and_writes_no_config(prefect_api: str,
                                                                       home: Path) -> None:
    with pytest.raises(JobFailed) as failed:
        tune("synthetic", budget=6, seed=1, workload={"duration": 0.0},
             constraints=["throughput >= 5000"], home=str(home), **LEAN)
    summary = failed.value.summary
    assert summary.verdict == NONE_FEASIBLE
    assert summary.best_config is None and summary.n_infeasible >= 5
    assert not (home / "jobs" / summary.study_name / "best.yaml").exists()
    assert "no config met every --constraint" in str(failed.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--constraint", "latency_ms <= 5 * defualt"],
     "--constraint 'latency_ms <= 5 * defualt': 'defualt' is not a metric of the target (did "
     "you mean 'default'?)"),
    (["--constraint", "speed < 3"], "'speed' is not a metric of the target; write METRIC <= "
                                    "NUMBER"),
    (["--constraint", "latency_ms == 3"], "a bound is one comparison with <=, <, >= or >"),
    (["--constraint", "latency_ms <="], "syntax error at the end of the expression"),
    (["--objective", "throughput:sideways"], "--objective 'throughput:sideways': expected NAME "
                                             "or NAME:max or NAME:min"),
    (["--objective", "throughput", "--objective", "speed:min"],
     "--objective 'speed:min': 'speed' is not a metric of target 'synthetic'"),
    (["--objective", "throughput", "--objective", "latency_ms", "--prefer", "unknown"],
     "--prefer 'unknown': 'unknown' is not one of the job's objectives (throughput, "
     "latency_ms)"),
    (["--objective", "throughput", "--objective", "latency_ms", "--tuner", "cmaes"],
     "--tuner cmaes takes one objective"),
    (["--objective", "throughput", "--objective", "latency_ms", "--tuner", "surrogate"],
     "--tuner surrogate takes one objective"),
    (["--objective", "throughput", "--objective", "latency_ms", "--pruner", "median"],
     "--pruner median takes one objective"),
    (["--objective", "throughput", "--objective", "latency_ms", "--knobs", "auto"],
     "--knobs auto takes one objective"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_objectives_preferences_and_bounds_are_refused_before_anything_runs(
    args: list[str], message: str, home: Path,
) -> None:
    result = CliRunner().invoke(app, ["tune", "synthetic", *args, "--home", str(home)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("knobflow: error: ")
    assert message in result.stderr, result.stderr
    assert not (home / "jobs").exists()


def test_a_bound_is_a_violation_in_the_metric_s_unit() -> None:
    metrics = SqliteTarget.metrics
    bound = parse_bound("latency_p99_us <= 1.1 * default", metrics)
    assert (bound.metric, bound.op, bound.uses_default) == ("latency_p99_us", "le", True)
    assert bound.violation({"latency_p99_us": 120.0}, {"latency_p99_us": 100.0}) \
        == pytest.approx(10.0)
    assert bound.met({"latency_p99_us": 100.0}, {"latency_p99_us": 100.0})
    assert bound.violation({"latency_p99_us": 1.0}, {}) == float("inf")  # no default measured
    floor = parse_bound("ops_per_s > 5000", metrics)
    assert floor.violation({"ops_per_s": 4000.0}) == pytest.approx(1000.0)
    assert floor.violation({"ops_per_s": 5000.0}) > 0  # strict: a tie breaks it
    assert not floor.uses_default
    with pytest.raises(BoundError, match="names exactly one metric"):
        parse_bound("ops_per_s >= latency_p99_us", metrics)
