"""``flows.lifeline``: a server ends once the last process holding its lifeline has ended, however
they end (SIGKILL here), and not before; a process that takes the server over joins the watchdog
already reading the FIFO rather than starting a second one. The "server" is a process group
(a shell and its ``sleep``), as ``prefect server start`` is one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.lifeline import LIFELINE_ENV, WATCHDOG, fifo_lifeline, hold
from targets.common.errors import KnobflowError
from tests.conftest import REPO

#: A serve: it takes the lock, then the lifeline (argv: fifo, server pid, record, lock), and
#: lives on.
SERVE = """
import fcntl, os, sys, time
from pathlib import Path
from flows.lifeline import fifo_lifeline
lock = os.open(sys.argv[4], os.O_RDWR | os.O_CREAT)
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
fifo_lifeline(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),
              grace_s=2.0)
print("held", flush=True)
time.sleep(600)
"""
#: A process holding a lock file (argv: path, the pid it writes, seconds), as a serve does.
LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, sys.argv[2].encode())
print("held", flush=True)
time.sleep(float(sys.argv[3]))
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


def up(process: psutil.Process) -> bool:
    """Running, and not a zombie (the stand-in server is this process's child, reaped late)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watchdogs() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if WATCHDOG in (p.info["cmdline"] or [])]


def watchdogs_of(server: psutil.Process, at_least: int = 0) -> list[psutil.Process]:
    """The watchdogs of ``server`` (its pid is their first argument), waited for up to 10 s
    until there are ``at_least``. Counted by the server, not against an earlier count: another
    test's watchdog ending meanwhile, and its pid taken again (pids wrap at 32768 here), must not
    count."""
    deadline = time.monotonic() + 10.0
    while True:
        psutil.process_iter.cache_clear()  # a cached Process may stand for a reused pid
        found = []
        for p in watchdogs():
            argv = p.info["cmdline"] or []
            if argv[argv.index(WATCHDOG) + 1:][:1] == [str(server.pid)]:
                found.append(p)
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


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
    assert watchdogs_of(leader) == []
    lock = tmp_path / "serve.lock"
    first = holder(SERVE, str(fifo), str(leader.pid), str(record), str(lock))
    started = watchdogs_of(leader, at_least=1)
    assert len(started) == 1 and fifo.stat().st_mode & 0o777 == 0o600, (
        started, [p.info["cmdline"][-4:] for p in watchdogs()])
    run = holder(RUN, str(fifo))
    first.kill()  # serve killed outright: its run still holds the server
    first.wait()
    time.sleep(1.0)
    assert up(leader) and record.exists()
    second = holder(SERVE, str(fifo), str(leader.pid), str(record), str(lock))  # takes it over
    assert watchdogs_of(leader) == started  # no second watchdog
    run.kill()
    run.wait()
    time.sleep(1.0)
    assert up(leader) and record.exists()
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
    held = fifo_lifeline(fifo, leader.pid, record, tmp_path / "serve.lock", grace_s=2.0)
    (watchdog,) = watchdogs_of(leader, at_least=1)
    os.close(held)  # the last holder lets go: the watchdog ends the server, then itself
    _, alive = psutil.wait_procs([leader, watchdog], timeout=20)
    assert not alive, alive
    assert fifo.exists() and hold(fifo) is None  # the FIFO is left, and nobody reads it
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        again = fifo_lifeline(fifo, other.pid, tmp_path / "none.json", tmp_path / "serve.lock",
                              grace_s=2.0)
        joined = hold(fifo)  # a new watchdog reads the new FIFO
        assert joined is not None
        os.close(joined)
        os.close(again)
        assert other.wait(20) != 0  # ended by the new watchdog
    finally:
        other.kill()


def test_serve_goes_on_without_a_lifeline_where_no_fifo_can_be_made(
        server: tuple[psutil.Process, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without FIFOs (it cannot be had here: ``mkfifo`` refuses as one would):
    serve says what it cannot promise and goes on; the server is left alone."""
    from flows.serve import _hold_server

    leader, _ = server

    class Server:
        dir = tmp_path

        def record(self) -> dict[str, int]:
            return {"pid": leader.pid}

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "mkfifo", refuse)
    monkeypatch.delenv(LIFELINE_ENV, raising=False)
    said: list[str] = []
    assert _hold_server(Server(), said.append) is None
    assert said == [f"warning: no lifeline for the Prefect server ({tmp_path / 'lifeline'}: "
                    "Operation not permitted): if serve is killed outright, the server is left "
                    "running until the next serve of this home"]
    assert LIFELINE_ENV not in os.environ and up(leader)


def test_a_serve_taking_the_server_over_as_its_last_holder_ends_keeps_it(
        server: tuple[psutil.Process, Path], tmp_path: Path) -> None:
    """The last holder ends while a new serve has taken the lock but not yet the lifeline: the
    watchdog waits for the lock rather than stop the server under it."""
    leader, record = server
    fifo, lock = tmp_path / "lifeline", tmp_path / "serve.lock"
    first = holder(SERVE, str(fifo), str(leader.pid), str(record), str(lock))
    (watchdog,) = watchdogs_of(leader, at_least=1)
    run = holder(RUN, str(fifo))
    first.kill()
    first.wait()
    taker = holder(LOCKER, str(lock), str(os.getpid()), "600")  # the new serve, lock first
    run.kill()  # the last holder ends: the watchdog reads the end of its lifeline
    run.wait()
    time.sleep(1.5)
    assert up(leader) and record.exists()
    joined = hold(fifo)  # the new serve takes the lifeline
    assert joined is not None
    taker.kill()
    taker.wait()
    time.sleep(1.0)
    assert up(leader)
    os.close(joined)  # and ends: now nobody holds or takes the server
    _, alive = psutil.wait_procs([leader, watchdog], timeout=20)
    assert not alive and not record.exists()


def test_a_second_serve_refuses_a_live_one_and_waits_out_a_watchdog(tmp_path: Path) -> None:
    """``flows.serve``'s lock: held by a live serve, a second refuses at once; held by no live
    serve (the pid it names has ended: the watchdog stopping the server), it waits."""
    from flows.serve import _serve_lock

    ended = subprocess.Popen(["true"])
    ended.wait()
    lock = tmp_path / "serve.lock"
    live = holder(LOCKER, str(lock), str(os.getpid()), "600")
    try:
        with pytest.raises(KnobflowError, match=rf"another knobflow serve \(pid {os.getpid()}\)"):
            _serve_lock(tmp_path)
    finally:
        live.kill()
        live.wait()
    holder(LOCKER, str(lock), str(ended.pid), "1.5")
    began = time.monotonic()
    fd = _serve_lock(tmp_path)
    try:
        assert 1.0 < time.monotonic() - began < 10
        assert lock.read_text().strip() == str(os.getpid())
    finally:
        os.close(fd)
