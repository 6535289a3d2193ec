"""Process helpers of server targets: client resource use, server start-up, pid-file clean-up."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from targets.process import Server, ServerExited, free_port, kill_from_pid_file, run_client

ALLOCATE = (
    "x = bytearray({mb} * 2**20); x[::4096] = b'1' * len(x[::4096]); import time; time.sleep(0.2)"
)


def test_client_peak_memory_is_its_own_not_the_parents(tmp_path: Path) -> None:
    ballast = bytearray(300 * 2**20)  # a big parent: a child's ru_maxrss would start at this
    ballast[::4096] = b"1" * len(ballast[::4096])
    small = run_client([sys.executable, "-c", ALLOCATE.format(mb=20)], timeout=30, log_dir=tmp_path)
    big = run_client([sys.executable, "-c", ALLOCATE.format(mb=120)], timeout=30, log_dir=tmp_path)
    assert small.returncode == 0 and big.returncode == 0, small.stderr + big.stderr
    assert 20 < small.usage.peak_rss_mb < 150, small.usage
    assert big.usage.peak_rss_mb > small.usage.peak_rss_mb + 80
    assert big.usage.cpu_s > 0
    del ballast


def test_client_timeout_kills_it(tmp_path: Path) -> None:
    # killed (-9), not ended by itself: a 60 s sleep exits 0; how soon is a benchmark's figure
    run = run_client(
        [sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5, log_dir=tmp_path
    )
    assert run.timed_out and run.returncode == -9


def test_server_that_dies_at_start_carries_its_log(tmp_path: Path) -> None:
    server = Server(
        [sys.executable, "-c", "print('FATAL: bad setting'); raise SystemExit(3)"],
        log_path=tmp_path / "server.log",
        pid_file=tmp_path / "server.pid",
    )
    with pytest.raises(ServerExited) as info:
        server.start(ready=lambda: False, timeout=10)
    assert info.value.returncode == 3
    assert "FATAL: bad setting" in info.value.log
    assert not (tmp_path / "server.pid").exists()


def test_server_start_usage_stop_and_pid_file_cleanup(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import http.server as h; "
        f"h.HTTPServer(('127.0.0.1', {port}), h.BaseHTTPRequestHandler).serve_forever()"
    )
    server = Server(
        [sys.executable, "-c", code, str(tmp_path)],
        log_path=tmp_path / "server.log",
        pid_file=tmp_path / "server.pid",
    )

    def ready() -> bool:
        return any(
            c.laddr.port == port
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        )

    server.start(ready=ready, timeout=20)
    pid = server.proc.pid
    assert (tmp_path / "server.pid").read_text().strip() == str(pid)
    # memory is sampled in the background, every 0.1 s from the start: wait for a sample
    wait_for(lambda: server.usage().peak_rss_mb > 1, "a memory sample of the server above 1 MB",
             timeout=30)
    # a crashed trial leaves the pid file: clean-up ends the process it names, if it is ours
    assert not kill_from_pid_file(tmp_path / "server.pid", must_contain="/not/our/dir")
    (tmp_path / "server.pid").write_text(f"{pid}\n")
    assert kill_from_pid_file(tmp_path / "server.pid", must_contain=str(tmp_path))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    server.stop()
