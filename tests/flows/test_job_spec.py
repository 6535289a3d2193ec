"""The job spec is the one declaration of a tuning job's options: the CLI's ``tune`` options, the
flow's parameters and the spec's fields are one set with the same defaults and help; a command
line and a flow call with the same values make the same spec; a bad value gets the same one-line
error from each; ``--resume`` changes only what the spec says it may."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_tune import given_spec, spec_value
from flows.job import Job, JobStatus, check_spec
from flows.spec import Cli, JobSpec, Resume
from flows.tune import tune
from targets.common.errors import KnobflowError

FLOW_ONLY = {"resume", "home", "progress"}
COMMAND_ONLY = {"resume", "home", "as_json", "verbose"}
FIELDS = JobSpec.model_fields
#: A value other than the default for every option (knobs: below, it excludes --space).
EXAMPLE: dict[str, Any] = {
    "target": "synthetic", "instance": "kv-2", "service": "orders", "budget": 7,
    "time_budget": 60.0, "tuner": "random", "parallel": 2, "workload_file": "wl.yaml",
    "workload": {"shift": "0.3"}, "objective": "latency_ms", "seed": 5,
    "space_file": "space.yaml", "trial_timeout": 9.5, "verify_repeats": 4, "repeats": 2,
    "repeat_until": 0.05, "max_repeats": 6, "baseline_every": 3, "noise_runs": 5,
    "noise_threshold": 0.2, "rule_files": ["a.yaml"],
    "policies": ["durability", "small-disk"], "learn_rules": False, "transfer": False,
    "transfer_priors": True, "train": False, "fail_on_regression": True, "workers": 3,
    "testbed": "bed-1", "testbed_slots": 2, "cpus": "auto", "memory_mb": 512,
    "prefer": "latency_ms", "constraints": ["latency_ms <= 5"], "pruner": "median",
}
#: Several objectives (``objective`` and ``objectives`` are one option on the command line).
SEVERAL: dict[str, Any] = {"target": "synthetic", "objectives": ["throughput:max", "latency_ms"],
                           "prefer": "latency_ms:2,throughput:1"}


def tune_command() -> Any:
    return typer.main.get_command(app).commands["tune"]  # type: ignore[attr-defined]


def command_line(values: dict[str, Any]) -> list[str]:
    """``values`` as a user types them, each option as its field declares."""
    args = [values["target"]]
    for name, value in values.items():
        kind, flag = JobSpec.cli_kind(name), JobSpec.flag(name)
        if kind == Cli.VALUE:
            args += [flag, str(value)]
        elif kind == Cli.REPEATED:
            args += [x for v in value for x in (flag, v)]
        elif kind == Cli.ASSIGNMENTS:
            args += [x for k, v in value.items() for x in (flag, f"{k}={v}")]
        elif kind == Cli.COMMA_LIST:
            args += [flag, ",".join(value)]
        elif kind == Cli.FLOW_ONLY:  # objective: one --objective
            args += [flag, str(value)]
        elif kind in (Cli.OFF_FLAG, Cli.ON_FLAG):
            assert value is (kind == Cli.ON_FLAG), f"{name}: a flag gives the non-default value"
            args.append(flag)
    return args


def parsed(args: list[str]) -> JobSpec:
    """The spec the ``tune`` command makes of ``args`` (parsed as it parses them, not run)."""
    command = tune_command()
    with command.make_context("tune", args) as ctx:
        values = {k: v for k, v in ctx.params.items() if k not in COMMAND_ONLY}
        return given_spec(ctx, values)


def test_the_cli_the_flow_and_the_spec_have_one_set_of_options_with_the_same_defaults() -> None:
    flow_params = inspect.signature(tune).parameters
    assert set(flow_params) - FLOW_ONLY == set(FIELDS)
    # Prefect's schema of the flow (what deployments are checked against, what its UI shows)
    assert set(tune.parameters.properties) - FLOW_ONLY == set(FIELDS)
    cli = {p.name: p for p in tune_command().params}
    # objective is given as one --objective (objectives' option), not an option of its own
    on_cli = {n for n in FIELDS if JobSpec.cli_kind(n) != Cli.FLOW_ONLY}
    assert set(cli) - COMMAND_ONLY == on_cli == set(FIELDS) - {"objective"}
    for name, field in FIELDS.items():
        if name not in on_cli:
            continue
        assert cli[name].help == field.description, name
        if field.is_required():
            assert flow_params[name].default is inspect.Parameter.empty and cli[name].required
            continue
        default = field.get_default(call_default_factory=True)
        assert flow_params[name].default == default, name
        assert spec_value(name, cli[name].default) == default, name  # the option left out
        assert tune.parameters.properties[name].get("default") == default, name
    assert parsed(["synthetic"]) == JobSpec(target="synthetic")


def test_the_example_gives_every_option_a_value_other_than_its_default() -> None:
    # --knobs and --space exclude each other; --top-knobs needs --knobs auto
    assert set(EXAMPLE) | {"knobs", "objectives", "top_knobs"} == set(FIELDS)
    for name, value in EXAMPLE.items():
        assert FIELDS[name].is_required() or value != FIELDS[name].get_default(
            call_default_factory=True), name


@pytest.mark.parametrize("values", [EXAMPLE, {"target": "sqlite", "knobs": ["cache_size",
                                                                            "synchronous"]},
                                    SEVERAL,
                                    {"target": "synthetic", "knobs": ["auto"], "top_knobs": 3}])
def test_a_command_line_and_a_flow_call_with_the_same_values_make_the_same_spec(
    values: dict[str, Any],
) -> None:
    from_cli = parsed(command_line(values))
    from_call = JobSpec.of(**values)  # what the flow makes of its parameters
    assert from_cli == from_call
    assert from_cli.given() == values  # every value arrived, as given


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": 0}, "The 'budget' option of tune must be an int in [1, inf). Got 0 instead."),
        ({"parallel": 65}, "The 'parallel' option of tune must be an int in [1, 64]. Got 65 "
                           "instead."),
        ({"tuner": "randm"}, "The 'tuner' option of tune must be one of tpe, random, cmaes, "
                             "nsga2, surrogate. Got 'randm' instead (did you mean 'random'?)."),
        ({"repeat_until": 2.0}, "The 'repeat_until' option of tune must be a relative "
                                "half-width in (0, 1), e.g. 0.05 for +-5 %. Got 2.0 instead."),
        ({"repeats": 7}, "The 'max_repeats' option of tune must be an int in [7, 100]. Got 5 "
                         "instead."),
        ({"noise_runs": 1}, "The 'noise_runs' option of tune must be 0 (no noise check) or an "
                            "int in [2, 20]. Got 1 instead."),
        ({"noise_threshold": 0.0}, "The 'noise_threshold' option of tune must be a fraction > "
                                   "0, e.g. 0.1 for 10 %. Got 0.0 instead."),
        ({"instance": "a b"}, "The 'instance' option of tune must be 1-64 letters, digits, '.', "
                              "'_' or '-'. Got 'a b' instead."),
        ({"trial_timeout": -1.0}, "The 'trial_timeout' option of tune must be a number of "
                                  "seconds > 0. Got -1.0 instead."),
        ({"cpus": "0;1"}, "The 'cpus' option of tune must be auto or a CPU list such as 0,1 or "
                          "0-3. Got '0;1' instead."),
        ({"memory_mb": 8}, "The 'memory_mb' option of tune must be an int in [64, 4194304]. "
                           "Got 8 instead."),
        ({"testbed_slots": 0}, "The 'testbed_slots' option of tune must be an int in [1, 64]. "
                               "Got 0 instead."),
        ({"pruner": "mediam"}, "The 'pruner' option of tune must be one of none, median, "
                               "hyperband. Got 'mediam' instead (did you mean 'median'?)."),
        ({"knobs": ["auto"], "top_knobs": 0}, "The 'top_knobs' option of tune must be an int "
                                              "in [1, 1000]. Got 0 instead."),
        ({"top_knobs": 2}, "--top-knobs applies to --knobs auto; add --knobs auto or drop "
                           "--top-knobs"),
        ({"knobs": ["auto", "x"]}, "--knobs auto picks the knobs itself; give it alone "
                                   "(--knobs auto) or list knobs without it"),
    ],
)
def test_a_bad_value_gets_the_same_line_from_the_spec_and_the_command(
    options: dict[str, Any], message: str, home: Path
) -> None:
    with pytest.raises(KnobflowError) as info:
        JobSpec.of(target="synthetic", **options)
    assert str(info.value) == message
    result = CliRunner().invoke(app, ["tune", *command_line({"target": "synthetic", **options}),
                                      "--home", str(home)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"knobflow: error: {message}"


def test_a_bad_value_gets_the_same_line_from_the_flow(prefect_api: str, home: Path) -> None:
    with pytest.raises(KnobflowError) as info:
        tune("synthetic", budget=0, home=str(home))
    assert str(info.value) == ("The 'budget' option of tune must be an int in [1, inf). Got 0 "
                               "instead.")
    assert not (home / "jobs").exists(), "bad input must leave nothing behind"


def test_resume_changes_only_what_may_change(home: Path) -> None:
    job = Job.create(JobSpec.of(target="synthetic", budget=3, seed=4), home)
    job.status = JobStatus.INTERRUPTED
    job.save()
    resumed = check_spec(JobSpec.of(target="synthetic", budget=10, parallel=2), home, True)
    assert (resumed.study_name, resumed.budget, resumed.parallel, resumed.seed) == (
        job.study_name, 10, 2, 4)
    with pytest.raises(KnobflowError, match=r"drop --seed, --no-train \(only --budget, "
                                            r"--time-budget, --parallel, --testbed and "
                                            r"--testbed-slots may change\)"):
        check_spec(JobSpec.of(target="synthetic", seed=5, train=False), home, True)
    may = {n for n in FIELDS if JobSpec.resume_rule(n) == Resume.MAY_CHANGE}
    assert may == {"budget", "time_budget", "parallel", "testbed", "testbed_slots"}
