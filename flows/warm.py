"""The warm process: ``knobflow warm`` loads knobflow once and runs each ``knobflow tune`` of its
home in a forked child, so a job does not pay ~17 s of imports and a Prefect server's start.

It imports every module of knobflow's packages and what a job loads later (Great Expectations,
the training step's libraries, MLflow's stores), starts Prefect's temporary server (127.0.0.1, as
a command's own), and listens on ``HOME/warm.sock`` (0600, in the home: only its owner reaches it;
the peer's uid is checked as well). A command sent there (``flows.warm_client``) is forked a child
that becomes the command: its terminal, folder, environment and umask, the same output and exit
code, ``duration_s`` counted from the command's start.

Faults: Ctrl-C or SIGTERM of the command reach the job (it stops as interrupted, ``--resume``
continues); a command killed outright leaves its job a closed socket, and the job stops the same
way; the warm process ending (Ctrl-C, SIGTERM) interrupts its jobs first and waits for them
(``STOP_GRACE_S``), and if it is killed outright the kernel sends each job SIGTERM: they stop as
interrupted, reporting to its Prefect server, which a watchdog process ends once the warm process
and every job of it have ended (``flows.lifeline.pipe_lifeline``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from flows.lifeline import pipe_lifeline
from flows.warm_client import (
    MAX_SOCKET_PATH,
    PACKAGES,
    code_fingerprint,
    import_time_environment,
    peer_uid,
    socket_path,
)

__all__ = ["STOP_GRACE_S", "WarmError", "serve"]

#: Seconds the warm process waits for its jobs to stop when it is asked to end.
STOP_GRACE_S = 60.0
#: Seconds a connection may take to send its command (a client sends it at once); one that
#: stays silent holds up no other command meanwhile.
REQUEST_WAIT_S = 10.0


class WarmError(Exception):
    """The warm process cannot start (already running, a home it cannot use)."""


# -- the warm process ------------------------------------------------------------------------------
def serve(home: Path, log: Any = None) -> int:
    """Load knobflow, start Prefect's temporary server and run ``tune`` commands sent to
    ``HOME/warm.sock`` until SIGINT or SIGTERM; then interrupt the jobs still running, wait for
    them (``STOP_GRACE_S``) and remove the socket."""
    log = log or (lambda text: print(f"warm: {text}", file=sys.stderr, flush=True))
    path = socket_path(home)
    _check_free(path)
    began = time.perf_counter()
    log(f"loading knobflow (pid {os.getpid()}) ...")
    _preload()
    server, api_url = _start_server()
    _check_threads(log)
    fingerprint = code_fingerprint()
    environment = import_time_environment(dict(os.environ))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)  # the socket file: 0600
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(16)
    listener.setblocking(False)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    stopping: list[int] = []
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _f: stopping.append(signum))
    jobs: dict[int, float] = {}
    pending: dict[socket.socket, float] = {}  # connections yet to send, and until when
    log(f"ready in {time.perf_counter() - began:.1f} s: `knobflow tune ... --home {home}` runs "
        f"here (socket {path}; Prefect at {api_url}); Ctrl-C stops")
    try:
        while not stopping:
            wait = max(0.0, min(pending.values()) - time.monotonic()) if pending else None
            ready: list[Any] = []
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([listener, wake_r, *pending], [], [], wait)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            _reap(jobs, log)
            if stopping:
                break
            if listener in ready:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    pending[listener.accept()[0]] = time.monotonic() + REQUEST_WAIT_S
            for conn in _requests(pending, ready, log):
                _accept(conn, listener, server, fingerprint, environment, jobs, log)
    finally:
        for conn in pending:
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener.close()
        _stop_jobs(jobs, log)
    log("stopped")
    return 0


def _requests(pending: dict[socket.socket, float], ready: list[Any],
              log: Any) -> list[socket.socket]:
    """The connections of ``pending`` whose request came; those past their wait are closed."""
    came = [conn for conn in pending if conn in ready]
    for conn in came:
        del pending[conn]
    for conn in [c for c, until in pending.items() if until <= time.monotonic()]:
        del pending[conn]
        conn.close()
        log(f"a connection sent no command within {REQUEST_WAIT_S:g} s: closed")
    return came


def _start_server() -> tuple[Any, str]:
    """Prefect's temporary server, started with its lifeline (none with a configured server:
    ``PREFECT_API_URL``), and the API its jobs report to."""
    from flows import temporary_api

    temporary_api.begin(with_us=False)()
    server = temporary_api.temporary_server()
    if server is None:  # a configured server is used
        return None, str(temporary_api.configured_api())
    pipe_lifeline(server.pid)  # its jobs, forks of this process, hold it too
    return server, server.url


def _check_threads(log: Any) -> None:
    """Say which threads the loading left besides the server's starter (a fork keeps none)."""
    import threading

    others = [t.name for t in threading.enumerate()
              if t is not threading.main_thread() and t.name != "prefect-server-start"]
    if others:
        log(f"warning: threads running before the first fork: {', '.join(others)}")


def _check_free(path: Path) -> None:
    """No other warm process serves this home; a socket left by one that died is removed."""
    if len(str(path)) > MAX_SOCKET_PATH:
        raise WarmError(f"the socket path {path} is longer than {MAX_SOCKET_PATH} characters "
                        "(a Unix socket's limit); choose a shorter --home")
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(path))
    except OSError:  # nobody listens: left by a warm process that was killed
        path.unlink()
        return
    finally:
        probe.close()
    raise WarmError(f"a warm process already serves this home ({path}); stop it first")


