"""Processes a target starts: servers and benchmark clients, what they cost, and their clean-up.

Server targets (PostgreSQL, Redis) start their server inside the trial process, run the client,
and stop the server before the trial ends, so nothing outlives a trial. Servers stay in the trial's
process group (no daemonizing), so the tuner's kill of that group on a timeout ends them too; a
pid file in the data directory lets ``Target.cleanup`` end what is left after a crash.

Resource use is measured apart for the server (CPU of the process tree, including reaped
children such as PostgreSQL backends; peak memory of the tree as proportional set size, sampled)
and the client (``wait4`` rusage), and reported as trial counters.

A server admits only knobflow: the helpers at the end make an instance's secret (a random
password, written to a 0600 file of the instance, never to a command line or a log), private
socket directories (0700), connect to a Unix socket of any path length, and hand a program text
on its standard input instead of its command line.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from targets.base import BenchmarkError


@dataclass
class Usage:
    """CPU seconds (user + system) and peak resident memory of a process or process tree."""

    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0

    def counters(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_cpu_s": round(self.cpu_s, 4),
                f"{prefix}_peak_rss_mb": round(self.peak_rss_mb, 2)}


@dataclass
class ClientRun:
    """A finished benchmark client: exit code, output and what it cost."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    usage: Usage
    timed_out: bool = False


