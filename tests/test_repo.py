"""Repository-level checks: CI runs what the README says, the code is ruff-clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", readme, flags=re.S)


def test_readme_starts_with_the_job_command_then_the_test_command() -> None:
    commands = _readme_commands()
    assert "knobflow tune rocksdb --budget 20" in commands[0]
    assert re.search(r"&& \.venv/bin/pytest( -n 2 --dist worksteal)?$", commands[1].rstrip())


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1].strip() in [line.strip() for line in ci]


RUFF = Path(sys.executable).parent / "ruff"


@pytest.mark.skipif(not RUFF.exists(), reason="ruff is not installed beside this Python")
def test_code_is_ruff_clean() -> None:
    ruff = str(RUFF)
    result = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=REPO,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
