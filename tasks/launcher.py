"""The trial launcher, both sides: one pre-started process per job that forks its trial processes.

A trial process started with ``python -m tasks.trial_process`` pays for an interpreter and its
imports on every trial (~90 ms here, against a 2 s trial's 40 ms overhead budget). The launcher
pays them once: ``python -m tasks.launcher`` imports the trial process's code and, at the first
trial of each target, the target's module, then forks a child per trial. The child is the same
trial process as before: its own session and process group (one ``killpg`` ends it and all it
started), its log as stdout and stderr, ``tasks.trial_process.main`` run with the launcher as the
parent it watches, and ``python -m tasks.trial_process REQUEST TUNER_PID`` as its command line
(``ps``).
A job's trials also run the code the job started with: a checkout edited mid-job changes nothing.

The protocol is one JSON document per line. The tuner writes ``{"id", "request", "log",
"target_ref"}``; the launcher answers ``{"id", "pid"}`` (or ``{"id", "error"}``) at once, and
``{"exit": pid, "rc": code}`` when the child has ended (``rc`` as ``Popen.returncode``: minus the
signal's number if killed). The launcher is single-threaded (forking is safe); it ends when its
standard input closes: the job is done, or the tuner died (even by SIGKILL), after which each
running trial notices its parent is gone, tidies its instance and ends its group.

``Launcher`` is the tuner's side: ``spawn`` returns a ``Forked`` handle to wait for and kill.
A target's module must not start threads when imported (it is imported before the fork).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Iterator
from typing import IO, Any

from tasks.process_groups import wait_group_gone
from tasks.trial_process import EXIT_HARNESS, EXIT_LAUNCHER_LOST, kill_group, wait_exit

__all__ = ["Child", "Forked", "Launcher", "LauncherError", "PopenChild", "ended_children",
           "serve"]
#: Seconds to wait for the launcher to answer a spawn (it forks at once; a loaded machine is slow).
SPAWN_TIMEOUT_S = 60.0


# -- the launcher process --------------------------------------------------------------------------
def serve() -> int:
    """Fork a trial process for each request read from standard input, until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the tuner's to handle
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # SIGCHLD wakes the select below
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        from setproctitle import setproctitle
    except ImportError:  # the title is for ps and tests; the trial runs the same without it
        setproctitle = None
    from targets.common import files  # noqa: F401 - what every trial process imports: loaded once
    from targets.registry import import_target  # noqa: F401

    imported: set[str] = set()
    pending = b""
    while True:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([0, wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        _reap()
        if 0 not in ready:
            continue
        data = os.read(0, 65536)
        if not data:  # the job is done, or the tuner died
            return 0
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                _spawn(json.loads(line), imported, setproctitle, (wake_r, wake_w))


def _say(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _reap() -> None:
    """Collect every ended child and tell the tuner its exit code."""
    for pid, code in ended_children():
        _say({"exit": pid, "rc": code})


def ended_children() -> Iterator[tuple[int, int]]:
    """Each child of this process that has ended, collected without waiting: its pid and exit
    code (as ``Popen.returncode``: minus the signal's number if killed)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def _spawn(cmd: dict[str, Any], imported: set[str], setproctitle: Any,
           own_fds: tuple[int, int]) -> None:
    """Fork one trial process for ``cmd``; answer with its pid."""
    module = str(cmd.get("target_ref", "")).partition(":")[0]
    if module and module not in imported:  # once per target: its trials start with it loaded
        imported.add(module)
        with contextlib.suppress(Exception):  # the child imports it again and says why it fails
            importlib.import_module(module)
    tuner = os.getppid()  # named in the child's title, as a trial process started afresh was
    try:
        pid = os.fork()
    except OSError as exc:
        _say({"id": cmd["id"], "error": f"fork: {exc}"})
        return
    if pid == 0:
        _child(cmd, setproctitle, own_fds, tuner)  # never returns
    _say({"id": cmd["id"], "pid": pid})


def _child(cmd: dict[str, Any], setproctitle: Any, own_fds: tuple[int, int],
           tuner: int) -> None:
    """The forked trial process: a session of its own, its log as output, then the trial
    (watching the launcher, its parent; its title names the tuner, as before the launcher)."""
    code = EXIT_HARNESS
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for fd in own_fds:
            os.close(fd)
        for sig in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        parent = str(os.getppid())
        if setproctitle is not None:
            setproctitle(f"python -m tasks.trial_process {cmd['request']} {tuner}")
        from tasks.trial_process import main

        code = main(["tasks.trial_process", cmd["request"], parent])
    except BaseException:  # the child must end here whatever happened
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# -- the tuner's side ------------------------------------------------------------------------------
class LauncherError(RuntimeError):
    """The launcher could not start a trial process (it died, or did not answer)."""


class Launcher:
    """The launcher process of one job, seen from the tuner: ``spawn`` a trial, ``close`` at the
    end (also done when the object is collected or the interpreter exits)."""

    #: The launcher's command (a test swaps it for one that dies at once).
    COMMAND = (sys.executable, "-m", "tasks.launcher")

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            list(self.COMMAND), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, start_new_session=True, bufsize=0,
        )
        self._lock = threading.Lock()
        self._next = 0
        self._state = _State()
        assert self._proc.stdout is not None
        threading.Thread(target=_hear, args=(self._proc, self._proc.stdout, self._state),
                         name="knobflow-launcher", daemon=True).start()
        self._finalizer = weakref.finalize(self, _close, self._proc)

    @property
    def alive(self) -> bool:
        return not self._state.lost.is_set()

    def spawn(self, request_path: str, log_path: str, target_ref: str) -> Forked:
        """Fork a trial process for the request at ``request_path``; its output goes to
        ``log_path``. Raises ``LauncherError`` if the launcher is gone or does not answer."""
        answer: queue.Queue[Forked | str | None] = queue.Queue(maxsize=1)
        with self._lock:
            if not self.alive:
                raise LauncherError("the trial launcher has ended")
            self._next += 1
            key = self._next
            self._state.answers[key] = answer
            line = json.dumps({"id": key, "request": request_path, "log": log_path,
                               "target_ref": target_ref}) + "\n"
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line.encode())
            except (BrokenPipeError, ValueError, OSError) as exc:
                self._state.answers.pop(key, None)
                raise LauncherError(f"the trial launcher is gone ({exc})") from None
        try:
            got = answer.get(timeout=SPAWN_TIMEOUT_S)
        except queue.Empty:
            raise LauncherError(
                f"the trial launcher did not answer in {SPAWN_TIMEOUT_S:g} s") from None
        if not isinstance(got, Forked):
            raise LauncherError(got or "the trial launcher ended before it answered")
        return got

    def close(self) -> None:
        """End the launcher (no trial of it should be running: their parent would be gone)."""
        self._finalizer()


class _State:
    """What the reader thread shares with ``Launcher``: answers awaited, children running."""

    def __init__(self) -> None:
        self.answers: dict[int, queue.Queue[Forked | str | None]] = {}
        self.running: dict[int, Forked] = {}
        self.lost = threading.Event()


def _hear(proc: subprocess.Popen[bytes], out: IO[bytes], state: _State) -> None:
    """Read the launcher's answers until it ends; then every child still running is lost."""
    try:
        for raw in out:
            doc = json.loads(raw)
            if "exit" in doc:
                child = state.running.pop(int(doc["exit"]), None)
                if child is not None:
                    child.ended(int(doc["rc"]))
                continue
            answer = state.answers.pop(int(doc["id"]), None)
            if "pid" in doc:
                child = Forked(int(doc["pid"]))
                state.running[child.pid] = child  # before the exit of it can be read
                if answer is not None:
                    answer.put(child)
            elif answer is not None:
                answer.put(str(doc.get("error", "no pid")))
    except (ValueError, OSError):  # a torn line: the launcher died mid-write
        pass
    finally:
        state.lost.set()
        for child in list(state.running.values()):
            child.ended(EXIT_LAUNCHER_LOST)
        for answer in list(state.answers.values()):
            answer.put(None)
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)


def _close(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin is not None:
            proc.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Child:
    """One running trial process, however it was started: wait for it, kill its group."""

    pid: int

    @property
    def returncode(self) -> int | None:
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for it to exit; False if it has not."""
        raise NotImplementedError

    def kill_group(self) -> None:
        """SIGKILL its whole process group (servers it started included); wait for its end."""
        raise NotImplementedError


class PopenChild(Child):
    """A trial process started afresh (``python -m tasks.trial_process``), a child of the tuner."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.pid = proc, proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, timeout: float) -> bool:
        return wait_exit(self.proc, timeout)

    def kill_group(self) -> None:
        kill_group(self.proc)


class Forked(Child):
    """A trial process forked by the launcher: its end is what the launcher reports."""

    #: Seconds to wait for the launcher to report a killed child's end.
    REAP_TIMEOUT_S = 30.0

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._code: int | None = None
        self._ended = threading.Event()

    @property
    def returncode(self) -> int | None:
        return self._code

    def ended(self, code: int) -> None:
        """The launcher reported its end (or was lost: ``EXIT_LAUNCHER_LOST``)."""
        if self._code is None:
            self._code = code
        self._ended.set()

    def wait(self, timeout: float) -> bool:
        return self._ended.wait(timeout)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._ended.wait(self.REAP_TIMEOUT_S)
        wait_group_gone(self.pid)


if __name__ == "__main__":
    sys.exit(serve())
