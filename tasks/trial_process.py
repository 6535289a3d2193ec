"""The trial process, both sides: the child that runs one target lifecycle, and its control.

The child runs as ``python -m tasks.trial_process REQUEST.json`` in a new session (its own process
group), so the tuner can kill it and everything it started with one signal; it kills its own group
when the tuner dies. ``TrialProcesses`` is the tuner's side: it starts a child, waits for it with
a hard timeout, kills its whole group, and stops every running child when the job is stopped.
Only the standard library and the target's module are imported here: start-up time is paid on
every trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.process_groups import wait_group_gone

if TYPE_CHECKING:  # the tuner's side imports them when it starts a trial; the child never does
    import subprocess

    from tasks.launcher import Child, Launcher

#: Hears of one intermediate report (step, metrics so far); True: stop the trial (prune).
ProgressListener = Callable[[int, dict[str, float]], bool]

#: Seconds between two reads of a pruned job's progress file while its trial runs.
PROGRESS_POLL_S = 0.05

LOG_TAIL_LINES = 20
#: The exit code of a trial process that could not write its result (sysexits' EX_IOERR): a
#: full or failing disk, not the config.
EXIT_IO_ERROR = 74
#: The exit code of a trial process whose tuner died before it started.
EXIT_ORPHANED = 75
#: The exit code of a trial process that could not apply its CPU set or memory limit.
EXIT_ISOLATION = 76
#: The trial process failed before the target ran the config: knobflow's own code, the target's
#: import or its set-up (an upgrade half done, a broken install). No config's fault: never learned.
EXIT_HARNESS = 77
#: The exit code given to a trial whose launcher (``tasks/launcher.py``) died under it.
EXIT_LAUNCHER_LOST = 78


# -- the child -------------------------------------------------------------------------------------
#: Set when the tuner died: the main thread must not exit (ending the daemon watcher) before
#: the watcher has tidied the instance and ended the group.
_ORPHANED = threading.Event()


def _watch_parent(parent: int, request: dict[str, Any]) -> None:
    """When the tuner dies (even by SIGKILL), tidy the instance as after a killed trial (servers,
    shared memory, sockets, lock files) and end the whole process group: nothing is left."""
    while True:
        time.sleep(0.1)
        if os.getppid() != parent:
            _ORPHANED.set()
            _tidy(request)
            os.killpg(os.getpgrp(), signal.SIGKILL)


def _tidy(request: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):  # the group dies next whatever happens here
        from targets.registry import import_target

        import_target(request["target_ref"]).cleanup(Path(request["data_dir"]))


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    """Run the lifecycle described by ``request``; return the outcome document."""
    from targets.base import BenchmarkError, ConfigRefused, FailureClass, TrialFailed, TrialStatus
    from targets.registry import import_target

    target_cls = import_target(request["target_ref"])
    data_dir = Path(request["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    target = target_cls(data_dir, request["workload"], seed=int(request["seed"]))
    if request.get("progress_path"):  # the job prunes: intermediate values go there
        target.progress_path = Path(request["progress_path"])

    def failed(cls: FailureClass, message: str) -> dict[str, Any]:
        return {"status": TrialStatus.FAILED, "failure_class": cls, "message": message}

    try:
        with target:
            target.start(request["config"])
            measurement = target.run()
    except ConfigRefused as exc:
        return failed(FailureClass.REFUSED, str(exc))
    except BenchmarkError as exc:
        return failed(FailureClass.BENCHMARK_ERROR, str(exc))
    except TrialFailed as exc:
        return failed(exc.failure_class, str(exc))
    except MemoryError as exc:
        return failed(FailureClass.OUT_OF_MEMORY, f"MemoryError: {exc}")
    except OSError as exc:
        return failed(FailureClass.IO_ERROR, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the target's own bug: report it, the job goes on
        traceback.print_exc()
        return failed(FailureClass.TARGET_ERROR, f"{type(exc).__name__}: {exc}")
    return {"status": TrialStatus.OK, "measurement": measurement.to_dict()}


def main(argv: list[str]) -> int:
    """``python -m tasks.trial_process REQUEST.json TUNER_PID``: the tuner's pid is given, so a
    tuner that died while this interpreter started is noticed before anything runs."""
    try:
        from targets.common.files import write_text_atomic
    except Exception:  # knobflow itself cannot be imported (a broken install or upgrade)
        traceback.print_exc()
        return EXIT_HARNESS
    request_path, parent = Path(argv[1]), int(argv[2]) if len(argv) > 2 else os.getppid()
    if os.getppid() != parent:
        return EXIT_ORPHANED  # the tuner is gone: run nothing
    request = json.loads(request_path.read_text(encoding="utf-8"))
    if request.get("isolation"):  # before the target runs: what it starts inherits the limits
        from tasks.isolation import apply_limits

        try:
            print(f"knobflow trial process: {apply_limits(request['isolation'])}", flush=True)
        except OSError as exc:  # the host refused the CPU set or the cgroup: not the config's
            print(f"knobflow trial process: cannot apply its isolation: {exc}", file=sys.stderr)
            return EXIT_ISOLATION
    threading.Thread(target=_watch_parent, args=(parent, request), daemon=True).start()
    try:
        outcome = run_request(request)
    except Exception:  # the lifecycle's own errors are outcomes: this is the set-up's
        traceback.print_exc()
        print("knobflow trial process: failed before the target ran the config",
              file=sys.stderr)
        return EXIT_HARNESS
    try:
        write_text_atomic(request["result_path"], json.dumps(outcome, default=str))
    except OSError as exc:  # ENOSPC, EROFS, EIO: the machine's fault, said by the exit code
        print(f"knobflow trial process: cannot write its result: {exc}", file=sys.stderr)
        return EXIT_IO_ERROR
    finally:
        if _ORPHANED.is_set():  # the watcher is tidying: it ends this process when it is done
            time.sleep(60)
    return 0


# -- the tuner's side ------------------------------------------------------------------------------
@dataclass
class ChildExit:
    """How one trial process ended: the outcome document it wrote (None if it wrote none), whether
    it ran past its timeout or was killed because the job stopped, its exit code, its log's tail."""

    result: dict[str, Any] | None
    timed_out: bool
    stopped: bool
    returncode: int
    log_tail: list[str]
    #: The listener stopped it after a report (``TrialProcesses.run``'s ``on_progress``): the
    #: step it was stopped at, and every report read, in order.
    pruned_step: int | None = None
    reports: list[tuple[int, dict[str, float]]] = field(default_factory=list)


