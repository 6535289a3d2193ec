"""A pipelined trial's Prefect task run, kept beside the trial instead of around it.

A trial of a pipelined job (cleaned beside the next run) is a Prefect task run named
``trial-N`` (task ``execute-trial``), as before; but the task run's start and end (creating it,
its state changes, their events: 10-30 ms of Python on the job's process) no longer stand between
one trial process's end and the next one's start. The worker runs the trial itself
(``TrialRunner.execute``); ``TrialRecords.run`` has the task run opened on a thread of its own
when the trial begins, and handed the outcome (or the error) when it ends: the task run ends
with the trial's outcome as its result, or fails with the trial's error, while the worker asks
for the next candidate and starts it. The task run's times are the trial's, give or take its
own bookkeeping.

A task run that could not be recorded (the Prefect API failed) fails the job when the
exploration ends (``close``), as it failed the job when the trial ran inside the task run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuners.trials import TrialOutcome

__all__ = ["TrialRecords"]


class _TrialRaised(RuntimeError):
    """The trial itself raised (the worker raises it too): its task run fails with it."""


class _Handoff:
    """The trial's outcome (or its error), from the worker to its task run."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.outcome: TrialOutcome | None = None
        self.error: BaseException | None = None

    def give(self, outcome: TrialOutcome | None, error: BaseException | None = None) -> None:
        self.outcome, self.error = outcome, error
        self._done.set()

    def take(self) -> TrialOutcome:
        self._done.wait()
        if self.error is not None:
            raise _TrialRaised(f"the trial raised {self.error!r}") from self.error
        assert self.outcome is not None
        return self.outcome


@task(name="execute-trial", task_run_name="trial-{key}", cache_policy=NO_CACHE)
def _execute_trial(key: str, config: dict[str, Any], instance: str, seed: int,
                   handoff: _Handoff) -> TrialOutcome:
    """One trial's run (``config`` on ``instance``, cleaned later by ``clean-trial``) as a
    Prefect task run: it ends when the trial does, with its outcome."""
    return handoff.take()


class TrialRecords:
    """The task runs of a job's pipelined trials, each on a thread of its own (``slots``: at
    least the trials that run at once, plus one for a task run ending while the next begins)."""

    def __init__(self, slots: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="record")
        self._records: list[Future[Any]] = []
        self._lock = threading.Lock()

    def run(self, key: str, config: dict[str, Any], instance: str, seed: int,
            trial: Callable[[], TrialOutcome]) -> TrialOutcome:
        """Run ``trial`` (the worker's call) with its task run recorded beside it."""
        handoff = _Handoff()
        record = self._pool.submit(copy_context().run, _execute_trial, key, dict(config),
                                   instance, seed, handoff)
        with self._lock:
            self._records.append(record)
        try:
            outcome = trial()
        except BaseException as exc:
            handoff.give(None, exc)
            raise
        handoff.give(outcome)
        return outcome

    def close(self) -> None:
        """Wait for every task run to end; raise the first that could not be recorded."""
        self._pool.shutdown(wait=True)
        for record in self._records:
            error = record.exception()
            if error is not None and not isinstance(error, _TrialRaised):
                raise error
