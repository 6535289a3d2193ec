"""The Prefect API a command reports to: an operator's (``PREFECT_API_URL``) or the command's own
temporary one, which this module starts and tells apart (``configured_api``).

The temporary server is the one Prefect would start by itself on first use (uvicorn on Prefect's
app factory, the UI off, 127.0.0.1 on a free port), started by knobflow instead, for three reasons:

- it admits only this command: a per-instance secret (Prefect's basic auth) reaches the server
  through its environment and the client through Prefect's settings in memory (never a command
  line, a log or a file), where Prefect's own admits any process of this host;
- the client does not import Prefect's server package to start it (``SubprocessASGIServer``:
  1.4-1.5 s of a cold command's imports, measured in ``benchmarks/RESULTS.md``);
- it runs in a session of its own, so a Ctrl-C in the terminal does not kill it with the job
  (which then retried a dead API for minutes), and it ends when this process is killed
  (``PR_SET_PDEATHSIG``) or exits (stopped as Prefect stops its own).

Its URL and secret are given to Prefect as this process's global settings, not as environment
variables: a process forked from this one (a warm process's job) shares the server; one it execs
and that uses Prefect starts its own, as before. What asks "is there an operator's server?"
(approval, test beds, heartbeats, workers, watch) asks ``configured_api``, which answers None for
the temporary server.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from targets.common.errors import KnobflowError
from targets.common.files import display_path

__all__ = ["TemporaryServer", "begin", "configured_api", "no_heartbeats_to_a_temporary_server",
           "start", "temporary_server"]

#: How long the temporary server may take to answer (Prefect's own default is 20 s; a loaded
#: 2-core machine has needed more).
START_TIMEOUT_S = 120.0
#: how many times the server is started before the command gives up (a port taken meanwhile)
START_ATTEMPTS = 5


@dataclass
class TemporaryServer:
    """This process's temporary Prefect server."""

    url: str  # the API's URL, ending in /api
    auth: str  # knobflow:SECRET
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Stop it as Prefect stops its own: SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_server: TemporaryServer | None = None


def temporary_server() -> TemporaryServer | None:
    """This process's temporary server (a forked job's: its parent's), if one was started."""
    return _server


