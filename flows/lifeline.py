"""Lifelines: a Prefect server that knobflow started lives as long as a process that reports to it.

A process killed outright (SIGKILL, the OOM killer) runs no ``finally``: the server it started
would be left, listening on 127.0.0.1, and its jobs, still running, need it until they end (they
would retry a dead one for minutes). So a watchdog process reads a pipe whose write ends are held
by the processes that use the server; the kernel closes a holder's end however it ends, and once
the last one is closed (end of file) the watchdog ends the server: SIGTERM to its process group,
SIGKILL after ``grace_s``, and its record (``server.json``) removed if it names that server.

* ``pipe_lifeline`` (``flows.warm``): an anonymous pipe; the warm process and its forked jobs
  hold it (an ``exec`` drops it).
* ``fifo_lifeline`` and ``hold`` (``flows.serve``): a named pipe (FIFO, 0600) in the server's
  folder, which the flow runs ``knobflow serve`` starts open by its path (``LIFELINE_ENV``); a
  later serve that takes the same server over joins the watchdog already reading it. Serve holds
  a lock while it uses the server, and the watchdog ends the server only under that lock.

The watchdog is ``python -I`` with the standard library only; it holds no write end itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["LIFELINE_ENV", "fifo_lifeline", "hold", "pipe_lifeline"]

#: The environment variable that gives a served flow run the FIFO of its server's lifeline.
LIFELINE_ENV = "KNOBFLOW_SERVER_LIFELINE"

#: argv: the server's pid, the seconds between SIGTERM and SIGKILL, its record (or "") and the
#: lock a process that takes the server over holds (or ""). stdin: the lifeline's read end.
WATCHDOG = """
import fcntl, json, os, select, signal, sys, time
pid, grace, record, lock = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    server = os.pidfd_open(pid)
    group = os.getpgid(pid) == pid
except OSError:
    server = None  # gone already, or a kernel without pidfds
while True:
    while os.read(0, 1):
        pass
    if not lock:
        break
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break  # nobody takes the server over: it ends, under this lock
    except BlockingIOError:  # a process is taking it over: it joins the lifeline, or lets go
        os.close(held)
        time.sleep(0.2)
def ended(timeout):
    return bool(select.select([server], [], [], timeout)[0])
def send(sig):
    try:
        if group:
            os.killpg(pid, sig)  # the leader is alive (its pidfd says): its group is the server's
        else:
            signal.pidfd_send_signal(server, sig)
    except OSError:
        pass
if server is not None and not ended(0):
    send(signal.SIGTERM if grace > 0 else signal.SIGKILL)
    if grace > 0 and not ended(grace):
        send(signal.SIGKILL)
    try:
        if record and json.loads(open(record).read()).get("pid") == pid:
            os.unlink(record)
    except (OSError, ValueError):
        pass
"""


def _watchdog(read_fd: int, pid: int, grace_s: float, record: Path | None = None,
              lock: Path | None = None) -> None:
    """Start the watchdog of server ``pid`` on ``read_fd`` (closed here afterwards)."""
    subprocess.Popen([sys.executable, "-I", "-c", WATCHDOG, str(pid), str(grace_s),
                      str(record or ""), str(lock or "")], stdin=read_fd,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(read_fd)


def pipe_lifeline(pid: int, grace_s: float = 0.0) -> None:
    """Server ``pid`` lives as long as this process or a fork of it does: the write end stays
    open here, never written nor closed, and not inheritable (an exec'd process does not hold
    it)."""
    read, _ = os.pipe()
    _watchdog(read, pid, grace_s)


def fifo_lifeline(fifo: Path, pid: int, record: Path, lock: Path, grace_s: float = 10.0) -> int:
    """Hold the lifeline of server ``pid`` at ``fifo``: join the watchdog reading it (one started
    by an earlier process that took the same server) or start one. Returns the held descriptor
    (closing it lets go). The caller holds ``lock`` (``flock``) while it uses the server: a
    watchdog whose last holder has ended stops the server only once it has that lock itself, so
    a process that takes the server over at that moment (it took the lock first) is not left
    with a server being stopped."""
    joined = hold(fifo)
    if joined is not None:
        return joined
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()  # left by a watchdog that ended: nobody reads it
    os.mkfifo(fifo, 0o600)
    held = os.open(fifo, os.O_RDWR)  # a writer that never blocks: the watchdog's reads wait on it
    read = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(read, True)
    _watchdog(read, pid, grace_s, record, lock)
    return held


def hold(fifo: str | os.PathLike[str] | None) -> int | None:
    """Hold the lifeline at ``fifo`` for as long as this process lives (the descriptor, not
    inheritable, is never closed); None when no watchdog reads it, or no ``fifo``."""
    if not fifo:
        return None
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:  # ENXIO: no reader; ENOENT: no such FIFO
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return None
        raise
