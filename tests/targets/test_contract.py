"""The target contract (``flows/contract.py``) run against every registered target.

Built-in targets and any installed by entry point are collected; a target that cannot load or
declares no examples fails here rather than being skipped. A target whose executables are missing
is skipped, or fails when KNOBFLOW_REQUIRE_ALL_TARGETS is set (CI sets it; ``conftest.require``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import require

from flows.contract import CHECKS, ContractViolation, NotApplicable, Variant, variants
from targets.registry import available_targets


def _params() -> list:
    params = []
    for name in available_targets():
        try:
            found: list[Variant | str] = list(variants(name))
        except Exception as exc:  # cannot load, or no examples: fail below, never skip
            found = [f"{type(exc).__name__}: {exc}"]
        for v in found:
            label = f"{name}-{v.name}" if isinstance(v, Variant) else f"{name}-broken"
            params += [
                pytest.param(v, check, id=f"{label}-{check.__name__}") for check in CHECKS.values()
            ]
    return params


@pytest.mark.parametrize(("variant", "check"), _params())
def test_contract(variant: Variant | str, check, tmp_path: Path) -> None:
    if isinstance(variant, str):
        pytest.fail(variant)
    require(f"{variant.target}/{variant.name}", variant.missing_executables(), "on PATH")
    try:
        check(variant, tmp_path)
    except NotApplicable as exc:
        pytest.skip(str(exc))
    except ContractViolation as exc:
        pytest.fail(f"{variant.target}/{variant.name}: {exc}")


def test_only_the_hang_runs_under_the_short_timeout(tmp_path: Path) -> None:
    """A default slower than ``timeout_s`` (a loaded machine) passes; the hang still ends at it."""
    from flows.contract import check_default_runs, check_hang, check_side_by_side
    from targets.base import ContractExamples

    slow = ContractExamples(
        workload={"duration": 0.8, "noise": 0.0}, hang={"mode": "beta", "y": 500.0}, timeout_s=0.4
    )
    v = Variant("synthetic", "slow", slow)
    assert v.trial_timeout_s == v.cls.trial_timeout_s > 0.8
    check_default_runs(v, tmp_path / "default")
    check_side_by_side(v, tmp_path / "side")
    started = time.monotonic()
    hung = v.runner(tmp_path / "direct", timeout_s=slow.timeout_s).run(
        "hang", {**v.defaults(), **slow.hang}, "i1", seed=1
    )
    assert hung.failure_class == "timeout" and "0.4 s trial timeout" in hung.message
    assert time.monotonic() - started < v.cls.trial_timeout_s
    check_hang(v, tmp_path / "hang")
