"""The trial launcher (``tasks/launcher.py``): forked trial processes are trial processes as before
(their own session, named in ps, killed with their group), and nothing outlives a dead launcher
or a dead tuner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from conftest import REPO, trial_processes, wait_for

from targets.synthetic import SyntheticTarget
from tasks.launcher import Launcher
from tasks.runner import TrialRunner
from tuners.trials import TrialOutcome

GOOD = {"x": 0.25, "y": 1.3, "threads": 8, "buffer_kb": 1000, "mode": "alpha", "compress": False}
HANG = {**GOOD, "mode": "beta", "y": 500.0}  # the synthetic target's hanging region


def make_runner(tmp_path: Path, timeout: float = 30.0, **workload: object) -> TrialRunner:
    return TrialRunner(
        target_cls=SyntheticTarget, target_ref="targets.synthetic:SyntheticTarget",
        workload=SyntheticTarget.parse_workload({"noise": 0.0, **workload}),
        objective="throughput", timeout_s=timeout, job_dir=tmp_path / "job",
        instance_dirs={"i1": tmp_path / "i1"},
    )


def _launcher_pid(runner: TrialRunner) -> int:
    return int(runner.processes._launcher._proc.pid)


def test_a_forked_trial_process_leads_its_own_session_and_says_what_it_is(
        tmp_path: Path) -> None:
    runner = make_runner(tmp_path, duration=1.5)
    seen: dict[str, object] = {}
    done: list[TrialOutcome] = []
    worker = threading.Thread(target=lambda: done.append(runner.run("0", GOOD, "i1", 1)))
    worker.start()
    request = str(tmp_path / "job" / "trials" / "0" / "request.json")
    wait_for(lambda: trial_processes(request), "the forked trial process", timeout=30)
    pid = trial_processes(request)[0]
    seen.update(sid=os.getsid(pid), pgid=os.getpgid(pid), ppid=psutil.Process(pid).ppid(),
                named=psutil.Process(pid).cmdline()[-1])
    worker.join(60)
    assert done and done[0].ok, done and done[0].message
    launcher = _launcher_pid(runner)
    # forked by the launcher, not the tuner; its command line names the tuner, as before
    assert seen == {"sid": pid, "pgid": pid, "ppid": launcher, "named": str(os.getpid())}
    assert psutil.Process(launcher).ppid() == os.getpid()
    # the next trial is forked by the same launcher: the interpreter start is paid once
    assert runner.run("1", GOOD, "i1", 2).ok
    assert _launcher_pid(runner) == launcher
    runner.processes.close()
    wait_for(lambda: not _alive(launcher), "the closed launcher to end", timeout=15)


def test_a_dead_launcher_fails_its_trial_as_no_fault_of_the_config_and_the_next_one_runs(
        tmp_path: Path) -> None:
    runner = make_runner(tmp_path, timeout=60.0)
    assert runner.run("0", GOOD, "i1", 1).ok  # the launcher is up
    done: list[TrialOutcome] = []
    worker = threading.Thread(target=lambda: done.append(runner.run("1", HANG, "i1", 1)))
    worker.start()
    request = str(tmp_path / "job" / "trials" / "1" / "request.json")
    wait_for(lambda: trial_processes(request), "the hanging trial", timeout=30)
    os.kill(_launcher_pid(runner), signal.SIGKILL)
    worker.join(30)
    assert done, "the trial did not end when its launcher died"
    assert done[0].failure_class == "target_error"  # never learned as the config's fault
    assert "launcher" in done[0].message
    wait_for(lambda: not trial_processes(request), "the orphaned trial to end", timeout=15)
    assert runner.run("2", GOOD, "i1", 3).ok  # a new launcher forks the next one


def test_trial_processes_started_afresh_run_as_forked_ones_do(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, timeout=1.0)
    runner.processes._fork = False
    assert runner.run("0", GOOD, "i1", 1).ok
    outcome = runner.run("1", HANG, "i1", 1)
    assert outcome.failure_class == "timeout"
    assert runner.processes._launcher is None
    crash = runner.run("2", {**GOOD, "threads": 60, "compress": True}, "i1", 1)
    assert crash.failure_class == "crash" and "SIGABRT" in crash.message


def test_a_launcher_that_cannot_fork_leaves_the_job_to_trial_processes_started_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Launcher, "COMMAND", (sys.executable, "-c", "import sys; sys.exit(3)"))
    runner = make_runner(tmp_path)
    first = runner.run("0", GOOD, "i1", 1)
    assert first.ok, first.message
    assert runner.processes._fork is False
    assert runner.run("1", GOOD, "i1", 2).ok


def test_a_killed_tuner_leaves_no_launcher_and_no_trial_process(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from targets.synthetic import SyntheticTarget
        from tasks.runner import TrialRunner
        runner = TrialRunner(
            target_cls=SyntheticTarget, target_ref="targets.synthetic:SyntheticTarget",
            workload=SyntheticTarget.parse_workload({{"noise": 0.0}}), objective="throughput",
            timeout_s=120, job_dir=Path({str(tmp_path / "job")!r}),
            instance_dirs={{"i1": Path({str(tmp_path / "i1")!r})}})
        runner.run("0", {HANG!r}, "i1", 1)
    """)
    tuner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    request = str(tmp_path / "job" / "trials" / "0" / "request.json")
    try:
        wait_for(lambda: trial_processes(request), "the tuner's hanging trial", timeout=60)
        launchers = [p for p in psutil.Process(tuner.pid).children()
                     if "tasks.launcher" in " ".join(p.cmdline())]
        assert len(launchers) == 1
        trial = trial_processes(request)[0]
    finally:
        tuner.kill()
        tuner.wait()
    wait_for(lambda: not _alive(launchers[0].pid), "the launcher to end", timeout=20)
    wait_for(lambda: not _alive(trial), "the trial process to end", timeout=20)
    assert trial_processes(request) == [], "a trial process outlived its tuner"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