class TrialProcesses:
    """The trial processes of one job: each runs with a hard timeout and is killed with its whole
    process group; ``stop_all`` ends every one that is running (the job is being stopped).

    They are forked by the job's launcher (``tasks/launcher.py``: the interpreter and imports are
    paid once a job, not once a trial); ``fork=False``, or a launcher that cannot start or dies,
    starts each with ``python -m tasks.trial_process`` instead. ``close`` ends the launcher."""

    def __init__(self, fork: bool = True) -> None:
        self._running: dict[int, Child] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._fork = fork
        self._launcher: Launcher | None = None
        self._started = threading.Condition()
        self.starts = 0  # trial processes started so far, and hurries (``hurry``)

    def wait_started(self, after: int, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until ``starts`` has passed ``after``: a trial process
        started since ``after`` was read, or ``hurry`` was called, or the job stops."""
        with self._started:
            self._started.wait_for(lambda: self.starts > after or self.stopping.is_set(),
                                   timeout)

    def hurry(self) -> None:
        """End the waits of ``wait_started`` now, as a start would: no trial process is about to
        start (the next candidate was blocked), and the job waits on what they hold back."""
        with self._started:
            self.starts += 1
            self._started.notify_all()

    def run(self, request: dict[str, Any], trial_dir: Path, timeout_s: float,
            on_progress: ProgressListener | None = None) -> ChildExit:
        """Run one trial process for ``request`` in ``trial_dir``; wait at most ``timeout_s``.

        With ``on_progress``, the target's reports (``Target.report``, one JSON line each in
        ``request["progress_path"]``) are read as they come and handed to it; when it answers
        True the trial's process group is killed, as on a timeout (the caller tidies the
        instance with ``Target.cleanup``), and the exit says at which step."""
        request_path, log_path = trial_dir / "request.json", trial_dir / "log.txt"
        result_path = Path(request["result_path"])
        result_path.unlink(missing_ok=True)
        request_path.write_text(json.dumps(request, default=str), encoding="utf-8")
        child = self._start(request_path, log_path, str(request["target_ref"]))
        with self._lock:
            self._running[child.pid] = child
        with self._started:
            self.starts += 1
            self._started.notify_all()
        progress = _Progress(Path(request["progress_path"])) if (
            on_progress is not None and request.get("progress_path")) else None
        pruned_step: int | None = None
        try:
            if progress is None or on_progress is None:
                timed_out = not child.wait(timeout_s)
            else:
                timed_out, pruned_step = _wait_reading(child, timeout_s, progress, on_progress)
        finally:
            child.kill_group()
            with self._lock:
                self._running.pop(child.pid, None)
        returncode = child.returncode if child.returncode is not None else -signal.SIGKILL
        stopped = self.stopping.is_set() and (timed_out or returncode == -signal.SIGKILL)
        result = None
        if (not timed_out and not stopped and pruned_step is None
                and result_path.exists()):
            result = json.loads(result_path.read_text(encoding="utf-8"))
            request_path.unlink(missing_ok=True)
        if returncode == EXIT_LAUNCHER_LOST:
            with contextlib.suppress(OSError), open(log_path, "a", encoding="utf-8") as log:
                log.write("knobflow: the launcher that forked this trial process died under it\n")
        return ChildExit(result, timed_out and not stopped, stopped, returncode,
                         log_tail(log_path), pruned_step=None if stopped else pruned_step,
                         reports=progress.reports if progress is not None else [])

    def _start(self, request_path: Path, log_path: Path, target_ref: str) -> Child:
        """A trial process for the request: forked by the launcher, or started afresh."""
        if self._fork:
            from tasks.launcher import Launcher, LauncherError

            with self._lock:
                if self._launcher is None or not self._launcher.alive:
                    try:
                        self._launcher = Launcher()
                    except OSError as exc:
                        print(f"knobflow: no trial launcher ({exc}); trial processes start "
                              "afresh", file=sys.stderr)
                        self._fork = False
                launcher = self._launcher
            if self._fork:
                try:
                    return launcher.spawn(str(request_path), str(log_path), target_ref)
                except LauncherError as exc:  # a launcher that cannot fork: none for this job
                    print(f"knobflow: {exc}; trial processes start afresh", file=sys.stderr)
                    self._fork = False
        import subprocess

        from tasks.launcher import PopenChild

        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.trial_process", str(request_path),
                 str(os.getpid())],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: one killpg ends it all
            )
        return PopenChild(proc)

    def stop_all(self) -> None:
        """Kill every running trial process (the job is being stopped)."""
        self.stopping.set()
        with self._lock:
            children = list(self._running.values())
        for child in children:
            child.kill_group()

    def close(self) -> None:
        """End the job's launcher (after its last trial; also done when this is collected)."""
        with self._lock:
            launcher, self._launcher = self._launcher, None
        if launcher is not None:
            launcher.close()


