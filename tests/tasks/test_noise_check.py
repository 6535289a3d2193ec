"""Noise on a shared machine: the default is run several times before the search, a spread above
the threshold switches on repeats and baselines (unless the user chose them), and verification
adds pairs until its interval is decisive or the cap is reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from targets.synthetic import SyntheticTarget
from tasks.noise import check_noise, spread
from tasks.probe import probe_noise
from tasks.runner import TrialRunner
from tasks.verify import verify_best

DEFAULT = SyntheticTarget.knob_spec().defaults()
BETTER = {"x": 0.25, "y": 1.3, "threads": 8, "buffer_kb": 1024, "mode": "alpha",
          "compress": False}
BOTH = ("repeats", "baseline_every")


def make_runner(tmp_path: Path, noise: float) -> TrialRunner:
    return TrialRunner(
        target_cls=SyntheticTarget, target_ref="targets.synthetic:SyntheticTarget",
        workload=SyntheticTarget.parse_workload({"noise": noise, "duration": 0.0,
                                                 "intervals": 1}),
        objective="throughput", timeout_s=10.0, job_dir=tmp_path / "job",
        instance_dirs={"i1": tmp_path / "i1"})


def test_a_noisy_default_switches_on_repeats_and_baselines_and_says_so() -> None:
    check = check_noise([100.0, 118.0, 103.0], 3, 0.1, repeats=1, baseline_every=0, free=BOTH)
    assert check.noisy and check.spread == pytest.approx(18 / (321 / 3))
    assert (check.repeats, check.baseline_every, check.switched) == (2, 5, list(BOTH))
    assert check.message == ("noisy machine: default varied 17 % over 3 runs; repeating each "
                             "trial 2x and the default every 5 trials")


def test_a_quiet_default_switches_nothing_on() -> None:
    check = check_noise([100.0, 104.0, 101.0], 3, 0.1, repeats=1, baseline_every=0, free=BOTH)
    assert not check.noisy and (check.repeats, check.baseline_every) == (1, 0)
    assert check.message == ("quiet machine: default varied 4 % over 3 runs (threshold 10 %); "
                             "each trial runs once")


def test_what_the_user_gave_is_kept() -> None:
    values = [100.0, 130.0, 100.0]
    only_baselines = check_noise(values, 3, 0.1, repeats=1, baseline_every=0,
                                 free=["baseline_every"])
    assert (only_baselines.repeats, only_baselines.baseline_every) == (1, 5)
    assert only_baselines.message == ("noisy machine: default varied 27 % over 3 runs; repeating "
                                      "the default every 5 trials (--repeats 1 as given)")
    neither = check_noise(values, 3, 0.1, repeats=3, baseline_every=0, free=[])
    assert (neither.repeats, neither.baseline_every, neither.switched) == (3, 0, [])
    assert neither.message == ("noisy machine: default varied 27 % over 3 runs; keeping "
                               "--repeats 3 and --baseline-every 0 as given")


def test_too_few_values_measure_no_noise() -> None:
    check = check_noise([100.0], 3, 0.1, repeats=1, baseline_every=0, free=BOTH,
                        failures=["run 1: crash: boom", "run 2: crash: boom"])
    assert not check.noisy and (check.repeats, check.baseline_every) == (1, 0)
    assert check.message.startswith("noise not measured: the default gave a value in 1 of 3 "
                                    "runs (run 1: crash: boom")
    assert spread([]) == spread([5.0]) == 0.0


def test_the_probe_runs_the_default_as_often_as_asked(tmp_path: Path) -> None:
    heard: list[str] = []
    check = probe_noise.fn(make_runner(tmp_path, noise=0.5), DEFAULT, "i1", 4, 0.1, repeats=1,
                           baseline_every=0, free=BOTH, on_run=lambda k, o: heard.append(k))
    assert heard == ["noise-0", "noise-1", "noise-2", "noise-3"]
    assert len(check.values) == 4 and len(set(check.values)) == 4  # four draws, not one
    assert check.noisy and check.repeats == 2


@pytest.mark.parametrize(("noise", "best", "pairs", "reason"), [
    # a real gain and no noise: decisive after the first 3 pairs
    (0.0, BETTER, 3, "decisive after 3 pairs: the 95% interval 3.148-3.148 lies above 1.0"),
    # the same config on both sides, almost no noise: the interval is within +-2 % of 1
    (0.002, DEFAULT, 3, "lies within +-2 % of 1.0"),
    # the same config on both sides, much noise: never decisive, the cap stops it
    (0.4, DEFAULT, 5, "cap of 5 pairs reached: the 95% interval still includes 1.0"),
])
def test_verification_stops_when_decisive_or_at_the_cap(
    tmp_path: Path, noise: float, best: dict, pairs: int, reason: str
) -> None:
    runs: list[str] = []
    result = verify_best.fn(make_runner(tmp_path, noise), DEFAULT, best, "maximize", 5, "i1",
                            on_run=lambda label, r, o: runs.append(f"{r}-{label}"))
    assert result.pairs == pairs and len(result.best_values) == pairs
    assert len(runs) == 2 * pairs
    assert reason in result.stop_reason


def test_the_probe_stops_at_the_first_failure(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, noise=0.5)
    # no run of the default finishes: each takes 5 s against a 0.2 s timeout (a forked trial
    # process starts in ~7 ms, so an instant run would finish in a 10 ms timeout)
    runner.workload = {**runner.workload, "duration": 5.0}
    runner.timeout_s = 0.2
    heard: list[str] = []
    check = probe_noise.fn(runner, DEFAULT, "i1", 3, 0.1, repeats=1, baseline_every=0,
                           free=BOTH, on_run=lambda k, o: heard.append(k))
    assert heard == ["noise-0"]
    assert check.message.startswith("noise not measured: the default gave a value in 0 of 3 "
                                    "runs (run 0: timeout: ")
    assert (check.repeats, check.baseline_every) == (1, 0)
