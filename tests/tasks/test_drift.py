"""Drift on constructed windows: the rule (significant and beyond the relative threshold), few
windows, scale, the policy keys, the reference file and what an actuation leaves as reference,
the observed workload a re-tune is given."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from targets.common.errors import KnobflowError
from targets.live import Window
from tasks.actlog import ActuationLog, Outcome, Phase
from tasks.drift import DriftConfig, DriftReport, Evidence, compare, observed_workload, psi
from tasks.instances import DEFAULT_POLICY, Instance, InstanceStore, check_policy
from tasks.reference import (
    Reference,
    load_reference,
    reference_from_actuation,
    reference_path,
    save_reference,
)

CONFIG = DriftConfig(objective="throughput")


def windows(shift: list[float], throughput: list[float] | None = None,
            counters: dict[str, float] | None = None) -> list[Window]:
    throughput = throughput or [1000.0] * len(shift)
    return [Window(start=float(i), seconds=1.0, metrics={"throughput": t},
                   fingerprint={"shift": s}, counters=dict(counters or {}))
            for i, (s, t) in enumerate(zip(shift, throughput, strict=True))]


def noisy(mean: float, sd: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def evidence(report: DriftReport, name: str) -> Evidence:
    return next(e for e in report.evidence if e.name == name)


def test_a_shifted_workload_drifts_and_an_unchanged_one_does_not() -> None:
    reference = Reference(windows(noisy(0.2, 0.01, 8, 1)), {})
    moved = compare(reference, windows(noisy(0.6, 0.01, 8, 2)), CONFIG)
    shift = evidence(moved, "shift")
    assert moved.drifted and shift.drifted and shift.test == "ks" and shift.p < 0.01
    assert shift.change == pytest.approx(2.0, rel=0.1)
    assert moved.summary.startswith("drift: shift 0.198 -> 0.601 (+203%, fingerprint)")
    same = compare(reference, windows(noisy(0.2, 0.01, 8, 3)), CONFIG)
    assert not same.drifted and same.summary.startswith("no drift in 2 features")
    assert json.loads(json.dumps(moved.to_dict()))["evidence"][0]["name"] == "shift"


def test_noise_alone_or_a_small_significant_change_is_no_drift() -> None:
    reference = Reference(windows([0.5] * 30, noisy(1000, 300, 30, 4)), {})
    noise = compare(reference, windows([0.5] * 30, noisy(1000, 300, 30, 5)), CONFIG)
    assert not noise.drifted
    # 10 % slower, clearly so over 30 quiet windows, but below drift_perf_rel (30 %)
    quiet = Reference(windows([0.5] * 30, noisy(1000, 5, 30, 6)), {})
    slower = compare(quiet, windows([0.5] * 30, noisy(900, 5, 30, 7)), CONFIG)
    perf = evidence(slower, "throughput")
    assert perf.significant and perf.change == pytest.approx(-0.1, abs=0.02)
    assert not perf.drifted and not slower.drifted
    halved = compare(quiet, windows([0.5] * 30, noisy(500, 5, 30, 8)), CONFIG)
    assert evidence(halved, "throughput").drifted and evidence(halved, "throughput").kind \
        == "performance"


def test_few_windows_need_full_separation_and_one_window_cannot_drift() -> None:
    reference = Reference(windows([0.0, 0.0, 0.0]), {})
    apart = compare(reference, windows([0.8, 0.8, 0.8]), CONFIG)
    shift = evidence(apart, "shift")
    assert shift.test == "ks, few windows" and shift.p > 0.01 and shift.drifted  # p = 0.1
    assert shift.change is None and shift.change_text() == "from 0"
    overlap = compare(reference, windows([0.8, 0.0, 0.8]), CONFIG)
    assert not evidence(overlap, "shift").drifted
    single = compare(Reference(windows([0.0]), {}), windows([0.8]), CONFIG)
    assert evidence(single, "shift").test == "too few windows" and not single.drifted
    assert "too few windows to test shift, throughput" in single.summary


def test_scale_counts_by_relative_change_alone() -> None:
    config = DriftConfig(objective="throughput", scale=("used_memory_bytes",))
    reference = Reference(windows([0.5] * 3, counters={"used_memory_bytes": 1e8}), {},
                          host={"cpu_count": 2.0})
    grown = compare(reference, windows([0.5] * 3, counters={"used_memory_bytes": 2e8}), config,
                    host={"cpu_count": 2.0})
    memory = evidence(grown, "used_memory_bytes")
    assert grown.drifted and memory.kind == "scale" and memory.test == "relative"
    assert memory.change == pytest.approx(1.0)
    little = compare(reference, windows([0.5] * 3, counters={"used_memory_bytes": 1.1e8}),
                     config, host={"cpu_count": 2.0})
    assert not little.drifted
    cores = compare(reference, windows([0.5] * 3, counters={"used_memory_bytes": 1e8}), config,
                    host={"cpu_count": 8.0})
    assert cores.drifted and evidence(cores, "cpu_count").drifted
    assert "shift" not in {e.name for e in cores.evidence if e.drifted}


def test_psi_and_the_policy_keys() -> None:
    assert psi([0.0] * 5, [0.8] * 5) > 2 and psi([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == 0.0
    policy = check_policy({"drift_test": "psi", "drift_rel": 0.5}, "instance x")
    config = DriftConfig.of_policy(policy, objective="throughput")
    assert (config.test, config.rel, config.cooldown_s) == ("psi", 0.5, 1800.0)
    report = compare(Reference(windows([0.0] * 5), {}), windows([0.8] * 5), config)
    assert evidence(report, "shift").test == "psi" and report.drifted
    for bad, said in ((("drift_test", "t"), "policy 'drift_test' must be one of ks, psi"),
                      (("drift_alpha", 0.7), "policy 'drift_alpha' must be a number in (0.0, 0.5)"),
                      (("drift_cooldown_s", -1), "'drift_cooldown_s' must be a number of "),
                      (("drift_relative", 1), "unknown key 'drift_relative'")):
        with pytest.raises(KnobflowError, match=said.replace("(", r"\(").replace(")", r"\)")):
            check_policy(dict([bad]), "instance x")
    assert {k for k in DEFAULT_POLICY if k.startswith("drift_")} == {
        "drift_test", "drift_alpha", "drift_psi", "drift_rel", "drift_perf_rel",
        "drift_scale_rel", "drift_cooldown_s"}


def _instance(home: Path, target: str = "synthetic", **workload: object) -> Instance:
    return InstanceStore(home).add(Instance(name="i-1", service="s", target=target,
                                            url="synthetic:///nowhere", workload=workload))


def test_the_reference_file_round_trips_and_a_bad_one_names_the_fix(home: Path) -> None:
    _instance(home)
    assert load_reference(home, "i-1") is None
    saved = Reference(windows([0.1, 0.2]), {"x": 0.5}, source="first watch",
                      host={"cpu_count": 2.0})
    save_reference(home, "i-1", saved)
    back = load_reference(home, "i-1")
    assert back is not None and back.to_dict() == saved.to_dict()
    reference_path(home, "i-1").write_text("{not json")
    with pytest.raises(KnobflowError, match=r"reference.json: not a reference .*"
                       r"`knobflow watch i-1 --reset`"):
        load_reference(home, "i-1")


@pytest.mark.parametrize(("outcome", "shift"), [(Outcome.KEPT, 0.9), (Outcome.ROLLED_BACK, 0.1)])
def test_an_actuation_leaves_the_windows_of_the_config_it_ends_on(
        tmp_path: Path, outcome: Outcome, shift: float) -> None:
    log = ActuationLog(tmp_path / "actuations.jsonl")
    act = log.new_id()
    log.append(act, Phase.BEGIN, changes={"x": 1})

    def seen(value: float, config: dict[str, int]) -> dict[str, object]:
        return {"windows": [w.to_dict() for w in windows([value] * 2)], "config": config}

    log.append(act, Phase.OBSERVED_BEFORE, observation=seen(0.1, {"x": 0}))
    log.append(act, Phase.OBSERVED_AFTER, observation=seen(0.9, {"x": 1}))
    log.append(act, Phase.OBSERVED_AFTER, observation=seen(0.9, {"x": 1}))  # extended
    log.append(act, Phase.DONE, outcome=outcome.value)
    reference = reference_from_actuation(log.actuation(act), {"cpu_count": 2.0})
    assert reference is not None
    words = "kept" if outcome == Outcome.KEPT else "rolled back"
    assert reference.source == f"actuation {act} {words}"
    assert {w.fingerprint["shift"] for w in reference.windows} == {shift}
    assert len(reference.windows) == (4 if outcome == Outcome.KEPT else 2)
    assert reference.config == {"x": 1 if outcome == Outcome.KEPT else 0}
    log.append("other", Phase.DONE, outcome=Outcome.FAILED.value)
    assert reference_from_actuation(log.actuation("other")) is None


def test_the_observed_workload_is_a_valid_workload_of_the_target(home: Path) -> None:
    synthetic = _instance(home, noise=0.05)
    assert observed_workload(synthetic, windows([0.8, 0.8000004])) == {"noise": 0.05,
                                                                        "shift": 0.8}
    store = InstanceStore(home)
    store.remove("i-1")
    pg = _instance(home, target="postgres", builtin="select-only")
    seen = [Window(0.0, 1.0, {"tps": 1.0}, {"clients": c, "scale": 0.2, "read_ratio": 1.0})
            for c in (7.4, 7.8)]
    # clients: the mean, an integer; scale: kept in its limits (>= 1); read_ratio: no parameter
    assert observed_workload(pg, seen) == {"builtin": "select-only", "clients": 8, "scale": 1}
