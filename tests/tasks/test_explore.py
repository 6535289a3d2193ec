"""Trial execution: own process, hard timeout, failure classes, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import trial_processes, wait_for

from targets.synthetic import SyntheticTarget
from tasks.runner import TrialRunner, run_trial
from tuners.trials import TrialOutcome

GOOD = {"x": 0.25, "y": 1.3, "threads": 8, "buffer_kb": 1000, "mode": "alpha", "compress": False}


def make_runner(tmp_path: Path, timeout: float = 5.0, **workload: object) -> TrialRunner:
    return TrialRunner(
        target_cls=SyntheticTarget,
        target_ref="targets.synthetic:SyntheticTarget",
        workload=SyntheticTarget.parse_workload({"noise": 0.0, **workload}),
        objective="throughput",
        timeout_s=timeout,
        job_dir=tmp_path / "job",
        instance_dirs={"i1": tmp_path / "i1"},
    )


def test_good_trial_reports_value_metrics_and_effective_config(tmp_path: Path) -> None:
    outcome = make_runner(tmp_path).run("0", GOOD, "i1", seed=1)
    assert outcome.ok, outcome.message
    assert outcome.value == pytest.approx(SyntheticTarget.true_value(GOOD, {"shift": 0.0}))
    assert set(outcome.metrics) == {"throughput", "latency_ms"}
    # buffer_kb 1000 is applied as 992: the system's own value is what gets recorded
    assert outcome.effective_config["buffer_kb"] == 992
    assert outcome.changed_knobs == ["buffer_kb"]
    assert (tmp_path / "job" / "trials" / "0" / "log.txt").exists()


def test_refused_config_is_a_failed_trial_with_the_systems_message(tmp_path: Path) -> None:
    outcome = make_runner(tmp_path).run("1", {**GOOD, "mode": "gamma", "threads": 1}, "i1", 1)
    assert not outcome.ok
    assert outcome.failure_class == "refused_config"
    assert "needs threads >= 2" in outcome.message


def test_crash_is_classified_with_its_signal(tmp_path: Path) -> None:
    outcome = make_runner(tmp_path).run("2", {**GOOD, "threads": 60, "compress": True}, "i1", 1)
    assert outcome.failure_class == "crash"
    assert "SIGABRT" in outcome.message


def test_hang_hits_the_timeout_and_the_instance_runs_the_next_trial(tmp_path: Path) -> None:
    # how soon after its timeout a hung trial ends is a figure for benchmarks/, not a test bound
    runner = make_runner(tmp_path, timeout=1.0)
    outcome = runner.run("3", {**GOOD, "mode": "beta", "y": 500.0}, "i1", 1)
    assert outcome.failure_class == "timeout"
    assert "1 s trial timeout" in outcome.message
    request = str(tmp_path / "job" / "trials" / "3" / "request.json")
    assert trial_processes(request) == [], "the hung trial process outlived its timeout"
    assert runner.run("4", GOOD, "i1", 1).ok


def test_target_bug_is_reported_with_its_traceback_in_the_log(tmp_path: Path) -> None:
    outcome = make_runner(tmp_path).run("5", {**GOOD, "mode": "delta"}, "i1", 1)
    assert outcome.failure_class == "target_error"
    assert "KeyError" in outcome.message
    assert any("Traceback" in line or "KeyError" in line for line in outcome.log_tail)


def test_a_trial_process_that_fails_before_the_target_runs_is_no_crash_of_the_config(
    tmp_path: Path,
) -> None:
    # the target cannot even be imported (a broken install, an upgrade half done): that is no
    # config's crash, and no rule may be learned from it
    from dataclasses import replace

    from rules.learn import LEARN_FROM

    runner = replace(make_runner(tmp_path), target_ref="tests.no_such_module:NoTarget")
    outcome = runner.run("6", GOOD, "i1", 1)
    assert outcome.failure_class == "target_error"
    assert outcome.failure_class not in LEARN_FROM
    assert "before the target ran the config" in outcome.message
    assert any("ModuleNotFoundError" in line for line in outcome.log_tail), outcome.log_tail


def test_invalid_measurement_never_gets_a_value(tmp_path: Path) -> None:
    # duration 0 with intervals works; shift is valid; a zero-noise run is valid:
    # force an invalid one through an objective the target does not report
    runner = make_runner(tmp_path)
    runner.objective = "ops_per_s"
    outcome = runner.run("6", GOOD, "i1", 1)
    assert outcome.failure_class == "invalid_measurement"
    assert outcome.value is None
    assert "not measured" in outcome.message


def test_run_trial_task_logic_runs_without_the_engine(tmp_path: Path) -> None:
    outcome = run_trial.fn(make_runner(tmp_path), "7", GOOD, "i1", 3)
    assert outcome.ok


def test_stop_all_interrupts_a_running_trial(tmp_path: Path) -> None:
    import threading

    runner = make_runner(tmp_path, timeout=30.0, duration=20.0)
    result: dict[str, TrialOutcome] = {}
    thread = threading.Thread(target=lambda: result.update(o=runner.run("8", GOOD, "i1", 1)))
    thread.start()
    request = str(tmp_path / "job" / "trials" / "8" / "request.json")
    # the trial process has started its target (it makes the data directory): stop_all must
    # kill a running trial, not one that is yet to start
    wait_for(lambda: trial_processes(request) and (tmp_path / "i1").is_dir(),
             "the trial process to start its target")
    runner.stop_all()
    thread.join(timeout=60)  # unstopped, the trial would end by itself after 20 s: not interrupted
    assert not thread.is_alive(), "the trial still runs a minute after stop_all"
    assert result["o"].failure_class == "interrupted", result["o"].message
    assert trial_processes(request) == [], "the stopped trial process outlived stop_all"


def test_a_rule_learned_from_a_crash_checks_the_very_next_candidate(
    prefect_api: str, tmp_path: Path
) -> None:
    """Cleaning runs beside the next trial, and at a job's start it lags several trials behind
    (the first cleaning warms up); a crash still teaches its rule before the next candidate."""
    import optuna

    from rules.parse import rule_from_dict
    from rules.ruleset import RuleSet
    from tasks.explore import explore
    from tasks.guard import CandidateGuard
    from tuners.space import parse_space
    from tuners.trials import ATTR

    spec = SyntheticTarget.knob_spec()
    space = parse_space({"knobs": {"threads": {"range": [1, 64]}},
                         "fixed": {"compress": True, "mode": "alpha"}}, spec, "test space")
    learned = []

    def learn(number: int, outcome: object) -> object:
        rule = rule_from_dict({"id": f"learned-{number}", "kind": "forbid",
                               "when": "threads >= 49"}, "test", spec)
        learned.append(number)
        return rule

    guard = CandidateGuard(RuleSet.for_target(SyntheticTarget), learn=learn)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for threads in (8, 60, 62, 9):  # a good trial, a crash, the crash region again, a good one
        study.enqueue_trial({"threads": threads})
    explore(study, space, make_runner(tmp_path, duration=0.01, intervals=2), budget=3,
            guard=guard)

    records = {t.params["threads"]: t.user_attrs[ATTR] for t in study.get_trials()}
    assert records[60]["failure_class"] == "crash" and learned == [1]
    assert records[62]["status"] == "blocked" and records[62]["rules"] == ["learned-1"]
    assert records[8]["status"] == records[9]["status"] == "ok"
