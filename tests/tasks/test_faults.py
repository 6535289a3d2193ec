"""When the machine, not a config, fails trials (tasks/faults.py): a full disk stops a job at
once, a harness that fails before the target runs after a streak; anything else ends a streak."""

from __future__ import annotations

from targets.base import FailureClass
from targets.common.errors import DiskFull, HarnessBroken
from tasks.faults import HARNESS_STREAK, FaultWatch
from tuners.trials import TrialOutcome, TrialStatus


def _outcome(*, harness: bool = False, ok: bool = False, disk_full: bool = False) -> TrialOutcome:
    outcome = TrialOutcome(config={}, instance="i1", status=TrialStatus.OK, value=1.0)
    if not ok:
        outcome.fail(FailureClass.TARGET_ERROR if harness else FailureClass.CRASH, "it failed")
        outcome.log_tail = ["Traceback (most recent call last):",
                            "ModuleNotFoundError: No module named 'x'",
                            "knobflow trial process: failed before the target ran the config"]
    outcome.harness_fault, outcome.disk_full = harness, disk_full
    return outcome


def test_a_streak_of_harness_faults_stops_the_job_and_names_the_cause() -> None:
    watch = FaultWatch()
    for number in range(HARNESS_STREAK - 1):
        assert watch.after(number, "i1", _outcome(harness=True), "log") is None
    fault = watch.after(9, "i1", _outcome(harness=True), "/jobs/j/trials/9/log.txt")
    assert isinstance(fault, HarnessBroken)
    assert str(fault).startswith(f"trials {', '.join(map(str, [*range(HARNESS_STREAK - 1), 9]))}"
                                 " each failed before the target ran their config")
    assert "log ends: ModuleNotFoundError: No module named 'x'; see /jobs/j/trials/9/log.txt" in (
        str(fault))


def test_any_other_outcome_ends_the_streak() -> None:
    watch = FaultWatch(streak=2)
    for other in (_outcome(ok=True), _outcome()):  # a success, a config's crash
        assert watch.after(0, "i1", _outcome(harness=True), "log") is None
        assert watch.after(1, "i2", other, "log") is None
    assert watch.after(2, "i1", _outcome(harness=True), "log") is None
    assert isinstance(watch.after(3, "i2", _outcome(harness=True), "log"), HarnessBroken)


def test_a_full_disk_stops_at_once() -> None:
    fault = FaultWatch().after(4, "i2", _outcome(disk_full=True), "log")
    assert isinstance(fault, DiskFull)
    assert str(fault) == ("trial 4 on i2 failed: it failed; free some space, then continue the "
                          "job with --resume")