def configured_api() -> str | None:
    """The operator's Prefect API (``PREFECT_API_URL`` or Prefect's profile), or None when the
    command reports to its temporary server."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().api.url or "") or None
    if url is not None and _server is not None and url == _server.url:
        return None
    return url


def start() -> None:
    """Start the temporary server (when no server is configured) and wait until it answers."""
    begin()()


def begin(with_us: bool = True) -> Callable[[], None]:
    """Start the temporary server (when no server is configured) and return a function that
    waits until it answers and hands it to Prefect (raising what its start raised), so the
    caller can load its modules meanwhile. A configured server must answer its health check
    instead. ``with_us=False``: the server does not end when this process is killed (the warm
    process gives it a watchdog instead, ``flows/warm.py``)."""
    if _server is not None:
        return lambda: None
    url = configured_api()
    if url is not None:
        _check_answers(url)
        return lambda: None
    from targets.process import new_secret

    auth = f"knobflow:{new_secret()}"
    found: list[TemporaryServer] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            found.append(_launch(auth, with_us))
        except BaseException as exc:  # raised to the caller when it waits
            failed.append(exc)
        done.set()
        if found:
            _warm_up(found[0])
        # the server dies with the thread that started it (PR_SET_PDEATHSIG follows the
        # thread): this one lives as long as the process
        threading.Event().wait()

    threading.Thread(target=run, name="prefect-server-start", daemon=True).start()

    def wait() -> None:
        global _server
        done.wait()
        if failed:
            raise failed[0]
        _server = found[0]
        atexit.register(_server.stop)
        _use(_server.url, auth)

    return wait


def _launch(auth: str, with_us: bool) -> TemporaryServer:
    """Run the server on a free port until it answers. It is started again only when its port
    was taken meanwhile; any other exit is an error that quotes the server's own, which is kept
    in its log (``server_log``)."""
    from flows.server import api_answers
    from targets.process import free_port

    log = server_log()
    for _ in range(START_ATTEMPTS):
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        since = log.stat().st_size if log.exists() else 0
        proc = _popen(port, auth, with_us, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not api_answers(url, auth, timeout=1.0):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise KnobflowError(f"Prefect's temporary server did not answer within "
                                    f"{START_TIMEOUT_S:g} s (its log: {display_path(log)}); set "
                                    "PREFECT_API_URL to a running server, or try again when the "
                                    "machine is less loaded")
            time.sleep(0.05)
        else:
            return TemporaryServer(url=url, auth=auth, proc=proc)
        said = _written_since(log, since)
        if "address already in use" not in said.lower():
            break
    raise KnobflowError(f"Prefect's temporary server exited with code {proc.returncode}: "
                        f"{_last_error(said)} (all of it: {display_path(log)}); set "
                        "PREFECT_API_URL to a running server")


def server_log() -> Path:
    """Where the temporary servers of this ``PREFECT_HOME`` write their errors (appended, 0600):
    the terminal would show them in the middle of the progress bar, or not at all."""
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home / "knobflow-temporary-server.log"


def _written_since(log: Path, offset: int) -> str:
    with contextlib.suppress(OSError), log.open("rb") as text:
        text.seek(offset)
        return text.read(1 << 20).decode("utf-8", "replace")
    return ""


def _last_error(said: str) -> str:
    """The last exception line of ``said`` (a traceback's last line), else its last line."""
    from targets.process import last_lines

    def is_error(line: str) -> bool:
        return re.match(r"^[\w.]+(Error|Exception|Exit)\b", line) is not None

    return (last_lines(said, is_error, n=1) or last_lines(said, n=1) or "it wrote nothing")[:300]


def _warm_up(server: TemporaryServer) -> None:
    """Ask the new server what a flow run's start asks first (its API version, then a read of
    flow runs): its first answers take ~0.4 s (the API loads what its routes need), which the
    command would otherwise wait for; here the server does it while the command loads."""
    from flows.server import basic_auth

    for path, body in (("admin/version", None), ("flow_runs/filter", b'{"limit": 1}')):
        request = urllib.request.Request(f"{server.url}/{path}", data=body, headers={
            **basic_auth(server.auth), "Content-Type": "application/json"})
        with contextlib.suppress(OSError, ValueError), \
                urllib.request.urlopen(request, timeout=30):
            pass


#: The server's command: uvicorn's own, with Python's cyclic garbage collector off while Prefect's
#: server package imports (5.2 -> 3.5 s on a slow VM), as in the command (``flows.entry``).
_UVICORN = ("import gc, sys; gc.disable(); import prefect.server.api.server; gc.freeze(); "
            "gc.enable(); from uvicorn.main import main; sys.argv[0] = 'uvicorn'; main()")


def _popen(port: int, auth: str, with_us: bool, log: Path) -> subprocess.Popen[bytes]:
    from prefect.settings import get_current_settings

    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1", "PREFECT_SERVER_API_AUTH_STRING": auth,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "ERROR"}  # its errors, to its log
    env.pop("PREFECT_API_URL", None)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _UVICORN, "--app-dir", str(Path(spec.origin).parent.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            preexec_fn=_killed_with_us if with_us else None)
    finally:
        os.close(out)


def _killed_with_us() -> None:
    """In the server's process, before it starts: it ends when the command does."""
    from targets.process import die_with_parent

    die_with_parent(signal.SIGKILL)  # SIGKILL: its SQLite database survives that, and it ends
    # at once (a graceful stop of uvicorn and Prefect's services takes seconds)


def _use(url: str, auth: str) -> None:
    """Make the server this process's Prefect API: its global settings, as Prefect's own
    ``refresh_global_settings_context`` replaces them (threads started later see them too)."""
    import prefect.context as context
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    now = context.GLOBAL_SETTINGS_CONTEXT
    settings = now.settings.copy_with_update(
        updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth})
    context.GLOBAL_SETTINGS_CONTEXT = context.SettingsContext(profile=now.profile,
                                                              settings=settings)


def _check_answers(url: str, timeout: float = 5.0) -> None:
    """A configured Prefect API must answer its health check in seconds (Prefect's client
    retries for minutes); else one line that says what to do."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        reason = (f"no answer in {timeout:g} s" if isinstance(exc, httpx.TimeoutException)
                  else "cannot connect" if isinstance(exc, httpx.TransportError)
                  else f"HTTP {getattr(getattr(exc, 'response', None), 'status_code', '?')}")
        raise KnobflowError(f"the Prefect API {url} does not answer ({reason}); start the "
                            "server, or unset PREFECT_API_URL to run with a temporary "
                            "one") from None


@contextlib.contextmanager
def no_heartbeats_to_a_temporary_server() -> Iterator[None]:
    """Prefect's flow-run heartbeats off while a job reports to the command's temporary server:
    nothing but that server, which ends with the command, would hear them, and the flow run's
    end waits up to 1 s for the heartbeat thread (it sleeps in 1-second steps). With a
    configured server they stay on, for whatever watches them there."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if configured_api():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield

