"""``flows.lifeline``: a server ends once the last process holding its lifeline has ended, however
they end (SIGKILL here), and not before; a process that takes the server over joins the watchdog
already reading the FIFO rather than starting a second one. The "server" is a process group
(a shell and its ``sleep``), as ``prefect server start`` is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.lifeline import WATCHDOG, fifo_lifeline, hold
from tests.conftest import REPO

#: A holder: a process that takes the lifeline (argv: fifo, server pid, record) and lives on.
SERVE = """
import sys, time
from pathlib import Path
from flows.lifeline import fifo_lifeline
fifo_lifeline(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), grace_s=2.0)
print("held", flush=True)
time.sleep(600)
"""
#: A flow run's part: it holds the FIFO by its path (argv: fifo) and lives on.
RUN = """
import sys, time
from flows.lifeline import hold
print("held" if hold(sys.argv[1]) is not None else "none", flush=True)
time.sleep(600)
"""


def holder(script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def watchdogs() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if WATCHDOG in (p.info["cmdline"] or [])]


@pytest.fixture
def server(tmp_path: Path) -> tuple[psutil.Process, Path]:
    """A process group standing for the server, and its record."""
    proc = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
    record = tmp_path / "server.json"
    record.write_text(json.dumps({"url": "http://127.0.0.1:1/api", "pid": proc.pid}))
    yield psutil.Process(proc.pid), record
    proc.kill()
    proc.wait()


def test_the_server_ends_after_the_last_holder_and_a_second_serve_joins(
        server: tuple[psutil.Process, Path], tmp_path: Path) -> None:
    leader, record = server
    group = [leader, *leader.children()]
    fifo = tmp_path / "lifeline"
    before = {p.pid for p in watchdogs()}
    first = holder(SERVE, str(fifo), str(leader.pid), str(record))
    started = [p for p in watchdogs() if p.pid not in before]
    assert len(started) == 1 and fifo.stat().st_mode & 0o777 == 0o600
    run = holder(RUN, str(fifo))
    first.kill()  # serve killed outright: its run still holds the server
    first.wait()
    time.sleep(1.0)
    assert leader.is_running() and record.exists()
    second = holder(SERVE, str(fifo), str(leader.pid), str(record))  # the next serve takes over
    assert [p for p in watchdogs() if p.pid not in before] == started  # no second watchdog
    run.kill()
    run.wait()
    time.sleep(1.0)
    assert leader.is_running() and record.exists()
    second.kill()
    second.wait()
    _, alive = psutil.wait_procs([*group, *started], timeout=20)
    assert not alive, alive  # the whole group (the sleep too), and the watchdog
    assert not record.exists()


def test_a_lifeline_nobody_reads_is_not_held_and_a_stale_fifo_is_replaced(
        server: tuple[psutil.Process, Path], tmp_path: Path) -> None:
    leader, record = server
    fifo = tmp_path / "lifeline"
    assert hold(fifo) is None and hold(None) is None  # no FIFO: nothing to hold
    held = fifo_lifeline(fifo, leader.pid, record, grace_s=2.0)
    (watchdog,) = [p for p in watchdogs() if str(leader.pid) in p.cmdline()]
    os.close(held)  # the last holder lets go: the watchdog ends the server, then itself
    _, alive = psutil.wait_procs([leader, watchdog], timeout=20)
    assert not alive, alive
    assert fifo.exists() and hold(fifo) is None  # the FIFO is left, and nobody reads it
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        again = fifo_lifeline(fifo, other.pid, tmp_path / "none.json", grace_s=2.0)
        joined = hold(fifo)  # a new watchdog reads the new FIFO
        assert joined is not None
        os.close(joined)
        os.close(again)
        assert other.wait(20) != 0  # ended by the new watchdog
    finally:
        other.kill()
