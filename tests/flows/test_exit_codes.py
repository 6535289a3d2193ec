"""How a command's end becomes its exit code (``flows.cli._exit_code``) when an interrupt is
turned into another error on its way out: Prefect's flow engine raises its own
``TerminationSignal`` for SIGTERM, its task engine a ``ValueError`` from its crash handler, and a
library may swallow the ``KeyboardInterrupt`` and fail later. Each is 130, "interrupted"; the same
error without an interrupt is a failure (1)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from prefect.exceptions import TerminationSignal

from flows import cli

INTERRUPTED = "knobflow: interrupted (test)"


@pytest.fixture
def handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command's own SIGTERM handler, and no interrupt had yet."""
    monkeypatch.setattr(cli, "_SIGNALLED", [])
    before = signal.signal(signal.SIGTERM, cli._raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def end(run: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli._exit_code(run, INTERRUPTED)  # type: ignore[arg-type]
    return code, capsys.readouterr().err.strip()


def test_an_interrupt_a_library_swallowed_then_failed_on_is_still_an_interrupt(
        handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    def run() -> int:
        try:  # a SIGTERM, taken by code that carries on as if nothing happened
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
        raise ValueError("Task run is not set")  # later, and not in the interrupt's chain

    assert end(run, capsys) == (130, INTERRUPTED)
    assert cli._SIGNALLED == [signal.SIGTERM]


def test_prefects_termination_signal_is_an_interrupt(
        handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    def escaped() -> int:
        raise TerminationSignal(signal=signal.SIGTERM)

    def replaced() -> int:
        try:
            raise TerminationSignal(signal=signal.SIGTERM)
        except TerminationSignal:  # a new error, caused by another one, while handling it
            raise RuntimeError("the flow run crashed") from OSError("connection closed")

    assert end(escaped, capsys) == (130, INTERRUPTED)
    assert end(replaced, capsys) == (130, INTERRUPTED)
    assert cli._SIGNALLED == []  # no signal reached knobflow's own handler: the chain said it


def test_the_same_errors_without_an_interrupt_are_failures(
        handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    def fails() -> int:
        raise ValueError("Task run is not set")

    def exits() -> int:
        raise SystemExit(3)

    assert end(fails, capsys) == (1, "knobflow: failed: ValueError: Task run is not set")
    with pytest.raises(SystemExit):
        cli._exit_code(exits, INTERRUPTED)
