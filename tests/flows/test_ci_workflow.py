"""The example CI workflow (``infra/ci/github-actions.yml``) parses, keeps its secrets off command
lines, fails with the deployment run, publishes the report, and runs only real commands: every
``knobflow`` command and option it uses is in the command's help, every ``prefect`` option in
Prefect's own."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from flows.cli import app
from tests.conftest import REPO

WORKFLOW = REPO / "infra" / "ci" / "github-actions.yml"


def _workflow() -> dict[str, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and doc["jobs"]
    return doc


def _steps() -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in _workflow()["jobs"].items() for step in job["steps"]]


def _command_lines(script: str) -> list[list[str]]:
    """The shell words of each line of ``script`` (continuations joined, here-documents and
    ``x=$(...)`` assignments skipped)."""
    lines, heredoc = [], None
    for line in script.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        found = re.search(r"<<'?(\w+)'?", line)
        if found:
            heredoc = found.group(1)
        if line.strip() and not re.match(r"\s*\w+=\$\(", line):
            lines.append(shlex.split(line.split("<<")[0].split(">")[0]))
    return lines


def _runs(program: str) -> list[list[str]]:
    return [words for _, step in _steps() if "run" in step
            for words in _command_lines(step["run"]) if words[:1] == [program]]


def test_the_workflow_parses_and_keeps_secrets_off_command_lines() -> None:
    doc = _workflow()
    assert set(doc[True]) == {"pull_request", "workflow_dispatch"}  # YAML 1.1 reads on: as true
    for name, step in _steps():
        assert "secrets." not in step.get("run", ""), (name, step["run"])
    run_job = doc["jobs"]["deployment-run"]
    assert run_job["env"] == {"PREFECT_API_URL": "${{ secrets.PREFECT_API_URL }}",
                              "PREFECT_API_AUTH_STRING": "${{ secrets.PREFECT_API_AUTH_STRING }}"}
    (deployment,) = _runs("prefect")
    assert deployment[1:4] == ["deployment", "run", "$DEPLOYMENT"] and "--watch" in deployment
    assert doc["env"]["DEPLOYMENT"].startswith("check-regression/")
    # the report is published when the check fails too
    for job in ("deployment-report", "tune-direct"):
        steps = doc["jobs"][job]["steps"]
        report = next(s for s in steps if "knobflow report" in s.get("run", ""))
        upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
        assert "report.html" in upload["with"]["path"]
        assert "always()" in (doc["jobs"][job].get("if", "") + report.get("if", ""))
    assert any("--fail-on-regression" in words for words in _runs("knobflow"))


def test_every_knobflow_command_and_option_it_runs_exists() -> None:
    root = typer.main.get_command(app)
    seen = set()
    for words in _runs("knobflow"):
        command, rest = root, words[1:]
        while hasattr(command, "commands") and rest and rest[0] in command.commands:
            command, rest = command.commands[rest[0]], rest[1:]
        assert not hasattr(command, "commands"), f"no knobflow command {words[1:3]}"
        options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=")[0] in options, (words, word)
        seen.add(command.name)
    assert {"tune"} <= seen


def test_every_prefect_option_it_runs_exists() -> None:
    prefect = str(Path(sys.executable).with_name("prefect"))
    for words in _runs("prefect"):
        command = [w for w in words[1:] if not w.startswith(("-", "$"))][:2]
        done = subprocess.run([prefect, *command, "--help"], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        for word in words:
            if word.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", done.stdout), word
