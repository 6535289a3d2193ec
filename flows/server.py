"""knobflow's own Prefect server: the API that deployments, automations, paused runs and events
need when no ``PREFECT_API_URL`` is given (a flow alone runs on Prefect's temporary server).

``PrefectServer(home)`` owns ``HOME/prefect-server/``: the server's ``PREFECT_HOME`` (its SQLite
database), its log, its pid and ``server.json`` (URL, pid). The server listens on 127.0.0.1 on a
free port and admits only clients with the per-instance secret (Prefect's basic auth,
``PREFECT_SERVER_API_AUTH_STRING``), which is kept in ``auth`` (0600) and reaches the server and
knobflow's clients through their environment, never a command line or a log. ``env()`` is what a
client process needs (``PREFECT_API_URL`` and ``PREFECT_API_AUTH_STRING``). Prefect's events
websocket does not check the secret (Prefect issue 17687): the server is reachable from this host
only. The shared stack (``flows.stack``) runs one on PostgreSQL: ``database_url``, ``auth``,
``port`` and ``log_path`` replace the SQLite database, the ``auth`` file, the free port and the log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from targets.common.errors import EnvironmentFault
from targets.process import free_port, last_lines, new_secret, private_dir, write_private

__all__ = ["PrefectServer", "ServerFault", "api_answers", "api_client", "basic_auth"]

USER = "knobflow"


class ServerFault(EnvironmentFault):
    """knobflow's Prefect server did not start, or does not answer."""


def basic_auth(auth: str | None) -> dict[str, str]:
    """The header that gives ``auth`` (``user:secret``) to Prefect's basic auth; none without."""
    return {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"} if auth else {}


def api_answers(url: str, auth: str | None, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``url`` (ending in ``/api``) answers its health check."""
    request = urllib.request.Request(f"{url}/health", headers=basic_auth(auth))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def api_client(env: Mapping[str, str]) -> Iterator[Any]:
    """A synchronous Prefect client of the server that ``env`` (``PREFECT_API_URL``, and
    ``PREFECT_API_AUTH_STRING`` if it asks for one) names, whatever this process's settings."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings: dict[Any, Any] = {PREFECT_API_URL: env["PREFECT_API_URL"]}
    if env.get("PREFECT_API_AUTH_STRING"):
        settings[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
    with temporary_settings(settings), get_client(sync_client=True) as client:
        yield client


class PrefectServer:
    """A Prefect server under ``home/prefect-server`` on 127.0.0.1, admitting knobflow only."""

    def __init__(self, home: Path, host: str = "127.0.0.1", *, database_url: str | None = None,
                 auth: str | None = None, log_path: Path | None = None,
                 port: int | None = None) -> None:
        """``database_url`` (an SQLAlchemy URL with its password: it reaches the server through
        its environment only) replaces the SQLite database; ``auth`` (``knobflow:SECRET``)
        replaces the ``auth`` file; ``port`` is the port to listen on (default: a free one)."""
        self.dir = home / "prefect-server"
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self._database_url = database_url
        self._auth = auth
        self._log_path = log_path
        self._port = port

    @property
    def log_path(self) -> Path:
        return self._log_path or self.dir / "server.log"

    @property
    def _record(self) -> Path:
        return self.dir / "server.json"

    def auth(self) -> str:
        """``knobflow:SECRET``: the one given, or from the 0600 file (made on first use)."""
        if self._auth is not None:
            return self._auth
        path = self.dir / "auth"
        if not path.exists():
            private_dir(self.dir)
            write_private(path, f"{USER}:{new_secret()}\n")
        return path.read_text().strip()

    def record(self) -> dict[str, Any] | None:
        """The running server's URL and pid, or None when none runs."""
        try:
            data = json.loads(self._record.read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(int(data["pid"]), 0)
        except (OSError, KeyError, ValueError):
            return None
        return dict(data)

    def env(self) -> dict[str, str]:
        """What a client process needs to reach the running server."""
        data = self.record()
        if data is None:
            raise ServerFault(f"knobflow's Prefect server under {self.dir} is not running")
        return {"PREFECT_API_URL": str(data["url"]), "PREFECT_API_AUTH_STRING": self.auth()}

    def start(self, timeout: float = 300.0) -> dict[str, str]:
        """Start the server (or find it running) and wait until it answers; the client env."""
        running = self.record()
        if running is not None:
            return self.env()
        private_dir(self.dir)
        auth = self.auth()
        port = self._port or free_port()
        url = f"http://{_client_host(self.host)}:{port}/api"
        env = {**os.environ, "PREFECT_HOME": str(self.dir / "home"),
               "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth,
               "PREFECT_SERVER_API_HOST": self.host, "PREFECT_SERVER_API_PORT": str(port),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
               "PREFECT_UI_API_URL": url}
        env.pop("PREFECT_API_URL", None)
        if self._database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self._database_url
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", self.host,
                 "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        write_private(self._record, json.dumps({"url": url, "pid": self.proc.pid}) + "\n")
        deadline = time.monotonic() + timeout
        while not api_answers(url, auth):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                why = ("exited" if self.proc.returncode is not None
                       else f"did not answer within {timeout:g} s")
                raise ServerFault(f"knobflow's Prefect server {why}; its log "
                                  f"({self.log_path}) ends: "
                                  f"{last_lines(self.log_path.read_text(errors='replace'))}")
            time.sleep(0.25)
        return {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": auth}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and every process it started (its process group)."""
        data = self.record()
        pid = self.proc.pid if self.proc is not None else (data or {}).get("pid")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(int(pid)) and time.monotonic() < deadline:
                if self.proc is not None:
                    self.proc.poll()
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        self._record.unlink(missing_ok=True)
        self.proc = None


def _client_host(host: str) -> str:
    """The address clients use for a server bound to ``host`` (all addresses: this host's)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
