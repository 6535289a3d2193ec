"""The error contract when the environment is wrong (issue 12, item 8): a read-only home, a dead
MLflow tracking server, a dead Prefect API each get one line that says what to do, exit 2, in
seconds; SIGTERM of a command that runs no trials does not talk about trials."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import CLI, REPO, run_cli, wait_for
from test_faults_teach_no_rules import small_disk


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_read_only_home_is_one_clear_line(tmp_path: Path) -> None:
    with small_disk(tmp_path / "ro", "1m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = run_cli(["tune", "synthetic", "--budget", "2", "--home", str(disk / "kf")])
    assert result.returncode == 2
    assert _one_line(result) == (
        f"knobflow: error: the knobflow home {disk / 'kf'} is not writable (Read-only file "
        f"system: {disk}); choose another with --home or KNOBFLOW_HOME, or make it writable")


@pytest.mark.parametrize(("variable", "message"), [
    ("MLFLOW_TRACKING_URI", "knobflow: error: the MLflow tracking server http://127.0.0.1:9 "
     "does not answer (cannot connect); start it, or unset MLFLOW_TRACKING_URI to use the "
     "embedded store under the knobflow home"),
    ("PREFECT_API_URL", "knobflow: error: the Prefect API http://127.0.0.1:9 does not answer "
     "(cannot connect); start the server, or unset PREFECT_API_URL to run with a temporary "
     "one"),
])
def test_a_dead_server_is_found_in_seconds(variable: str, message: str, home: Path) -> None:
    started = time.monotonic()
    result = run_cli(["tune", "synthetic", "--budget", "2", "--home", str(home)],
                     env={variable: "http://user:secret@127.0.0.1:9"
                          if variable == "MLFLOW_TRACKING_URI" else "http://127.0.0.1:9"},
                     timeout=120)
    assert result.returncode == 2
    assert _one_line(result) == message  # no password of the URL in it
    # MLflow's and Prefect's own clients retried for minutes; a bound of a minute guards that
    assert time.monotonic() - started < 60


def test_sigterm_of_a_command_without_trials_does_not_speak_of_trials() -> None:
    proc = subprocess.Popen([*CLI, "check-target", "sqlite"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # a trial process of the contract is running: the command's SIGTERM handler is installed
    wait_for(lambda: proc.poll() is not None or psutil.Process(proc.pid).children(),
             "the contract's first trial", timeout=60, interval=0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "knobflow: interrupted"
