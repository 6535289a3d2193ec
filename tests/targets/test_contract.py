"""The contract every target meets, run against every registered target, built-in or a user's.

Each target declares small inputs (``Target.contract_examples()``: a short workload, a config the
system refuses, a config that hangs); the same tests then show that the default config runs and
yields metrics, the effective config is read back, a refused config fails with its class, a hang
ends at the hard timeout and the instance is usable afterwards, two instances run side by side,
and no process outlives a trial. Set KNOBFLOW_REQUIRE_ALL_TARGETS=1 (CI does) to fail instead of
skip when a target's executables are missing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

from targets.base import MAXIMIZE, ContractExamples, Target
from targets.registry import available_targets, load_target, target_ref
from tasks.explore import TrialOutcome, TrialRunner


class Case(NamedTuple):
    target: str
    variant: str
    examples: ContractExamples
    problem: str = ""  # why the target cannot take part (it fails the suite, never skipped)


def _cases() -> list[Case]:
    cases = []
    for name in available_targets():
        try:
            examples = load_target(name).contract_examples()
        except Exception as exc:  # a target that cannot load fails the suite, it is not skipped
            cases.append(Case(name, "-", ContractExamples(workload={}), f"cannot load: {exc}"))
            continue
        if not examples:  # likewise a target without examples
            cases.append(Case(name, "-", ContractExamples(workload={}), "no contract_examples()"))
        cases += [Case(name, variant, ex) for variant, ex in examples.items()]
    return cases


CASES = _cases()


@pytest.fixture(params=CASES, ids=[f"{c.target}-{c.variant}" for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    if c.problem:
        pytest.fail(f"target '{c.target}': {c.problem}")
    missing = [exe for exe in c.examples.requires if shutil.which(exe) is None]
    if missing:
        reason = f"{c.target}/{c.variant} needs {', '.join(missing)} on PATH"
        if os.environ.get("KNOBFLOW_REQUIRE_ALL_TARGETS"):
            pytest.fail(reason)
        pytest.skip(reason)
    return c


def _cls(case: Case) -> type[Target]:
    return load_target(case.target)


def _runner(
    case: Case, root: Path, instance: str = "i1", timeout: float | None = None
) -> TrialRunner:
    cls = _cls(case)
    return TrialRunner(
        target_cls=cls,
        target_ref=target_ref(case.target),
        workload=cls.parse_workload(case.examples.workload, f"{case.target} contract workload"),
        objective=cls.default_objective,
        timeout_s=timeout or case.examples.timeout_s,
        job_dir=root / "job",
        instance_dirs={instance: root / instance},
    )


def _processes_using(path: Path) -> list[str]:
    """Processes (other than this one) whose command line or working directory is in ``path``."""
    found = []
    marker = str(path)
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if proc.info["pid"] == os.getpid():
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if marker in cmd or str(proc.info["cwd"] or "").startswith(marker):
            found.append(f"{proc.info['pid']}: {cmd[:120]}")
    return found


def _default(case: Case) -> dict:
    return _cls(case).knob_spec().defaults()


def _assert_ok(outcome: TrialOutcome) -> None:
    assert outcome.ok, f"{outcome.failure_class}: {outcome.message}\n" + "\n".join(outcome.log_tail)


def test_default_config_runs_and_its_effective_config_is_read_back(
    case: Case, tmp_path: Path
) -> None:
    cls = _cls(case)
    outcome = _runner(case, tmp_path).run("default", _default(case), "i1", seed=1)
    _assert_ok(outcome)
    objective = cls.default_objective
    assert objective in outcome.metrics
    if cls.metrics[objective] == MAXIMIZE:
        assert outcome.metrics[objective] > 0
    assert set(outcome.metrics) <= set(cls.metrics) | set(outcome.metrics)
    missing = set(cls.knob_spec().names) - set(outcome.effective_config)
    assert not missing, f"knobs not read back from the system: {sorted(missing)}"
    features = cls.workload_features(cls.parse_workload(case.examples.workload))
    assert features and all(isinstance(v, float) for v in features.values())


def test_refused_config_fails_with_its_class(case: Case, tmp_path: Path) -> None:
    if case.examples.refused is None:
        pytest.skip(f"{case.target} refuses no config")
    config = {**_default(case), **case.examples.refused}
    outcome = _runner(case, tmp_path).run("refused", config, "i1", seed=1)
    assert outcome.failure_class == case.examples.refused_class, outcome.message
    assert outcome.message.strip(), "a refused config must carry the system's message"
    assert outcome.value is None


def test_hang_ends_at_the_timeout_and_the_instance_stays_usable(case: Case, tmp_path: Path) -> None:
    if case.examples.hang is None:
        pytest.skip(f"{case.target} has no known hang")
    runner = _runner(case, tmp_path)
    started = time.monotonic()
    hung = runner.run("hang", {**_default(case), **case.examples.hang}, "i1", seed=1)
    elapsed = time.monotonic() - started
    assert hung.failure_class == "timeout", f"{hung.failure_class}: {hung.message}"
    assert elapsed < case.examples.timeout_s + 10, f"the hard timeout took {elapsed:.1f} s"
    assert _processes_using(tmp_path / "i1") == []
    _assert_ok(runner.run("after-hang", _default(case), "i1", seed=2))


def test_two_instances_run_side_by_side(case: Case, tmp_path: Path) -> None:
    runners = [_runner(case, tmp_path / name, name) for name in ("a", "b")]
    outcomes: dict[str, TrialOutcome] = {}

    def run(runner: TrialRunner, name: str) -> None:
        outcomes[name] = runner.run("side", _default(case), name, seed=3)

    threads = [
        threading.Thread(target=run, args=(r, n)) for r, n in zip(runners, "ab", strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=case.examples.timeout_s * 3)
    for name in "ab":
        _assert_ok(outcomes[name])


def test_nothing_outlives_a_trial(case: Case, tmp_path: Path) -> None:
    runner = _runner(case, tmp_path)
    _assert_ok(runner.run("once", _default(case), "i1", seed=4))
    assert _processes_using(tmp_path / "i1") == [], "a process started by the target survived"
    assert _processes_using(tmp_path / "job") == []
