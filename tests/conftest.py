"""Shared fixtures: one Prefect test harness per session, a knobflow home per test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from targets.common.settings import quiet_environment

quiet_environment()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("KNOBFLOW_HOME", None)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (the test harness: a temporary server and database) for the session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty knobflow state directory (Optuna journals, MLflow store, instances)."""
    path = tmp_path / "kf"
    path.mkdir()
    return path


def trial_processes(marker: str) -> list[int]:
    """PIDs of live trial processes whose command line mentions ``marker`` (a path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "tasks.trial_process" in cmd and marker in cmd:
                found.append(int(entry.name))
    return found


def start_cli(args: list[str], api_url: str) -> subprocess.Popen[str]:
    """Start ``knobflow ARGS`` in the background against the session's Prefect API."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env={**os.environ, "PREFECT_API_URL": api_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    args: list[str],
    *,
    api_url: str | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``knobflow ARGS`` in a new process, as a user would, and capture its output."""
    full_env = {**os.environ, **(env or {})}
    if api_url:
        full_env["PREFECT_API_URL"] = api_url  # use the session's server, not a new ephemeral one
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=full_env,
        timeout=timeout,
        check=False,
    )
