"""Measurement cleaning: every corrupted or misleading measurement is rejected, with its reason.

The cases are files under ``tests/data/measurements/``: each one a real measurement of a target
(saved from a real trial, samples trimmed) with exactly one thing broken, the substring its
rejection reason must contain and, in ``why``, what is wrong with it. The measurements under
``good/`` are real and must pass, documented roundings included. A case whose ``gate_problem``
says why the gate wrongly accepts it is an expected failure until the gate is fixed.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from targets.base import Measurement
from targets.registry import load_target, target_ref
from targets.synthetic import SyntheticTarget
from tasks.clean import Cleaned, clean_measurement
from tasks.explore import explore
from tasks.runner import TrialRunner
from tuners.space import parse_space
from tuners.trials import ATTR

DATA = Path(__file__).resolve().parent.parent / "data" / "measurements"
BAD = sorted(DATA.glob("*.json"))
GOOD = sorted((DATA / "good").glob("*.json"))
TARGETS = ("sqlite", "rocksdb", "postgres", "redis", "synthetic")


@cache
def load_case(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def clean(case: dict[str, Any]) -> Cleaned:
    return clean_measurement(
        Measurement.from_dict(case["measurement"]),
        load_target(case["target"]),
        case["objective"],
        case["requested"],
    )


def bad_cases() -> list[Any]:
    params = []
    for path in BAD:
        problem = load_case(path).get("gate_problem")
        marks = [pytest.mark.xfail(strict=True, reason=problem)] if problem else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in BAD + GOOD])
def test_case_file_describes_a_measurement_of_its_target(path: Path) -> None:
    case = load_case(path)
    assert case["target"] in TARGETS
    target_cls = load_target(case["target"])
    assert case["objective"] in target_cls.metrics
    assert case["why"].strip() and "\n" not in case["why"]
    assert ("reason" in case) == (path.parent == DATA), "bad cases need a reason, good ones none"
    assert set(case["requested"]) <= set(target_cls.knob_spec().names), "knobs of the spec only"
    assert set(case["measurement"]) <= set(Measurement.__dataclass_fields__)


def test_the_corpus_covers_every_target() -> None:
    assert len(BAD) >= 30
    assert {load_case(p)["target"] for p in BAD} == set(TARGETS)
    assert {load_case(p)["target"] for p in GOOD} == set(TARGETS)


@pytest.mark.parametrize("path", bad_cases())
def test_bad_measurement_is_rejected_with_its_reason(path: Path) -> None:
    case = load_case(path)
    cleaned = clean(case)
    assert not cleaned.valid, f"accepted: {case['why']}"
    assert any(case["reason"] in r for r in cleaned.reasons), cleaned.reasons
    assert all(r.strip() and "\n" not in r for r in cleaned.reasons), cleaned.reasons


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in GOOD])
def test_real_measurement_passes(path: Path) -> None:
    case = load_case(path)
    cleaned = clean(case)
    assert cleaned.valid, cleaned.reasons
    assert cleaned.reasons == []
    assert case["objective"] in cleaned.metrics


@pytest.mark.parametrize(
    ("good", "knob"),
    [
        ("synthetic_buffer_kb_rounded", "buffer_kb"),
        ("postgres_wal_buffers_rounded", "wal_buffers"),
        ("rocksdb_merge_sanitized", "min_write_buffer_number_to_merge"),
    ],
)
def test_documented_rounding_is_a_changed_knob_not_a_reason(good: str, knob: str) -> None:
    cleaned = clean(load_case(DATA / "good" / f"{good}.json"))
    assert cleaned.valid, cleaned.reasons
    assert cleaned.changed_knobs == [knob]  # the float settings printed to 6 digits are not


@pytest.mark.parametrize(
    ("case", "word"),
    [
        ("sqlite_knob_not_read_back", "cache_spill"),
        ("sqlite_sample_nan", "latency_mean_us"),
    ],
)
def test_reason_names_what_is_wrong(case: str, word: str) -> None:
    cleaned = clean(load_case(DATA / f"{case}.json"))
    assert not cleaned.valid
    assert word in cleaned.reason


def test_no_rejected_trial_reaches_the_tuner(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trial process applies buffer_kb with synthetic's own _effective() (rounded down to a
    # multiple of 16); cleaning, in this process, expects SyntheticTarget.normalize_config(). Not
    # rounding there makes every buffer_kb that is not a multiple of 16 an undocumented change.
    monkeypatch.setattr(
        SyntheticTarget, "normalize_config", classmethod(lambda cls, config: dict(config))
    )
    space = parse_space(
        {"knobs": {"buffer_kb": {"range": [16, 64], "log": False}}},
        SyntheticTarget.knob_spec(),
        "test space",
    )
    runner = TrialRunner(
        target_cls=SyntheticTarget,
        target_ref=target_ref("synthetic"),
        workload=SyntheticTarget.parse_workload({"noise": 0.0, "duration": 0.01, "intervals": 3}),
        objective="throughput",
        timeout_s=10.0,
        job_dir=tmp_path / "job",
        instance_dirs={"i1": tmp_path / "i1"},
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    study.enqueue_trial({"buffer_kb": 48})  # applied as requested
    study.enqueue_trial({"buffer_kb": 40})  # applied as 32
    stats = explore(study, space, runner, budget=6)

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    for trial in trials:
        record = trial.user_attrs[ATTR]
        assert record["effective_config"]["buffer_kb"] % 16 == 0  # the system did round
        if trial.params["buffer_kb"] % 16:
            assert record["reasons"], record
            changed = f"buffer_kb requested {trial.params['buffer_kb']}, applied"
            assert any(changed in r for r in record["reasons"]), record["reasons"]
        if record["reasons"]:
            assert trial.state == TrialState.FAIL and trial.value is None
            assert record["status"] == "failed" and record["value"] is None
            assert record["failure_class"] == "invalid_measurement"
        else:
            assert trial.state == TrialState.COMPLETE
            assert record["value"] is not None
            assert trial.value == record["value"]
    states = [t.state for t in trials]
    assert TrialState.COMPLETE in states and TrialState.FAIL in states
    assert stats.failed == states.count(TrialState.FAIL)
    assert study.best_trial.params["buffer_kb"] % 16 == 0
