"""What a job tells its user must not mislead (issue 13, items 1 and 4): a default that nothing
beat is said so and neither verified against itself nor written as a config to apply; blocked
counts add up; a skipped training says why; the best-config table shows the defaults it leaves;
a config that gives up durability says so without ``--policy durability``. Jobs run on a real
Prefect API, MLflow store and Optuna journal in tmp_path; the summary's text is checked as the
user reads it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import invoke_cli
from mlflow.tracking import MlflowClient
from rich.console import Console

from flows.job import Job
from flows.plots import history_figure
from flows.progress import print_summary
from flows.report import NO_GAIN, RunSummary, is_default_config
from flows.tune import tune
from tasks.guard import blocked_as
from tuners.study import open_study

FAST = {"duration": 0.0, "noise": 0.02}
SQLITE_SMALL = {"rows": 2000, "ops": 2000}
# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")


def _client(home: Path) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _verify_runs(home: Path, parent: str) -> list:
    client = _client(home)
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' "
                              "and tags.`knobflow.phase` = 'verify'")


def _printed(summary: RunSummary) -> str:
    out = io.StringIO()
    print_summary(Console(file=out, width=250, color_system=None), summary)
    return out.getvalue()


def _job_files(home: Path, summary: RunSummary) -> set[str]:
    return {p.name for p in (home / "jobs" / summary.study_name).iterdir()}


def _assert_nothing_claimed(home: Path, summary: RunSummary) -> None:
    """A default that nothing beat: said so, not verified, no config file to apply."""
    assert summary.best_is_default and summary.verdict == NO_GAIN
    assert summary.succeeded  # keeping the default is a result: exit 0
    assert summary.gain is None and summary.verify_repeats == 0
    assert summary.best_value is None and summary.default_value is None
    assert summary.best_config_file is None and summary.native_config_file is None
    assert not {"best.yaml", "best.ini", "best.sql", "verify.json"} & _job_files(home, summary)
    assert _verify_runs(home, summary.mlflow_run_id) == []
    result = json.loads((home / "jobs" / summary.study_name / "result.json").read_text())
    assert result["best_is_default"] is True and result["verdict"] == NO_GAIN
    assert "best_config_file" not in result
    run = _client(home).get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["knobflow.verdict"] == NO_GAIN
    assert "gain" not in run.data.metrics


def test_a_default_nothing_beat_is_said_so_verified_against_nothing_and_written_nowhere(
    prefect_api: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one trial: the default config (trial 0), so the default is the best there is
    monkeypatch.setenv("COLUMNS", "250")
    result = invoke_cli(["tune", "synthetic", "--budget", "1", "--seed", "4", "--home",
                         str(home), "--set-workload", "duration=0"])
    assert result.returncode == 0, result.stdout + result.stderr
    (job_dir,) = (home / "jobs").iterdir()
    summary = RunSummary(**json.loads((job_dir / "result.json").read_text()))
    _assert_nothing_claimed(home, summary)
    value = f"{summary.best_observed_value:,.6g}"
    lines = result.stdout.splitlines()
    assert lines[1] == (f"no config beat the default: the best trial (0) ran the default config "
                        f"(throughput {value}, one run); keep the default (nothing verified, no "
                        "config file written)")
    assert "trials: 1 (0 failed)" in lines
    # the skipped training is said, with why
    assert ("models: not trained: 1 clean trials with a measured throughput; need 12 to train"
            in lines)
    assert "best config" not in result.stdout and "gain" not in result.stdout

    # history.png draws no verification lines (the default twice), and says why
    job = Job.load(job_dir / "job.json", home)
    study = open_study(home, job.study_name, job.direction, optuna.samplers.RandomSampler(),
                       create=False)
    fig = history_figure(job, study, None, no_gain=True)
    ax = fig.axes[0]
    assert ax.get_legend_handles_labels()[1] == ["trial", "best so far"]
    assert ax.lines[1:] == []  # the step line of the best so far, no dashed line
    assert ax.get_title().endswith("; no config beat the default")
    assert (job_dir / "history.png").stat().st_size > 1000


def test_a_config_equal_to_the_default_in_every_knob_is_the_default(
    prefect_api: str, home: Path, tmp_path: Path
) -> None:
    # one bool knob tuned: trials run the default config again (compress off), and with this
    # seed a later run of it, not trial 0, measured best
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"knobs": {"compress": {}}}))
    summary = tune("synthetic", budget=4, seed=2, tuner="random",
                   workload={**FAST, "noise": 0.1}, space_file=str(space), train=False,
                   home=str(home))
    assert summary.n_trials == 4
    study = open_study(home, summary.study_name, "maximize", optuna.samplers.RandomSampler(),
                       create=False)
    defaults = [t.number for t in study.trials if t.params == {"compress": False}]
    assert len(defaults) >= 2 and summary.best_trial in defaults
    _assert_nothing_claimed(home, summary)
    text = _printed(summary)
    assert (f"no config beat the default: the best trial ({summary.best_trial}) ran the default "
            "config") in text
    assert "models: not trained: turned off (--no-train)" in text.splitlines()
    assert summary.model is None


def test_a_config_is_the_default_only_if_every_knob_is() -> None:
    defaults = {"x": 0.7, "threads": 2, "mode": "alpha", "compress": False}
    assert is_default_config(dict(defaults), defaults)
    assert is_default_config({"x": 0.7 + 1e-13, "threads": 2.0}, defaults)
    assert is_default_config({"mode": "alpha"}, defaults)  # the others at their defaults
    assert not is_default_config({**defaults, "x": 0.7001}, defaults)
    assert not is_default_config({**defaults, "compress": True}, defaults)
    assert not is_default_config({**defaults, "mode": "beta"}, defaults)
    assert not is_default_config({"unknown": 1}, defaults)


def test_blocked_counts_add_up_to_the_blocked_total(prefect_api: str, home: Path) -> None:
    rules = home / "mine.yaml"
    rules.write_text(yaml.safe_dump({"target": "synthetic", "rules": [
        {"id": "no-big-x", "kind": "forbid", "when": "x > 0.5", "message": "mine"},
        {"id": "few-threads", "kind": "forbid", "when": "threads > 16", "message": "mine"}]}))
    # no noise check, two pairs of verification: nothing here looks at them
    summary = tune("synthetic", budget=8, tuner="random", seed=4, workload=FAST, train=False,
                   rule_files=[str(rules)], noise_runs=0, verify_repeats=2, home=str(home))
    by = summary.blocked_by
    assert summary.n_blocked > 0 and sum(by.values()) == summary.n_blocked
    assert set(by) <= {"no-big-x", "few-threads", "no-big-x + few-threads"}
    assert by.get("no-big-x + few-threads", 0) > 0  # a candidate breaking both, counted once
    counts = ", ".join(f"{k} {v}" for k, v in by.items())
    assert (f"candidates blocked by rules (never run): {summary.n_blocked}: {counts} (a "
            "candidate that breaks several rules is counted once, under all of them)"
            in _printed(summary).splitlines())


def test_a_blocked_candidate_is_counted_under_the_rules_it_broke_once() -> None:
    assert blocked_as(["a"]) == "a"
    assert blocked_as(["a", "b", "a"]) == "a + b"


DURABILITY = ("the best config gives up durability: synchronous='off' (rule durable-sync: "
              "synchronous=off loses committed transactions on power loss). Tune with --policy "
              "durability to keep such configs out")


def test_a_config_that_gives_up_durability_says_so_without_the_policy(
    prefect_api: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every trial runs with synchronous=off; the job does not turn the durability policy on
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"knobs": {"cache_size": {"range": [-4000, -2000]}},
                                     "fixed": {"synchronous": "off"}}))
    summary = tune("sqlite", budget=1, seed=1, workload=SQLITE_SMALL, space_file=str(space),
                   verify_repeats=2, train=False, home=str(home),
                   noise_runs=0)  # a loaded machine would switch baselines on: values as ratios
    assert summary.best_config["synchronous"] == "off" and not summary.best_is_default
    assert summary.policy_warnings == [DURABILITY]
    text = _printed(summary)
    assert f"warning: {DURABILITY}" in text.splitlines()
    # the files to apply say it too, each in its own comment syntax
    assert f"# WARNING: {DURABILITY}\n" in Path(summary.best_config_file).read_text()
    assert f"-- WARNING: {DURABILITY}\n" in Path(summary.native_config_file).read_text()
    run = _client(home).get_run(summary.mlflow_run_id)
    assert run.data.tags["knobflow.policy_warnings"] == DURABILITY

    # the best-config table shows the default beside the knob it changes, and only there
    assert re.search(r"│ synchronous +│ off +│ full +│", text), text
    assert re.search(r"│ journal_mode +│ delete +│ +│", text), text
    assert summary.default_config["synchronous"] == "full"
    # which "best" is which: the search's single run, the verification's means
    assert (f"search: best trial 0 (ops_per_s {summary.best_observed_value:,.6g}, one run; the "
            "bar's \"best trial\")") in text
    assert (f"verified, means of 2 interleaved re-measurements of each: ops_per_s default "
            f"{summary.default_value:,.6g} -> best {summary.best_value:,.6g}  gain "
            f"{summary.gain:.2f}x") in text

    # knobflow validate says it too, without the policy (and passes the config)
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: the line stays whole
    checked = invoke_cli(["validate", "sqlite", summary.best_config_file, "--home", str(home)])
    assert checked.returncode == 0
    assert (f"warning: {summary.best_config_file} gives up durability: synchronous='off' (rule "
            "durable-sync: synchronous=off loses committed transactions on power loss). Add "
            "--policy durability to hold it to that policy") in checked.stdout.splitlines()


def _summary(**changes: object) -> RunSummary:
    fields = dict(
        target="rocksdb", service="rocksdb", instance="local", objective="ops_per_s",
        direction="maximize", tuner="tpe", n_trials=20, n_failed=0, failure_classes={},
        best_trial=7, best_config={"write_buffer_size": 134217728, "max_write_buffer_number": 2,
                                   "compression": "lz4"},
        best_observed_value=70112.5, best_value=61000.0, default_value=62000.0, gain=0.98,
        gain_low=0.95, gain_high=0.99, gain_significant=False, verify_repeats=3,
        verify_default_values=[], verify_best_values=[], verify_failures=[], workload={},
        study_name="rocksdb-local-x", mlflow_run_id="abc", duration_s=1.0,
        verdict="worse than the default", best_observed_runs=1,
        default_config={"write_buffer_size": 67108864, "max_write_buffer_number": 2,
                        "compression": "snappy"})
    return RunSummary(**{**fields, **changes})


def test_the_summary_says_which_best_is_which() -> None:
    lines = _printed(_summary()).splitlines()
    assert [line.split() for line in lines[5:8]] == [
        ["│", "write_buffer_size", "│", "134217728", "│", "67108864", "│"],
        ["│", "max_write_buffer_number", "│", "2", "│", "│"],
        ["│", "compression", "│", "lz4", "│", "snappy", "│"]]
    assert 'search: best trial 7 (ops_per_s 70,112.5, one run; the bar\'s "best trial")' in lines
    assert ("verified, means of 3 interleaved re-measurements of each: ops_per_s default 62,000 "
            "-> best 61,000  gain 0.98x (95% interval 0.95-0.99): worse than the default (the "
            "whole interval is below 1): keep the default") in lines
    # with --repeats the trial's value is a mean; with --baseline-every a ratio to the default
    lines = _printed(_summary(best_observed_runs=3, best_observed_value=1.12,
                              best_observed_raw=70112.5)).splitlines()
    assert ('search: best trial 7 (1.12x the default measured beside it, ops_per_s 70,112.5, '
            'the mean of 3 runs; the bar\'s "best trial")') in lines
