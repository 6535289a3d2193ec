"""When the tuner hears of a result (``tasks/tell_order.py``): a worker asks again only once the
results it must wait for are told, and a cleaning held back for the next trial's start is let go
when the worker waits for it instead (its next candidate was blocked: no trial starts)."""

from __future__ import annotations

import threading
import time

from tasks.tell_order import TellOrder
from tasks.trial_process import TrialProcesses


def test_a_worker_waiting_for_a_held_back_result_lets_its_cleaning_go() -> None:
    """Trial 0 ran; its cleaning waits for trial 1's process to start; trial 1 is blocked (told,
    never started). The ask after it waits for trial 0 and hurries the cleaning: both go on at
    once, not after the cleaning's bound (60 s here)."""
    order, processes = TellOrder(lambda: False), TrialProcesses(fork=False)
    order.asked()  # trial 0
    order.ended(0)
    order.asked()  # trial 1, asked before trial 0 is told (lag 1)
    after = processes.starts

    def clean_trial_0() -> None:
        processes.wait_started(after, 60.0)
        order.told(0)

    cleaning = threading.Thread(target=clean_trial_0, daemon=True)
    cleaning.start()
    order.told(1)  # trial 1 blocked by the rules: told as infeasible, no process started
    started = time.monotonic()
    order.wait_turn(on_wait=processes.hurry)  # the worker's next ask (asks are per thread)
    cleaning.join(10)
    assert not cleaning.is_alive() and time.monotonic() - started < 30
    assert order.lag(0) == 1


def test_a_worker_with_nothing_untold_asks_without_hurrying() -> None:
    """No result waits: the ask neither waits nor hurries a cleaning (it keeps waiting for the
    next trial's start)."""
    order, processes = TellOrder(lambda: False), TrialProcesses(fork=False)
    hurried: list[bool] = []
    order.asked()
    order.ended(0)
    order.told(0)
    order.asked()
    order.wait_turn(on_wait=lambda: hurried.append(True))
    assert hurried == [] and processes.starts == 0


def test_a_worker_waits_for_a_result_told_later() -> None:
    """The ask after trial 1 waits until trial 0 (ended before trial 1's ask) is told."""
    order = TellOrder(lambda: False)
    order.asked()
    order.ended(0)
    order.asked()
    threading.Timer(0.3, order.told, (0,)).start()
    started = time.monotonic()
    order.wait_turn()
    assert time.monotonic() - started >= 0.25
