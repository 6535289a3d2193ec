"""Jobs that share a test-bed: the work pool's priorities order them, the test-bed's concurrency
limit keeps them apart, and a trial's instance runs on its own CPUs under a memory limit.

Two tune jobs on one test-bed (limit 1) go through a process work pool served by one worker:
the low-priority one is submitted first, the production service's second, before the worker
starts. The production job runs first, and the other holds the test-bed only after the first's
last trial. While the worker starts, the test holds the test-bed itself: the first job waits for
it (and its record says how long). The production job's instance is pinned to one CPU under a
512 MiB limit: its trial processes say what the kernel gave them, and job.json says how. Below
the jobs, single trials show what a server a trial starts inherits and that a trial over its
limit fails as out_of_memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from flows.job import make_home
from flows.testbeds import QUEUES, ensure_queues, limit_name, queue_for, submit_tune
from targets.base import FailureClass
from tasks.isolation import (
    CGROUP_ENV,
    IsolationError,
    check_cpus,
    cpu_list_text,
    parse_cpu_list,
    plan_isolation,
)
from tasks.runner import TrialRunner
from tasks.services import set_service_settings
from tests.flows.probe_target import ProbeTarget

REPO = Path(__file__).resolve().parents[2]
POOL = "testbeds"
HOST_CPUS = sorted(os.sched_getaffinity(0))
#: Tiny jobs: 3 trials of 1 s, no noise check, the least verification, no training.
JOB = {"target": "synthetic", "budget": 3, "noise_runs": 0, "verify_repeats": 2,
       "train": False, "workload": {"duration": 1.0, "noise": 0.0, "intervals": 2}}


@pytest.fixture(scope="module")
def client_env(prefect_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """This process's Prefect settings pointed at the session's server."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"],
                             PREFECT_API_AUTH_STRING: prefect_server["PREFECT_API_AUTH_STRING"]}):
        yield prefect_server


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """A worker stops on SIGINT (twice: the second ends its graceful shutdown)."""
    for _ in range(2):
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                continue
    if worker.poll() is None:
        worker.kill()
        worker.wait()


