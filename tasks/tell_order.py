"""When the tuner hears of a result: the order of asks and run ends over an exploration's workers.

A worker may ask for its next candidate while results are untold (cleaning runs beside the next
trial), but not before every result whose run ended before its own previous ask is told: so each
worker asks at most once while a given result is untold, and no result reaches the tuner more
candidates late than there are workers (instances). ``lag`` says how late one was: the
candidates asked after its run ended and before it was told.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["TellOrder"]


class TellOrder:
    """The asks and run ends of one exploration, in order; ``stopping`` ends every wait."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self._stopping = stopping
        self._cond = threading.Condition()
        self._asks = 0  # candidates asked so far
        self._seq = 0  # asks and run ends so far, in the order they happened
        self._ran_at: dict[int, int] = {}  # trial number -> asks when its run ended
        self._untold: dict[int, int] = {}  # trial number -> _seq when its run ended
        self._local = threading.local()  # this worker's last ask, in _seq

    def wait_turn(self, on_wait: Callable[[], None] | None = None) -> None:
        """Before a worker asks: wait until no result whose run ended before this worker's
        previous ask is untold (or the exploration stops). ``on_wait`` is called first when
        the worker has to wait (so what holds those results back can let them go)."""
        asked = getattr(self._local, "asked", None)
        if asked is None:
            return
        with self._cond:
            if not self._waits(asked):
                return
        if on_wait is not None:
            on_wait()
        with self._cond:
            while self._waits(asked):
                self._cond.wait(0.5)

    def _waits(self, asked: int) -> bool:
        return any(ended < asked for ended in self._untold.values()) and not self._stopping()

    def asked(self) -> None:
        """This worker was just given a candidate."""
        with self._cond:
            self._asks += 1
            self._seq += 1
            self._local.asked = self._seq

    def ended(self, number: int) -> None:
        """Trial ``number``'s run ended: its result is untold until ``told``."""
        with self._cond:
            self._ran_at[number] = self._asks
            self._seq += 1
            self._untold[number] = self._seq

    def lag(self, number: int) -> int:
        """The candidates asked since trial ``number``'s run ended (0 if it never ran)."""
        with self._cond:
            return self._asks - self._ran_at.pop(number, self._asks)

    def told(self, number: int) -> None:
        """Trial ``number`` was told (or failed to be): the workers waiting for it go on."""
        with self._cond:
            self._untold.pop(number, None)
            self._cond.notify_all()
