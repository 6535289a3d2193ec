"""What a tuning job's time went to: ``duration_s``, ``fixed_s`` and ``trials_s`` of ``--json``.

``duration_s`` is the whole command's time: from the start of the process when the ``knobflow``
command runs the job (the interpreter, the imports and the Prefect server's start included), else
from the flow's start (a flow called from Python, a deployment's run). ``fixed_s`` is what the
job pays whatever its budget, by part (``FIXED``; ``other`` is the rest: checks, the flow run's
bookkeeping, the report) with its ``total``; ``trials_s`` is the exploration itself.

The command notes its own parts (``command_started``, ``command_phase``) before the flow starts;
the flow's ``JobClock`` takes them over once, so a second job in the same process starts anew.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["FIXED", "JobClock", "command_phase", "command_started", "process_started",
           "settle_last"]

#: The fixed parts of a job, in the order they happen.
FIXED = ("imports", "server", "start", "transfer", "tracking", "noise_probe", "verification",
         "training", "report", "other")
TRIALS = "trials"

T = TypeVar("T")
_command: dict[str, float] = {}  # "started" (seconds since the epoch) and the command's parts
_last: list[JobClock] = []  # the clock of the last job this process ran


def process_started() -> float:
    """When this process started, in seconds since the epoch, to the kernel's clock tick: its
    start in ticks since boot (``/proc/self/stat``) against the time since boot now. (psutil's
    ``create_time`` adds the boot time, which Linux gives in whole seconds: up to 1 s off.)
    Now, where ``/proc`` cannot be read."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def command_started(at: float) -> None:
    """The command that will run a job started at ``at`` (seconds since the epoch: the
    process's start); everything until now counts as imports."""
    _command.clear()
    _command["started"] = at
    _command["imports"] = max(0.0, time.time() - at)


def command_phase(name: str, seconds: float | None = None) -> None:
    """Add ``seconds`` to part ``name`` of the command's time (once it has started); without
    ``seconds``, all the command's time not yet in a part."""
    if "started" not in _command:
        return
    if seconds is None:
        seconds = time.time() - _command["started"] - sum(
            v for k, v in _command.items() if k != "started")
    _command[name] = _command.get(name, 0.0) + max(0.0, seconds)


def settle_last(summary: Any) -> None:
    """Bring the times of ``summary`` (the last job's) up to now: the command's whole time."""
    if _last:
        _last[0].settle(summary)


class JobClock:
    """The clock of one job: when it began (the command's start, if a command runs it) and the
    time of each part."""

    def __init__(self) -> None:
        taken = dict(_command)
        _command.clear()
        self.began = taken.pop("started", None) or time.time()
        self.parts: dict[str, float] = taken
        self._lap = time.perf_counter()
        _last[:] = [self]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time of the ``with`` block to part ``name``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - began

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` to part ``name``."""
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def lap(self, name: str) -> None:
        """Count to part ``name`` the time since the clock began, its last ``lap`` or
        ``split``, whatever other parts it held."""
        now = time.perf_counter()
        self.add(name, now - self._lap)
        self._lap = now

    def timed(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, its time counted to part ``name``."""
        with self.phase(name):
            return fn(*args, **kwargs)

    def settle(self, summary: Any, lap: str | None = None) -> None:
        """Set ``duration_s``, ``fixed_s`` and ``trials_s`` of ``summary`` (a ``RunSummary``);
        with ``lap``, the time since the last split counts to that part first."""
        if lap is not None:
            self.lap(lap)
        summary.duration_s, summary.fixed_s, summary.trials_s = self.split()

    def times(self) -> dict[str, Any]:
        """``split`` as the summary's fields: ``duration_s``, ``fixed_s``, ``trials_s``."""
        return dict(zip(("duration_s", "fixed_s", "trials_s"), self.split(), strict=True))

    def duration(self) -> float:
        """Seconds since the job (its command) began."""
        return time.time() - self.began

    def split(self) -> tuple[float, dict[str, float], float]:
        """(duration, the fixed parts with their ``total``, the trials' time), in seconds."""
        duration = self.duration()
        self._lap = time.perf_counter()
        trials = self.parts.get(TRIALS, 0.0)
        fixed = {name: round(self.parts.get(name, 0.0), 3) for name in FIXED if name != "other"}
        fixed["other"] = round(max(0.0, duration - trials - sum(fixed.values())), 3)
        fixed["total"] = round(sum(fixed.values()), 3)
        return round(duration, 2), fixed, round(trials, 3)