class _Progress:
    """The reader of one trial's progress file: whole new lines, as (step, metrics)."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # a retried key's old reports are not this run's
        from targets.common.files import GrowingFile  # the trial process imports little

        self.file = GrowingFile(path)
        self.reports: list[tuple[int, dict[str, float]]] = []

    def read(self) -> list[tuple[int, dict[str, float]]]:
        lines = self.file.new_lines()
        new = []
        for line in lines.splitlines():
            try:
                doc = json.loads(line)
                new.append((int(doc["step"]), {k: float(v) for k, v in doc["metrics"].items()}))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a target's malformed line says nothing: the trial runs on
        self.reports.extend(new)
        return new


def _wait_reading(child: Child, timeout: float, progress: _Progress,
                  on_progress: ProgressListener) -> tuple[bool, int | None]:
    """Wait for ``child`` as ``Child.wait`` does, handing each new report to ``on_progress``;
    (timed out, the step it asked to stop at)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True, None
        exited = child.wait(min(PROGRESS_POLL_S, left))
        for step, metrics in progress.read():  # a finished run's reports are heard too: the
            if on_progress(step, metrics) and not exited:  # pruner compares with them
                return False, step
        if exited:
            return False, None


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit; False on timeout. Wakes at once on exit (Popen.wait polls)."""
    import select
    import subprocess

    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): Popen's polling wait
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
    finally:
        os.close(fd)
    proc.wait()
    return True


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the trial's whole process group (servers it started included) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_group_gone(proc.pid)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a log file (its last 16 KiB are read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
