"""The command's temporary Prefect server (``flows/temporary_api.py``): it admits only the process
that started it, its secret is on no command line, the client never imports Prefect's server
package, a flow runs on it, and it ends with the process (an exit or a SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

#: A command's process in miniature: start the server, run a flow on it, wait for stdin to close.
CHILD = """
import json, sys
from flows import temporary_api

temporary_api.start()
server = temporary_api.temporary_server()
print(json.dumps({"url": server.url, "pid": server.pid,
                  "configured": temporary_api.configured_api()}), flush=True)
from prefect import flow

@flow
def double(x: int) -> int:
    return 2 * x

print(json.dumps({"result": double(21),
                  "server_imported": "prefect.server.api.server" in sys.modules}), flush=True)
sys.stdin.read()
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env,
                             cwd=Path(__file__).resolve().parents[2])
    assert child.stdout is not None
    first = json.loads(child.stdout.readline())
    first.update(json.loads(child.stdout.readline()))
    return child, first


def _status(url: str, auth: str | None) -> int:
    request = urllib.request.Request(f"{url}/admin/version")
    if auth is not None:
        request.add_header("Authorization", f"Basic {b64encode(auth.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_the_temporary_server_admits_only_its_command_and_ends_with_it(
        tmp_path: Path, end: str) -> None:
    child, seen = _start(tmp_path)
    try:
        url, pid = str(seen["url"]), int(str(seen["pid"]))
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        assert seen["result"] == 42  # the flow ran, reporting to it with the secret
        assert seen["configured"] is None  # not an operator's server
        assert seen["server_imported"] is False  # the client did not load Prefect's server
        assert _status(url, None) == 401
        assert _status(url, "knobflow:not-the-secret") == 401
        server = psutil.Process(pid)
        assert not any("knobflow:" in part for part in server.cmdline())
        if end == "exit":
            assert child.stdin is not None
            child.stdin.close()
            assert child.wait(timeout=30) == 0
        else:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        wait_for(lambda: _gone(pid), timeout=30, what="the temporary server to end")
    finally:
        child.kill()
        child.wait()


def test_an_operators_server_is_the_configured_one() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.temporary_api import configured_api

    url = "http://127.0.0.1:4200/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        assert configured_api() == url
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert configured_api() is None
