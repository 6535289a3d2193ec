"""No server a target started outlives its job, even when the tuner is killed with SIGKILL.

Only the job's own processes count: those below the ``knobflow tune`` process this test starts,
and those in the session or process group of one of its trial processes (each starts its own
session, so a server that left the tuner's tree is still found), recorded while the job runs.
A ``postgres``, ``redis-server`` or ``db_bench`` that another test or a user started is never
looked at.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import JobProcesses, missing_executables, require, running, start_cli, wait_for

from targets.registry import load_target


def _names(procs: list[psutil.Process]) -> set[str]:
    names = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            names.add(proc.name())
    return names


def _serving(server: str, client: str) -> Callable[[list[psutil.Process]], bool]:
    """The server is up and its benchmark client runs against it."""
    return lambda procs: {server, client} <= _names(procs)


def _db_open(procs: list[psutil.Process]) -> bool:
    """A db_bench holds its database open (RocksDB keeps the LOCK file open while it runs)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.name() == "db_bench" and any(
                f.path.endswith("/LOCK") for f in proc.open_files()
            ):
                return True
    return False


@dataclass(frozen=True)
class Case:
    variant: str  # the target's contract variant to run
    servers: frozenset[str]  # names of the processes that must not outlive the job
    busy: Callable[[list[psutil.Process]], bool]  # the trial is measuring: kill the tuner now
    busy_text: str


SERVERS = {
    "postgres": Case("postgres", frozenset({"postgres", "pgbench"}),
                     _serving("postgres", "pgbench"), "pgbench running beside a postgres server"),
    "redis": Case("redis", frozenset({"redis-server", "redis-benchmark"}),
                  _serving("redis-server", "redis-benchmark"),
                  "redis-benchmark running beside a redis-server"),
    "rocksdb": Case("db_bench", frozenset({"db_bench"}), _db_open,
                    "a db_bench with its database open"),
}


@pytest.mark.parametrize("target", sorted(SERVERS))
@pytest.mark.usefixtures("mlflow_store")  # made once per session: the kill comes after it anyway
def test_sigkill_of_the_tuner_leaves_no_server_behind(
    target: str, prefect_api: str, home: Path
) -> None:
    case = SERVERS[target]
    examples = load_target(target).contract_examples()[case.variant]
    require(f"{target}/{case.variant}", missing_executables(examples.requires), "on PATH")
    workload = [x for k, v in examples.workload.items() for x in ("--set-workload", f"{k}={v}")]
    proc = start_cli(["tune", target, "--budget", "20", "--home", str(home), *workload],
                     prefect_api)
    job = JobProcesses(proc.pid, home)

    def measuring() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        return case.busy(job.record())

    try:
        # the kill must cut a trial short while its server runs and serves its benchmark
        wait_for(measuring, f"{case.busy_text} in a trial of the job", timeout=180)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        job.record()  # anything the tuner started after the last look, in a trial's session
        servers = job.named(case.servers)
        assert servers, f"no {sorted(case.servers)} among the job's processes"
        watched = [*servers, *job.trials]
        # an orphaned trial process notices within 0.25 s and kills its process group
        wait_for(lambda: not [p for p in watched if running(p)],
                 lambda: "the job's trials and servers to end after the tuner was killed; "
                 "orphaned: " + ", ".join(f"{job.seen.get(p, '?')} (pid {p.pid})"
                                          for p in watched if running(p)),
                 timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for leftover in job.seen:  # a failed test leaves nothing behind for the next ones
            if running(leftover):
                with contextlib.suppress(psutil.Error):
                    leftover.kill()
