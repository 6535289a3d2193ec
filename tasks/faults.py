"""When the machine, not a config, fails a job's trials: the exploration stops instead of
burning its budget.

Two faults stop an exploration (``tasks/explore.py``), each an ``EnvironmentFault`` whose
message says what to do; the job is left interrupted, and ``--resume`` continues it:

- a full disk (``TrialOutcome.disk_full``): at the first such trial;
- a broken harness (``TrialOutcome.harness_fault``: the trial process failed before the target
  ran its config, could not apply its isolation, or lost its launcher): after
  ``HARNESS_STREAK`` such trials in a row, across the job's instances. One may be a passing
  hiccup; several in a row, with different configs, are the set-up's (a target that does not
  import where trials run, an upgrade half done), and every later trial would fail the same way.
  Any other outcome (a success, a crash of a config, a timeout) ends the streak.
"""

from __future__ import annotations

import threading

from targets.common.errors import DiskFull, EnvironmentFault, HarnessBroken
from tuners.trials import TrialOutcome

__all__ = ["HARNESS_STREAK", "FaultWatch"]

#: Trials in a row failed before their target ran that stop a job.
HARNESS_STREAK = 3


class FaultWatch:
    """Hears every trial's outcome, in the order they end; says when the job must stop."""

    def __init__(self, streak: int = HARNESS_STREAK) -> None:
        self.streak = streak
        self._failed: list[int] = []  # trial numbers of the current streak
        self._lock = threading.Lock()  # instances' workers end trials concurrently

    def after(self, number: int, instance: str, outcome: TrialOutcome,
              log: str) -> EnvironmentFault | None:
        """The fault that stops the job after trial ``number`` (its log at ``log``), or None."""
        if outcome.disk_full:
            return DiskFull(f"trial {number} on {instance} failed: {outcome.message}; free some "
                            "space, then continue the job with --resume")
        with self._lock:
            if not outcome.harness_fault:
                self._failed.clear()
                return None
            self._failed.append(number)
            if len(self._failed) < self.streak:
                return None
            numbers = ", ".join(str(n) for n in self._failed)
        return HarnessBroken(
            f"trials {numbers} each failed before the target ran their config (not the "
            f"configs' fault); the last {_cause(outcome)}; see {log}. Fix the set-up (can the "
            "Python the trials run import the target? is the instance's directory writable?), "
            "then continue the job with --resume")


def _cause(outcome: TrialOutcome) -> str:
    """What the last trial says: its log's last telling line (an exception, as a rule), or its
    outcome's message."""
    said = [line.strip() for line in outcome.log_tail
            if line.strip() and not line.startswith("knobflow trial process:")]
    return f"one's log ends: {said[-1]}" if said else f"one: {outcome.message}"
