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


#: A server that will not start: its database is where no folder can be (or, "silent", one that
#: never answers). Prints the error, the seconds it took, and for "silent" whether it was killed.
NO_START = """
import os, subprocess, sys, time
from flows import temporary_api
from targets.common.errors import KnobflowError

if sys.argv[1] == "silent":  # a server that never answers (a hung start)
    temporary_api.START_TIMEOUT_S = 2.0
    started = []

    def popen(port, auth, with_us, log):
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return started[-1]

    temporary_api._popen = popen
began = time.monotonic()
try:
    temporary_api.begin()()
except KnobflowError as exc:
    print(exc)
    print(round(time.monotonic() - began))
    if sys.argv[1] == "silent":
        print(all(p.poll() is not None for p in started), len(started))
"""


@pytest.mark.parametrize("fault", ["exits", "silent"])
def test_a_server_that_will_not_start_is_a_clear_error(tmp_path: Path, fault: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = \
        f"sqlite+aiosqlite:///{tmp_path}/no-such-dir/sub/prefect.db"
    (tmp_path / "no-such-dir").write_text("a file where the database's folder would be")
    done = subprocess.run([sys.executable, "-c", NO_START, fault], capture_output=True,
                          text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[2], check=False)
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    assert "set PREFECT_API_URL to a running server" in lines[0], done.stdout
    log = tmp_path / "prefect" / "knobflow-temporary-server.log"
    assert str(log) in lines[0] or "knobflow-temporary-server.log" in lines[0]
    if fault == "exits":  # the server's own error, said at the first exit (no second start)
        assert lines[0].startswith("Prefect's temporary server exited with code 3: ")
        assert "unable to open database file" in lines[0]
        assert log.read_text().count("Application startup failed") == 1
        assert log.stat().st_mode & 0o777 == 0o600
    else:
        assert lines[0].startswith("Prefect's temporary server did not answer within 2 s")
        assert lines[2] == "True 1", "the silent server was not killed (or was started again)"
        assert int(lines[1]) < 30
