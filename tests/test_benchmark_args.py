"""benchmarks/transfer.py, scaling.py, job_cost.py, trial_path.py, real_samplers.py and
stack_tracking.py refuse bad arguments with the exact error, before running anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("args", "error"), [
    (["--targets", "synthetic,nope"], "transfer.py: error: --targets: unknown setup 'nope'; one "
     "of synthetic, sqlite, synthetic-far, synthetic-chain"),
    (["--reuse"], "transfer.py: error: --reuse needs --keep DIR"),
])
def test_bad_arguments_exit_2_with_the_error(args: list[str], error: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer.py"), *args,
                           "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == error
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(("args", "error"), [
    (["--workers", "2,4"], "scaling.py: error: --workers: the first count must be 1 (the "
     "speed-up's base)"),
    (["--clients", "0,2"], "scaling.py: error: argument --clients: '0,2': a comma list of "
     "whole numbers >= 1"),
])
def test_scaling_refuses_bad_counts(args: list[str], error: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), *args,
                           "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == error
    assert not (tmp_path / "p.png").exists()


def test_job_cost_refuses_too_few_trials() -> None:
    """benchmarks/job_cost.py: a per-trial cost needs 2 trials at least; said before any job."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "job_cost.py"),
                           "--trials", "1"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "job_cost.py: error: argument --trials: '1': a whole number >= 2")


@pytest.mark.parametrize(("args", "error"), [
    (["--trials", "1"], "trial_path.py: error: argument --trials: '1': a whole number >= 2"),
    (["--space", "wide"], "trial_path.py: error: argument --space: invalid choice: 'wide' "
     "(choose from 'whole', 'narrow')"),
])
def test_trial_path_refuses_bad_arguments(args: list[str], error: str) -> None:
    """benchmarks/trial_path.py: said before any job runs."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trial_path.py"), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == error


@pytest.mark.parametrize(("args", "error"), [
    (["--targets", "sqlite,nope"], "argument --targets: unknown target 'nope'; valid: sqlite, "
     "rocksdb"),
    (["--tuners", "tpe,tpe"], "argument --tuners: a tuner is named twice in 'tpe,tpe'"),
    (["--trials", "1"], "argument --trials: 1 is below the minimum 2"),
    (["--rounds", "x"], "argument --rounds: 'x' is not an integer"),
])
def test_real_samplers_refuses_bad_arguments(args: list[str], error: str,
                                             tmp_path: Path) -> None:
    """benchmarks/real_samplers.py: said before any job runs, and no plot is written."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_samplers.py"), *args,
                           "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"real_samplers.py: error: {error}"
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("args", [["--trials", "0"], ["--rounds", "0"]])
def test_stack_tracking_refuses_counts_below_one(args: list[str]) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stack_tracking.py"), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "stack_tracking.py: error: --trials and --rounds must be at least 1")


def test_import_gc_refuses_rounds_below_one() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "import_gc.py"),
                           "--rounds", "0"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "import_gc.py: error: --rounds must be at least 1")