def _drop_groups(user: str | None) -> dict[str, Any]:
    """Popen arguments that also switch the group: ``user=`` alone keeps root's groups."""
    if user is None:
        return {}
    return {"group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits without reaping it; False on timeout."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


def _vm_hwm_kb(pid: int) -> int:
    """A process's peak resident memory so far (``VmHWM``, reset when it exec'd), in KiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _wait_sampling_peak(
    pid: int, timeout: float, abort: Callable[[], bool] | None = None
) -> tuple[str, int]:
    """Wait for ``pid`` to exit (not reaping it) while sampling its peak memory.

    ``ru_maxrss`` from ``wait4`` cannot be used for that: Linux starts a forked child's high-water
    mark at its parent's, so a small client of a big trial process reports the parent's size.
    Returns how it ended ("exited", "timeout" or "aborted") and the peak in KiB.
    """
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        peak = max(peak, _vm_hwm_kb(pid))
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", peak
        if _wait_exit(pid, min(0.05, left)):
            return "exited", peak
        if abort is not None and abort():
            return "aborted", peak


def run_client(
    cmd: Sequence[str],
    *,
    timeout: float,
    log_dir: Path,
    name: str = "client",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    abort: Callable[[], bool] | None = None,
) -> ClientRun:
    """Run a benchmark client to the end (or ``timeout``): its CPU (``wait4``) and peak memory.

    Output goes to ``<log_dir>/<name>.out`` and ``.err`` (kept for the trial's log) and is
    returned as text. ``abort()`` is polled while it runs; when it turns true (e.g. the server
    under test died: redis-benchmark would retry forever) the client is killed.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None, cwd=cwd, user=user,
                **_drop_groups(user),
            )
        except OSError as exc:
            raise BenchmarkError(f"cannot start {cmd[0]}: {exc}") from None
    ended, peak_kb = _wait_sampling_peak(proc.pid, timeout, abort)
    timed_out = ended == "timeout"
    if ended != "exited":
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    # reap it ourselves: wait4 is the only way to get a child's own rusage
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ClientRun(
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        wall_s=time.monotonic() - started,
        usage=Usage(rusage.ru_utime + rusage.ru_stime, (peak_kb or rusage.ru_maxrss) / 1024.0),
        timed_out=timed_out,
    )


class Server:
    """A server process started in the foreground of the trial process, with a pid file.

    ``start`` waits until ``ready()`` is true; if the process exits first, ``start`` raises
    ``ServerExited`` carrying the server's log, for the target to classify (a refused config, a
    crash, out of memory).
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        log_path: Path,
        pid_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self.pid_file = pid_file
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self._peak_rss = 0.0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Start the server and wait until ``ready()``; raise ``ServerExited`` if it dies first."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, user=self.user,
                **_drop_groups(self.user),
            )
        self.pid_file.write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._forget()
                raise ServerExited(code, self.log_text())
            if ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ServerExited(None, self.log_text())
            time.sleep(0.02)
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample, name="server-rss", daemon=True)
        self._sampler.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def _sample(self) -> None:
        while self._sampling.is_set():
            with contextlib.suppress(psutil.Error):
                # proportional set size: shared memory (e.g. PostgreSQL's shared buffers) counted
                # once across the tree, not once per process
                pss = sum(_pss(p) for p in self._tree())
                self._peak_rss = max(self._peak_rss, pss / 2**20)
            time.sleep(0.1)

    def stop_sampling(self) -> None:
        """Stop sampling the tree's memory (10 times a second): a long-running server that no
        trial measures (a launched live instance) should not pay for it."""
        self._sampling.clear()

    def usage(self) -> Usage:
        """CPU time of the server's tree so far (children it reaped included) and peak memory."""
        if self.proc is None:
            return Usage()
        cpu = 0.0
        with contextlib.suppress(psutil.Error):
            for i, p in enumerate(self._tree()):
                t = p.cpu_times()
                cpu += t.user + t.system
                if i == 0:  # the root has reaped its finished children (e.g. backends)
                    cpu += t.children_user + t.children_system
        return Usage(cpu, self._peak_rss)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask the server to stop (``sig``), kill it after ``timeout``; return its exit code."""
        self._sampling.clear()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
                self.proc.wait()
        code = self.proc.returncode
        self._forget()
        return code

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)


class ServerExited(Exception):
    """The server exited (or never became ready) during start-up; carries its log."""

    def __init__(self, returncode: int | None, log: str) -> None:
        self.returncode = returncode
        self.log = log
        what = "did not become ready" if returncode is None else f"exited with code {returncode}"
        super().__init__(f"server {what}")


def _pss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):
        return int(proc.memory_info().rss)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it, and wait (5 s at most) until they are dead."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        wait_dead(procs, timeout=5)


def wait_dead(procs: Sequence[psutil.Process], timeout: float) -> None:
    """Wait until every process of ``procs`` is dead; a zombie is (``psutil.wait_procs`` waits
    for a zombie that is not our child until its parent reaps it: seconds, or for ever)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.ppid() == os.getpid():
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))  # reap our own
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in procs):
            return
        time.sleep(0.02)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_from_pid_file(pid_file: Path, must_contain: str = "") -> bool:
    """End the process recorded in ``pid_file`` (and its tree) if it still runs; True if one did.

    ``must_contain`` guards against a recycled pid: the process's command line must contain it
    (e.g. the data directory).
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return False
    killed = False
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if must_contain in " ".join(proc.cmdline()):
            kill_tree(pid)
            killed = True
    pid_file.unlink(missing_ok=True)
    return killed


def last_lines(text: str, pattern: Callable[[str], bool] | None = None, n: int = 5) -> str:
    """The last ``n`` lines of ``text`` (those matching ``pattern`` if given), joined by ' | '."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if pattern is not None:
        lines = [ln for ln in lines if pattern(ln)]
    return " | ".join(lines[-n:])


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """For ``preexec_fn``: the kernel sends the child ``sig`` when the thread that started it
    ends, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing happens)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1: PR_SET_PDEATHSIG


# -- per-instance secrets and private sockets ----------------------------------------------------
def new_secret() -> str:
    """A random secret for one instance (256 bits, URL-safe: no quoting needed anywhere)."""
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (0600), atomically: the
    file is made 0600 (``mkstemp``) before the text is in it, and replaces ``path`` whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def private_dir(path: Path) -> Path:
    """Make ``path`` a directory only its owner may enter (0700); anything else by that name (a
    file or a symlink someone put there) is removed first."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is masked by the umask, and an old directory keeps its own
    return path


def connect_unix(path: Path, timeout: float = 1.0) -> socket.socket:
    """A stream socket connected to the Unix socket ``path``; a path longer than ``sun_path``
    (107 bytes) is reached through its directory's ``/proc/self/fd`` entry."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= 107:
            sock.connect(os.fspath(path))
        else:
            fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{fd}/{path.name}")
            finally:
                os.close(fd)
    except OSError:
        sock.close()
        raise
    return sock


def run_with_input(
    cmd: Sequence[str],
    text: str,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (as ``user``, with that user's group only) with ``text`` on its standard input,
    and capture its output: a way to hand a program something that must stay off its command
    line. The process stays in the caller's process group, so a kill of the trial ends it too."""
    return subprocess.run(
        list(cmd), input=text, capture_output=True, text=True, timeout=timeout, check=False,
        env=dict(env) if env is not None else None, cwd=cwd, user=user, **_drop_groups(user),
    )
