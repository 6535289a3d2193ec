"""The knobflow command as a user runs it: outputs, one-line errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke_cli, run_cli
from typer.testing import CliRunner

from flows.cli import app

REQUIRED_KEYS = {
    "target",
    "instance",
    "objective",
    "direction",
    "n_trials",
    "n_failed",
    "best_config",
    "best_value",
    "default_value",
    "gain",
    "gain_low",
    "gain_high",
    "study_name",
    "mlflow_run_id",
    "known_optimum_value",
    "best_true_value",
}


def test_targets_lists_the_built_in_targets() -> None:
    result = run_cli(["targets"], env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "synthetic" in result.stdout and "sqlite" in result.stdout


def test_knobs_shows_the_spec_as_a_table() -> None:
    result = run_cli(["knobs", "synthetic"], env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for name in ("buffer_kb", "threads", "mode", "compress", "[16, 65536]"):
        assert name in result.stdout


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_tune_json_prints_one_object_with_the_result(prefect_api: str, home: Path) -> None:
    result = invoke_cli(
        [
            "tune",
            "synthetic",
            "--budget",
            "8",
            "--seed",
            "1",
            "--home",
            str(home),
            "--json",
            "--set-workload",
            "duration=0",
            "--verify-repeats",
            "2",
        ]
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) >= REQUIRED_KEYS
    assert summary["n_trials"] == 8
    assert summary["direction"] == "maximize"
    assert len(summary["verify_best_values"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tune", "nosuch"], "knobflow: error: unknown target 'nosuch'; known targets: "),
        (
            ["tune", "synthetc"],
            "knobflow: error: unknown target 'synthetc' (did you mean "
            "'synthetic'?); known targets: ",
        ),
        (
            ["tune", "synthetic", "--budget", "0"],
            "knobflow: error: The 'budget' option of tune must be an int in [1, inf). "
            "Got 0 instead.",
        ),
        (
            ["tune", "synthetic", "--budget", "ten"],
            "knobflow: error: Invalid value for '--budget': ",
        ),
        (
            ["tune", "synthetic", "--parallel", "0"],
            "knobflow: error: The 'parallel' option of tune must be an int in [1, 64]. "
            "Got 0 instead.",
        ),
        (
            ["tune", "synthetic", "--tuner", "bayes"],
            "knobflow: error: The 'tuner' option of tune must be one of tpe, random, cmaes, "
            "nsga2, surrogate. Got 'bayes' instead.",
        ),
        (
            ["tune", "synthetic", "--pruner", "asha"],
            "knobflow: error: The 'pruner' option of tune must be one of none, median, "
            "hyperband. Got 'asha' instead.",
        ),
        (
            ["tune", "synthetic", "--objective", "speed"],
            "knobflow: error: The 'objective' option of tune must be a metric of target "
            "'synthetic': "
            "throughput, latency_ms. Got 'speed' instead.",
        ),
        (
            ["tune", "synthetic", "--time-budget", "-5"],
            "knobflow: error: The 'time_budget' option of tune must be a number of seconds > 0. "
            "Got -5.0 instead.",
        ),
        (
            ["tune", "synthetic", "--set-workload", "shift"],
            "knobflow: error: --set-workload 'shift': expected KEY=VALUE, e.g. read_ratio=0.9",
        ),
        (
            ["tune", "synthetic", "--set-workload", "shift=2"],
            "knobflow: error: --set-workload: workload parameter 'shift' = 2.0 is outside "
            "[0.0, 1.0]",
        ),
        (
            ["tune", "synthetic", "--knobs", "x,threds"],
            "knobflow: error: --knobs: unknown knob 'threds' for target 'synthetic' "
            "(did you mean 'threads'?)",
        ),
        (
            ["tune", "synthetic", "--space", "no/such/space.yaml"],
            "knobflow: error: no/such/space.yaml: file not found",
        ),
        (
            ["tune", "synthetic", "--instance", "a b"],
            "knobflow: error: The 'instance' option of tune must be 1-64 letters, digits, '.', '_' "
            "or '-'. Got 'a b' instead.",
        ),
        (["tune", "synthetic", "--bogus"], "knobflow: error: No such option: --bogus"),
        (["knobs", "nosuch"], "knobflow: error: unknown target 'nosuch'; known targets: "),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args: list[str], message: str, home: Path) -> None:
    """In-process, as the console script runs it (same command group, same error handling)."""
    result = CliRunner().invoke(app, [*args, "--home", str(home)] if args[0] == "tune" else args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), lines[0]
    assert not any(home.iterdir()), "bad input must not leave state behind"


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_resume_refuses_options_that_would_change_the_job(prefect_api: str, home: Path) -> None:
    first = invoke_cli(
        [
            "tune",
            "synthetic",
            "--budget",
            "3",
            "--home",
            str(home),
            "--set-workload",
            "duration=0",
            "--verify-repeats",
            "2",
        ]
    )
    assert first.returncode == 0, first.stderr
    job = next((home / "jobs").glob("*/job.json"))
    data = json.loads(job.read_text())
    data["status"] = "interrupted"
    job.write_text(json.dumps(data))
    result = invoke_cli(["tune", "synthetic", "--resume", "--tuner", "random", "--home",
                         str(home)])
    assert result.returncode == 2
    assert "--resume continues job" in result.stderr and "--tuner" in result.stderr
