"""Launched live instances: a system and its background load, kept running by a small daemon.

``knobflow instance start`` runs a demo or test instance on 127.0.0.1 that stays up after the
command returns, under load that can be changed while it runs. This module owns that:

* ``launch``: start ``python -m targets.live_daemon DIR`` in its own session (detached from the
  terminal); the daemon starts the system through its live driver's ``launch_target`` hook, writes
  ``connection.json`` when the system answers, and runs the driver's load generator
  (``load_command``) in a loop, anew whenever ``workload.json`` changes (``set_workload``);
* ``stop_launched``: SIGTERM to the daemon, which ends the load and stops the system; whatever a
  killed daemon left is ended through the target's own clean-up, and the directory is removed:
  nothing is left behind.

The directory is 0700; everything of the instance (the system's data, its socket, its secrets, the
daemon's log) is inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from targets.common.errors import EnvironmentFault
from targets.common.files import write_text_atomic
from targets.live import Connection, LiveError, live_class
from targets.process import Server, die_with_parent, last_lines, private_dir

__all__ = ["daemon_pid", "launch", "launched_connection", "set_workload", "stop_launched"]

LAUNCH = "launch.json"
WORKLOAD = "workload.json"
CONNECTION = "connection.json"
PID = "daemon.pid"
LOG = "daemon.log"
LOAD_LOG = "load.log"
SERVER_DIR = "server"
#: A load generator that ends sooner than this is restarted only after a pause.
_QUICK_EXIT_S = 2.0


def launch(target: str, data_dir: Path, workload: Mapping[str, Any],
           timeout: float = 180.0) -> Connection:
    """Start a ``target`` instance under ``workload`` in ``data_dir``; its connection once it
    answers. A system that fails to start is said with the daemon's last log lines."""
    live_class(target)  # a target without a live driver fails here, before anything starts
    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    private_dir(data_dir)
    write_text_atomic(data_dir / LAUNCH, json.dumps({"target": target}))
    set_workload(data_dir, workload)
    with open(data_dir / LOG, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "targets.live_daemon", str(data_dir)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=data_dir, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not (data_dir / CONNECTION).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"did not answer within {timeout:g} s" if proc.poll() is None else "failed"
            stop_launched(data_dir, remove=False)
            tail = last_lines(_read(data_dir / LOG), n=4) or "no log lines"
            raise LiveError(f"the {target} instance in {data_dir} {why}: {tail}")
        time.sleep(0.1)
    return launched_connection(data_dir)


def launched_connection(data_dir: Path) -> Connection:
    """The connection the daemon in ``data_dir`` wrote."""
    return Connection.from_dict(json.loads((Path(data_dir) / CONNECTION).read_text()))


def set_workload(data_dir: Path, workload: Mapping[str, Any]) -> None:
    """Change the running load: the daemon restarts its generator with ``workload``."""
    write_text_atomic(Path(data_dir) / WORKLOAD, json.dumps(dict(workload), sort_keys=True))


def daemon_pid(data_dir: Path) -> int | None:
    """The pid of the daemon of ``data_dir`` if it is running, else None."""
    data_dir = Path(data_dir).resolve()
    try:
        pid = int((data_dir / PID).read_text().split()[0])
        proc = psutil.Process(pid)
        if any(_names(a, str(data_dir)) for a in proc.cmdline()) \
                and proc.status() != psutil.STATUS_ZOMBIE:
            return pid
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None


def stop_launched(data_dir: Path, timeout: float = 60.0, remove: bool = True) -> None:
    """End the daemon, its load and its system; with ``remove``, delete the directory too."""
    data_dir = Path(data_dir).resolve()
    pid = daemon_pid(data_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # its session: the load generator and anything else
    target = _read_launch(data_dir)
    if target is not None:
        live_class(target).remove_launched(data_dir / SERVER_DIR)
    left = _processes_in(data_dir)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    if remove:
        shutil.rmtree(data_dir, ignore_errors=True)


# -- the daemon ----------------------------------------------------------------------------------
class _Daemon:
    """The process that keeps one launched instance and its load running."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        target = _read_launch(data_dir)
        if target is None:
            raise EnvironmentFault(f"{data_dir / LAUNCH} is missing or unreadable")
        self.live = live_class(target)
        self.stopping = False
        self.load: subprocess.Popen[bytes] | None = None
        self.load_started = 0.0
        self.workload_mtime = 0.0

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)
        (self.data_dir / PID).write_text(f"{os.getpid()}\n")
        workload = self._workload()
        target = self.live.launch_target(self.data_dir / SERVER_DIR, workload)
        for held in vars(target).values():  # no trial measures it: no memory sampling
            if isinstance(held, Server):
                held.stop_sampling()
        try:
            connection = self.live.connection_for(target, self.data_dir / SERVER_DIR)
            write_text_atomic(self.data_dir / CONNECTION, json.dumps(connection.to_dict()))
            print(f"live_daemon: {self.live.target} up: {connection.url}", flush=True)
            while not self.stopping:
                self._keep_load(target)
                time.sleep(0.2)
        finally:
            self._end_load()
            target.stop()
            (self.data_dir / CONNECTION).unlink(missing_ok=True)
            print("live_daemon: stopped", flush=True)
        return 0

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _workload(self) -> dict[str, Any]:
        path = self.data_dir / WORKLOAD
        self.workload_mtime = path.stat().st_mtime
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _keep_load(self, target: Any) -> None:
        changed = (self.data_dir / WORKLOAD).stat().st_mtime != self.workload_mtime
        running = self.load is not None and self.load.poll() is None
        if running and not changed:
            return
        if running:
            self._end_load()
        elif self.load is not None and time.monotonic() - self.load_started < _QUICK_EXIT_S:
            time.sleep(1.0)  # it ended at once: do not spin
        workload = self._workload()
        cmd, env = self.live.load_command(target, workload)
        with open(self.data_dir / LOAD_LOG, "wb") as log:
            self.load = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=env,
                                         cwd=self.data_dir, preexec_fn=die_with_parent)
        self.load_started = time.monotonic()
        print(f"live_daemon: load {json.dumps(workload, sort_keys=True)}", flush=True)

    def _end_load(self) -> None:
        load, self.load = self.load, None
        if load is None or load.poll() is not None:
            return
        load.terminate()
        try:
            load.wait(5.0)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()


def _read_launch(data_dir: Path) -> str | None:
    try:
        return str(json.loads((data_dir / LAUNCH).read_text())["target"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _names(arg: str, data_dir: str) -> bool:
    """Whether a command-line argument is ``data_dir`` or a path inside it."""
    return any(word == data_dir or word.startswith(data_dir + "/")
               for word in arg.replace("=", " ").split())


def _processes_in(data_dir: Path) -> list[psutil.Process]:
    """Processes with an argument in ``data_dir`` (what a killed daemon may leave); a process
    that only shares a prefix of its name (``/tmp/x2`` beside ``/tmp/x``) is not one."""
    mine, where = os.getpid(), str(data_dir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.pid != mine and any(_names(a, where) for a in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m targets.live_daemon DIR", file=sys.stderr)
        return 2
    try:
        return _Daemon(Path(argv[0]).resolve()).run()
    except Exception as exc:  # said in the daemon's log, which launch() quotes
        print(f"live_daemon: failed: {type(exc).__name__}: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