@pytest.fixture(scope="module")
def two_jobs(client_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    """The two jobs, run through the pool; what the API and their records say."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.tune import tune

    home = tmp_path_factory.mktemp("testbeds") / "kf"
    make_home(home)
    set_service_settings(home, "orders", {"priority": "production"})
    testbed = f"tb-{uuid.uuid4().hex[:6]}"
    assert ensure_queues(POOL) == QUEUES
    assert ensure_queues(POOL) == QUEUES  # idempotent
    os.chdir(REPO)  # the deployment's entrypoint is relative to the repository
    tune.to_deployment(name="testbeds", work_pool_name=POOL,
                       job_variables={"working_dir": str(REPO)}).apply()
    common = {**JOB, "testbed": testbed, "testbed_slots": 1}
    low = submit_tune("tune/testbeds", {**common, "service": "batch", "instance": "b"},
                      home=home)
    high = submit_tune("tune/testbeds", {**common, "service": "orders", "instance": "o",
                                         "cpus": str(HOST_CPUS[-1]), "memory_mb": 512},
                       home=home)
    with get_client(sync_client=True) as client:  # the test holds the test-bed for a while
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name=limit_name(testbed), limit=1))
        held = client.increment_concurrency_slots_with_lease(
            names=[limit_name(testbed)], slots=1, mode="concurrency", lease_duration=600).json()
        assert held["limits"], held
        lease = held["lease_id"]
    worker_log = home.parent / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "1",
         "--type", "process"],
        cwd=REPO, env={**os.environ, **client_env, "PREFECT_WORKER_QUERY_SECONDS": "1",
                       "PREFECT_WORKER_PREFETCH_SECONDS": "0",
                       "PREFECT_LOGGING_LEVEL": "INFO"},  # the waiting job's line reaches the API
        stdout=worker_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def said() -> str:
        with get_client(sync_client=True) as client:
            states = [client.read_flow_run(r.id).state for r in (low, high)]
        return f"{states}; the worker's log ends: {worker_log.read_text()[-3000:]}"

    try:
        with get_client(sync_client=True) as client:
            wait_for(lambda: waiting(client, high.id), lambda: "the production job to wait "
                     f"for the test-bed ({said()})", timeout=120, interval=1)
            time.sleep(1)
            client.release_concurrency_slots_with_lease(lease_id=lease)

            def finished() -> list[Any]:
                runs = [client.read_flow_run(r.id) for r in (low, high)]
                return runs if all(r.state.is_final() for r in runs) else []

            runs = wait_for(finished, lambda: f"both jobs to end ({said()})", timeout=180,
                            interval=1)
    finally:
        _stop(worker)
    jobs = {}
    for service in ("orders", "batch"):
        (path,) = (home / "jobs").glob(f"{service}-*/job.json")
        jobs[service] = json.loads(path.read_text())
        jobs[service]["dir"] = path.parent
    for run in runs:
        print(f"{run.name}: {run.start_time:%H:%M:%S} - {run.end_time:%H:%M:%S}")
    return {"runs": dict(zip(("low", "high"), runs, strict=True)), "jobs": jobs,
            "testbed": testbed, "home": home}


def waiting(client: Any, flow_run: Any) -> bool:
    """Whether the flow run's log says it waits for its test-bed."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])))
    return any("busy" in log.message and "waiting" in log.message for log in logs)


def test_the_production_job_runs_first_and_never_beside_the_other(
        two_jobs: dict[str, Any]) -> None:
    runs, jobs = two_jobs["runs"], two_jobs["jobs"]
    assert all(r.state.is_completed() for r in runs.values()), {
        k: r.state.message for k, r in runs.items()}
    assert runs["high"].work_queue_name == "production"
    assert runs["low"].work_queue_name == "default"
    assert runs["high"].start_time < runs["low"].start_time
    # the test-bed: the other job holds it only after the production job's last trial ended
    last_trial = max(p.stat().st_mtime for p in jobs["orders"]["dir"].glob("trials/*/log.txt"))
    held = jobs["batch"]["isolation"]["held_since"]
    from datetime import datetime

    assert datetime.fromisoformat(held).timestamp() > last_trial
    for job in jobs.values():
        assert job["isolation"]["limit"] == f"testbed-{two_jobs['testbed']}"
        assert job["isolation"]["slots"] == 1
    # the test held the test-bed when the production job came: it waited, and said so
    assert jobs["orders"]["isolation"]["waited_s"] >= 0.5
    assert jobs["batch"]["isolation"]["waited_s"] < 30  # it had the test-bed once it was free


def test_the_instance_is_pinned_and_limited_as_the_record_says(
        two_jobs: dict[str, Any]) -> None:
    isolation = two_jobs["jobs"]["orders"]["isolation"]
    cpu = str(HOST_CPUS[-1])
    assert isolation["cpus"] == {"o": cpu}
    assert isolation["memory"] in ("cgroup 512 MiB", "rlimit 512 MiB")
    logs = list(two_jobs["jobs"]["orders"]["dir"].glob("trials/*/log.txt"))
    assert logs
    for log in logs:  # what the kernel said to each trial process (/proc/self)
        said = [ln for ln in log.read_text().splitlines() if "isolation:" in ln]
        assert said and f"cpus {cpu};" in said[0], log.read_text()
        if isolation["memory"].startswith("rlimit"):
            assert f"address space limit {512 * 2**20}" in said[0]
    other = two_jobs["jobs"]["batch"]["isolation"]
    assert other["cpus"] == {"b": "all"} and other["memory"] == "none"


def test_a_service_s_priority_picks_its_queue(tmp_path: Path) -> None:
    assert queue_for(tmp_path, "svc") == "default"
    set_service_settings(tmp_path, "svc", {"priority": "production"})
    assert queue_for(tmp_path, "svc") == "production"


# -- single trials ----------------------------------------------------------------------------
def _runner(tmp_path: Path, memory_mb: int | None, hog_mb: int = 0) -> TrialRunner:
    isolation = plan_isolation(["i"], str(HOST_CPUS[0]), memory_mb, "t")
    return TrialRunner(target_cls=ProbeTarget, target_ref="tests.flows.probe_target:ProbeTarget",
                       workload={"hog_mb": hog_mb}, objective="throughput", timeout_s=30,
                       job_dir=tmp_path / "job", instance_dirs={"i": tmp_path / "i"},
                       isolation=isolation)


def test_a_server_the_trial_starts_inherits_the_cpus_and_the_limit(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 512)
    outcome = runner.execute("0", {}, "i", 0)
    assert outcome.ok, outcome.message
    said = [ln for ln in outcome.measurement.log if ln.startswith("pid")]
    assert len(said) == 2  # the trial process and its "server"
    limit = str(512 * 2**20) if runner.isolation.memory.startswith("rlimit") else "unlimited"
    for line in said:
        assert line.endswith(f"cpus {HOST_CPUS[0]} as {limit}"), said


def test_a_trial_over_its_memory_limit_fails_as_out_of_memory(tmp_path: Path) -> None:
    runner = _runner(tmp_path, 256, hog_mb=1024)
    started = time.monotonic()
    outcome = runner.execute("0", {}, "i", 0)
    assert time.monotonic() - started < 20  # failed, not hung
    assert outcome.failure_class == FailureClass.OUT_OF_MEMORY, outcome.message
    assert "over its memory limit" in outcome.message and "256 MiB" in outcome.message


# -- what the host cannot give: the option and the fix ----------------------------------------
def test_cpu_lists() -> None:
    assert parse_cpu_list("0-2,5") == [0, 1, 2, 5]
    assert cpu_list_text([0, 1, 2, 5]) == "0-2,5"
    assert check_cpus(["a"], None) == {"a": None}
    half = (len(HOST_CPUS) + 1) // 2
    if len(HOST_CPUS) >= 2:  # auto: distinct sets that cover the CPUs this process may use
        assert check_cpus(["a", "b"], "auto") == {"a": HOST_CPUS[:half], "b": HOST_CPUS[half:]}


def test_more_cpus_than_the_host_has_names_the_option_and_the_fix() -> None:
    many = [f"i{k}" for k in range(len(HOST_CPUS) + 1)]
    with pytest.raises(IsolationError, match=r"--cpus auto .* lower --parallel"):
        check_cpus(many, "auto")
    with pytest.raises(IsolationError, match=r"--cpus 4000 asks for CPU 4000.*give CPUs"):
        check_cpus(["a"], "4000")
    from flows.spec import JobSpec
    from targets.common.errors import KnobflowError

    with pytest.raises(KnobflowError, match="'cpus' option of tune must be auto or a CPU list"):
        JobSpec.of(target="synthetic", cpus="some")
    with pytest.raises(KnobflowError, match=r"'memory_mb' option of tune must be an int in"):
        JobSpec.of(target="synthetic", memory_mb=1)


def test_a_delegated_cgroup_gets_each_instance_s_limits(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where KNOBFLOW_CGROUP names a cgroup v2 with the memory controller, each instance gets a
    cgroup with its limits (a directory that imitates one here: this host delegates none)."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    monkeypatch.setenv(CGROUP_ENV, str(tmp_path))
    plan = plan_isolation(["a"], str(HOST_CPUS[0]), 512, "job-1")
    assert plan.memory == "cgroup 512 MiB" and "why_not_cgroup" not in plan.record()
    leaf = tmp_path / "knobflow-job-1" / "a"
    assert plan.limits("a").cgroup == str(leaf)
    assert (leaf / "memory.max").read_text() == str(512 * 2**20)
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert (leaf / "cpuset.cpus").read_text() == str(HOST_CPUS[0])
    assert "+memory" in (tmp_path / "cgroup.subtree_control").read_text()
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert plan.limits("a").oom_kills() == 1
    # without the memory controller: the rlimit, and why
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    plan = plan_isolation(["a"], None, 512, "job-2")
    assert plan.memory == "rlimit 512 MiB"
    assert "memory controller is not delegated" in plan.record()["why_not_cgroup"]


def test_without_a_prefect_server_the_test_bed_is_not_guarded_and_the_log_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.testbeds import hold_testbed

    with temporary_settings(restore_defaults={PREFECT_API_URL}), caplog.at_level(logging.INFO), \
            hold_testbed("tb", 1, logging.getLogger("knobflow.test")) as held:
        assert held == {"limit": None, "slots": None, "testbed": "tb"}
    assert "test-bed tb is not guarded: no Prefect server is configured" in caplog.text


def test_a_job_naming_no_test_bed_holds_no_limit_even_with_a_server(
        prefect_api: str, caplog: pytest.LogCaptureFixture) -> None:
    """Without --testbed or --testbed-slots nothing is held (a default limit of one per host
    would queue every job of the host, and a killed job's slot would hold the next)."""
    import logging

    from flows.testbeds import hold_testbed, host_testbed

    with caplog.at_level(logging.INFO), \
            hold_testbed(None, None, logging.getLogger("knobflow.test")) as held:
        assert held == {"limit": None, "slots": None, "testbed": host_testbed()}
    assert "test-bed not named (--testbed): no concurrency limit is held" in caplog.text
