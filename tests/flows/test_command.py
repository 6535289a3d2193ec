"""The command explains itself: ``knobflow`` alone, ``--version``, ``--help`` in words with the
choices and exit codes, ``knobs`` at 100 columns, and ``--home`` taken by every command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import typer
from conftest import REPO, invoke_cli, run_cli

from flows.cli import app
from flows.trials import expert_path
from targets.registry import available_targets, load_target

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
#: Typer's way of showing a value's Python type (``<str>``, ``<list[str]>``, ``<float range>``).
RAW_TYPE = re.compile(r"<[a-z]+(\[[a-z|]+\])?( range)?>")


def _commands(group: typer.main.TyperGroup | None = None, path: tuple[str, ...] = ()) -> list:
    """Every command of the ``knobflow`` command tree, as (words, click command)."""
    group = group or typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():
        words = (*path, name)
        if hasattr(command, "commands"):
            found += [(words, command), *_commands(command, words)]
        else:
            found.append((words, command))
    return found


LEAVES = [words for words, command in _commands() if not hasattr(command, "commands")]


def test_no_arguments_prints_the_help_and_exits_0() -> None:
    result = invoke_cli([])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("Usage: knobflow [OPTIONS] COMMAND [ARGS]...\n\n"
                                    "  Keep the configuration knobs of real systems tuned.\n")
    assert "  --version  Print knobflow's version and exit.\n" in result.stdout
    for words in LEAVES:
        assert f"  {words[0]} " in result.stdout
    assert "Exit codes:\n  0    done\n" in result.stdout


def test_a_group_without_a_command_prints_its_help() -> None:
    result = invoke_cli(["rules"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: knobflow rules [OPTIONS] COMMAND [ARGS]...")


def test_version() -> None:
    assert VERSION == "0.1.0"
    result = run_cli(["--version"])  # a process of its own, as a user runs it
    assert (result.returncode, result.stdout, result.stderr) == (0, "knobflow 0.1.0\n", "")
    assert invoke_cli(["--version"]).stdout == f"knobflow {VERSION}\n"


def test_tune_help_lists_the_choices_examples_and_exit_codes() -> None:
    result = invoke_cli(["tune", "--help"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("Usage: knobflow tune [OPTIONS] TARGET\n")
    assert "  TARGET  Target name, e.g. sqlite.  [required]\n" in text
    for shown in ("--set-workload KEY=VALUE", "--rules FILE", "--policy POLICY", "--workload FILE",
                  "--budget INTEGER", "--time-budget FLOAT", "--knobs NAME,...",
                  "--tuner [tpe|random|cmaes|nsga2|surrogate]", "--home DIR", "--resume "):
        assert shown in text, shown
    words = " ".join(text.split())  # the help is wrapped to the terminal's width
    choices = words[words.index(" Choices: "):words.index(" Examples: ")]
    assert f" TARGET {', '.join(available_targets())} (knobflow targets describes" in choices
    assert " --tuner tpe, random, cmaes, nsga2, surrogate --policy durability (postgres, " \
           "redis, sqlite); and the policies your --rules files define --objective" in choices
    assert "\n    knobflow tune sqlite --budget 20\n" in text  # a command is never wrapped
    assert words.endswith(
        "Exit codes: 0 done 1 failed: no usable result (no trial completed, no config found and "
        "verified), a regression (check-regression, tune --fail-on-regression), or knobflow "
        "itself crashed 2 bad input: one line on stderr names the file or "
        "option, what is wrong and the fix; nothing is stored 130 interrupted (Ctrl-C, SIGTERM); "
        "finished trials are kept, continue with --resume")


@pytest.mark.parametrize("words", [w for w, _ in _commands()] + [()], ids=" ".join)
def test_help_shows_no_python_types_and_no_markup(words: tuple[str, ...]) -> None:
    result = invoke_cli([*words, "--help"])
    assert result.returncode == 0, result.stderr
    assert not RAW_TYPE.search(result.stdout), RAW_TYPE.search(result.stdout)
    assert "``" not in result.stdout and "{" not in result.stdout.splitlines()[0]
    assert "<list[" not in result.stdout


@pytest.mark.parametrize("words", LEAVES, ids=" ".join)
def test_every_command_takes_home(words: tuple[str, ...]) -> None:
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert "--home" in options


def test_every_command_runs_with_home(home: Path, tmp_path: Path) -> None:
    """Each command that needs no job or server runs with --home (tune's runs are in
    test_cli.py, check-target's in tests/targets/test_contract_guide.py, warm's in
    test_warm.py)."""
    config = tmp_path / "best.yaml"
    config.write_text("cache_size: -2000\n", encoding="utf-8")
    expert = REPO / "tests" / "data" / "expert" / "sqlite.csv"
    runs = {
        ("targets",): 0,
        ("knobs", "sqlite"): 0,
        ("validate", "sqlite", str(config)): 0,
        ("rules", "check", str(REPO / "rules" / "sets" / "sqlite.yaml")): 0,
        ("rules", "list", "sqlite"): 0,
        ("import", "sqlite", str(expert)): 0,
        ("export", "sqlite", "--out", str(tmp_path / "t.parquet")): 0,
        ("rules", "accept", "sqlite", "no-such-rule"): 2,
        ("rules", "drop", "sqlite", "no-such-rule"): 2,
        ("instance", "list"): 0,
        ("instance", "add", "nope", "--service", "s", "--target", "redis", "--connect",
         f"unix://{tmp_path}/no.sock"): 1,
        ("instance", "start", "nope", "--target", "rocksdb"): 2,  # no live driver
        ("instance", "show", "nope"): 2,
        ("instance", "stop", "nope"): 2,
        ("instance", "remove", "nope"): 2,
        ("instance", "workload", "nope", "clients=2"): 2,
        ("instance", "policy", "nope"): 2,
        ("observe", "nope"): 2,
        ("recommend", "nope"): 2,
        ("apply", "nope"): 2,
        ("history", "nope"): 2,
        ("watch", "nope", "--once"): 2,
        ("report", "nope"): 2,
        ("serve", "--list", "--target", "nope"): 2,
        ("doctor",): 0,
        ("check-regression", "nope"): 2,
        ("service", "show", "nope"): 0,  # a service never set has the defaults
        ("service", "set", "nope", "approval=maybe"): 2,
        ("approve", "nope"): 2,  # no Prefect server here
        ("reject", "nope"): 2,
        ("approvals",): 2,
    }
    grouped = ("rules", "instance", "service")
    assert {words[:2] if words[0] in grouped else words[:1] for words in runs} | {
        ("tune",), ("check-target",), ("warm",)} == set(LEAVES)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # whatever ran before
        for args, code in runs.items():
            result = invoke_cli([*args, "--home", str(home)])
            assert result.returncode == code, (args, result.stderr)
            assert "No such option" not in result.stderr
    assert expert_path(home, "sqlite").exists()  # import stored under --home


def test_targets_reads_at_100_columns() -> None:
    result = run_cli(["targets"], env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    assert "``" not in result.stdout and " sqlite3 " in result.stdout  # the docstring's


@pytest.mark.parametrize("target", ["rocksdb", "redis", "postgres", "sqlite"])
def test_knobs_reads_at_100_columns(target: str) -> None:
    result = run_cli(["knobs", target], env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    spec = load_target(target).knob_spec()
    firsts = [line.split()[0] for line in lines if line.strip()]
    for knob in spec:  # each knob's name whole, at the start of its entry, with its facts
        row = next(line for line in lines if line.split()[:1] == [knob.name])
        assert f"{knob.type} " in row, row
    assert sum(word in spec.names for word in firsts) == len(spec)
