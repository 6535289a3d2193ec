"""benchmarks/transfer.py, scaling.py, job_cost.py, trial_path.py, real_samplers.py,
stack_tracking.py, import_gc.py and recommend.py refuse bad arguments with the exact error,
before running anything; samplers.py's interval of a ratio to TPE pairs the seeds, and its
``synthetic`` is measured as a trial of the target is (``synthetic-noisy``: with 3 % noise)."""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


@pytest.mark.parametrize(("script", "args", "error"), [
    # a per-trial cost needs 2 trials at least; said before any job
    ("job_cost.py", ["--trials", "1"], "argument --trials: '1': a whole number >= 2"),
    ("trial_path.py", ["--trials", "1"], "argument --trials: '1': a whole number >= 2"),
    ("trial_path.py", ["--space", "wide"], "argument --space: invalid choice: 'wide' "
     "(choose from 'whole', 'narrow')"),
    ("stack_tracking.py", ["--trials", "0"], "--trials and --rounds must be at least 1"),
    ("stack_tracking.py", ["--rounds", "0"], "--trials and --rounds must be at least 1"),
    ("import_gc.py", ["--rounds", "0"], "--rounds must be at least 1"),
    ("recommend.py", ["--max-knobs", "0"], "--max-knobs must be at least 1"),
])
def test_a_benchmark_refuses_bad_arguments_before_it_runs(script: str, args: list[str],
                                                          error: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"{script}: error: {error}"


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


def _samplers() -> ModuleType:
    """benchmarks/samplers.py as a module (it is a script, not in a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import samplers
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return samplers


def test_the_samplers_ratio_interval_pairs_the_seeds() -> None:
    """benchmarks/samplers.py's interval of the ratio to TPE resamples seeds, not values: a
    sampler at half of TPE's regret on every seed is at 0.5 in every resample; unpaired, the
    medians of independent resamples would spread around it."""
    ratio_interval = _samplers().ratio_interval
    tpe = [0.01 * (1 + i % 7) for i in range(20)]
    assert ratio_interval([t / 2 for t in tpe], tpe) == pytest.approx((0.5, 0.5))
    low, high = ratio_interval(tpe[::-1], tpe)  # the same values, other seeds: not paired
    assert low < 1.0 < high
    assert all(math.isnan(x) for x in ratio_interval([0.1, 0.2], [0.1]))  # no pairs: NaN


def test_the_samplers_synthetic_problem_measures_as_a_trial_of_the_target(tmp_path: Path) -> None:
    """benchmarks/samplers.py's ``synthetic`` is measured as a run of ``SyntheticTarget`` is (the
    mean of its intervals' noisy rates): the same spread around the true value, not the one
    interval's 3 % that a single draw would give."""
    from targets.synthetic import SyntheticTarget

    problem = _samplers().problem
    prob = problem("synthetic")
    config = dict(prob.default or {})
    truth = SyntheticTarget.true_value(config, SyntheticTarget.workload_defaults)
    rng = random.Random(0)
    benchmark = [-prob.evaluate(dict(config), rng) / truth for _ in range(400)]  # type: ignore[operator]
    runs = []
    for seed in range(400):
        target = SyntheticTarget(tmp_path, {**SyntheticTarget.workload_defaults, "duration": 0.0},
                                 seed=seed)
        target.start(config)
        runs.append(target.run().metrics["throughput"] / truth)
    spread = statistics.stdev(benchmark)
    assert statistics.stdev(runs) == pytest.approx(spread, rel=0.2)
    assert spread < 0.02  # one interval's draw would spread by 0.03
    assert statistics.fmean(benchmark) == pytest.approx(1.0, abs=0.005)
    noisy = problem("synthetic-noisy")  # 3 % on a trial's mean, as real trials here
    spread = statistics.stdev(-noisy.evaluate(dict(config), rng) / truth  # type: ignore[operator]
                              for _ in range(400))
    assert spread == pytest.approx(0.03, rel=0.2)