def _preload() -> None:
    """Import what a ``tune`` job imports, in the order the command does (scipy.special first,
    see ``flows.cli_tune``), so a forked job starts with it loaded. Nothing here may start a
    thread or open a database: a fork keeps neither."""
    import importlib

    from flows.cli_tune import _import_scipy_special_first, prefect_console
    from flows.serve_fork import preload_modules

    prefect_console(False)  # before Prefect is imported, as the command does
    _import_scipy_special_first()
    for name in preload_modules(PACKAGES):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from tasks.gate import import_now
    from tasks.model_io import import_now as import_model_io

    import_now()
    import_model_io()  # and MLflow's map of installed packages, which an import does not make
    gc.freeze()  # a forked job's collections skip what every job has (``flows.entry``)


def _accept(conn: socket.socket, listener: socket.socket, server: Any, fingerprint: str,
            environment: dict[str, str], jobs: dict[int, float], log: Any) -> None:
    """Read one command's request; refuse it (the reason is sent back) or fork its job."""
    fds: list[int] = []
    try:
        conn.setblocking(True)
        conn.settimeout(REQUEST_WAIT_S)  # it is readable: its request (or its end) is there
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        if peer_uid(conn) != os.getuid():
            return  # not this user's: closed without a word
        request = json.loads(data)
        refused = _refusal(request, fingerprint, environment, len(fds))
        if refused:
            conn.send(json.dumps({"refused": refused}).encode())
            log(f"refused a command: {refused}")
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the job: it never returns into this loop
            try:
                _child(conn, listener, fds, request, server)
            finally:
                os._exit(1)  # only if _child raised: it ends the process itself
        jobs[pid] = time.perf_counter()
        log(f"job {pid}: knobflow {' '.join(request['argv'])}")
    except (OSError, ValueError, KeyError) as exc:
        log(f"a command could not be read: {exc}")
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def _refusal(request: dict[str, Any], fingerprint: str, environment: dict[str, str],
             n_fds: int) -> str | None:
    """Why this command must run cold, or None."""
    if n_fds != 3 or not isinstance(request.get("argv"), list):
        return "the command sent no terminal"
    if request.get("code") != fingerprint:
        return ("knobflow's code or its libraries changed since the warm process started; "
                "restart it (Ctrl-C, then `knobflow warm`)")
    theirs = import_time_environment(request.get("env") or {})
    differ = sorted(k for k in set(theirs) | set(environment)
                    if theirs.get(k) != environment.get(k))
    if differ:
        return (f"the command's environment differs from the warm process's in "
                f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}")
    return None


def _child(conn: socket.socket, listener: socket.socket, fds: list[int],
           request: dict[str, Any], server: Any) -> None:
    """Become the command, run it, and send its exit code once the job's own exit handlers
    have run; the process ends here (``end_process``)."""
    import atexit
    import threading

    listener.close()
    _become(request, fds)
    if server is not None:  # the warm process's server: not this job's to stop
        atexit.unregister(server.stop)
    exit_code = [1]

    def report() -> None:  # the last of the job's exit handlers (registered first)
        signal.alarm(60)  # the warm process's own handlers must not keep this job alive
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the job is over: the
            signal.signal(sig, signal.SIG_IGN)  # command, gone once it has the code, says so
        with contextlib.suppress(OSError):
            conn.send(json.dumps({"exit": exit_code[0]}).encode())

    atexit.register(report)

    def listen() -> None:  # the command's signals; its end (even SIGKILL) stops the job
        while True:
            try:
                message = conn.recv(65536)
            except OSError:
                message = b""
            if not message:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            with contextlib.suppress(ValueError, KeyError, OSError):
                os.kill(os.getpid(), int(json.loads(message)["signal"]))

    conn.settimeout(None)
    conn.send(json.dumps({"pid": os.getpid()}).encode())
    threading.Thread(target=listen, name="warm-command", daemon=True).start()
    from flows.cli import main
    from flows.entry import end_process
    from flows.timing import command_started

    command_started(float(request["started"]))
    try:
        exit_code[0] = main(list(request["argv"]))
    except SystemExit as exc:
        exit_code[0] = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        exit_code[0] = 1
    end_process(exit_code[0])


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """This forked process takes the command's terminal, folder, environment, umask, argv."""
    os.setpgid(0, 0)  # a Ctrl-C in the warm process's terminal is not this job's
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from targets.process import die_with_parent

    die_with_parent(signal.SIGTERM)  # the warm process gone (its Prefect server too): stop
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    fds.clear()
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=os.isatty(fd))
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["knobflow", *request["argv"]]
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # not the warm process's (every job's same) state


def _reap(jobs: dict[int, float], log: Any) -> None:
    from tasks.launcher import ended_children

    for pid, code in ended_children():
        began = jobs.pop(pid, time.perf_counter())
        log(f"job {pid} ended: exit {code} after {time.perf_counter() - began:.1f} s")


def _stop_jobs(jobs: dict[int, float], log: Any) -> None:
    """Interrupt the jobs still running (they stop as interrupted: ``--resume`` continues
    them) and wait for them, up to ``STOP_GRACE_S``."""
    if not jobs:
        return
    log(f"interrupting {len(jobs)} running job(s): {', '.join(map(str, jobs))}")
    for pid in jobs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while jobs and time.monotonic() < deadline:
        _reap(jobs, log)
        time.sleep(0.1)
    for pid in jobs:
        log(f"job {pid} did not stop in {STOP_GRACE_S:g} s: killed")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
