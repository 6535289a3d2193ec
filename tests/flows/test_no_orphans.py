"""No server a target started outlives its job, even when the tuner is killed with SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
from conftest import start_cli

from targets.registry import load_target

#: target -> (its contract variant to run, the process name it starts)
SERVERS = {
    "postgres": ("postgres", "postgres"),
    "redis": ("redis", "redis-server"),
    "rocksdb": ("db_bench", "db_bench"),
}


def _started_since(names: set[str], since: float) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "create_time"]):
        if proc.info["name"] in names and proc.info["create_time"] >= since - 1:
            found.append(proc)
    return found


@pytest.mark.parametrize("target", sorted(SERVERS))
def test_sigkill_of_the_tuner_leaves_no_server_behind(
    target: str, prefect_api: str, home: Path
) -> None:
    variant, process = SERVERS[target]
    examples = load_target(target).contract_examples()[variant]
    missing = [exe for exe in examples.requires if shutil.which(exe) is None]
    if missing:
        if os.environ.get("KNOBFLOW_REQUIRE_ALL_TARGETS"):
            pytest.fail(f"{target} needs {missing}")
        pytest.skip(f"{target} needs {missing}")
    workload = [x for k, v in examples.workload.items() for x in ("--set-workload", f"{k}={v}")]
    since = time.time()
    proc = start_cli(["tune", target, "--budget", "20", "--home", str(home), *workload],
                     prefect_api)
    deadline = time.monotonic() + 120
    servers: list[psutil.Process] = []
    while time.monotonic() < deadline and not servers:
        assert proc.poll() is None, proc.stderr.read()
        servers = _started_since({process}, since)
        time.sleep(0.1)
    assert servers, f"no {process} process appeared"
    time.sleep(0.5)  # well inside a trial
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(_started_since({process}, since), timeout=5)
    assert not alive, f"orphaned servers: {[p.pid for p in alive]}"
