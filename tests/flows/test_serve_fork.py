"""``flows.serve_fork``: what the fork server loads, and a Prefect that does not start flow runs
the expected way left alone (its runs start cold, and serve says so); ``knobflow serve``'s home
checked before anything starts; the fork server killed under a running serve. That served runs
are forks of the fork server, end to end, is checked by ``test_continual.py``."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
from prefect import flow_engine

from flows import serve_fork
from flows.job import JobStatus, recorded_jobs
from flows.lifeline import LIFELINE_ENV, WATCHDOG
from flows.server import api_answers, api_client
from flows.warm_client import PACKAGES
from tests.conftest import run_cli, wait_for
from tests.flows.test_continual import (
    fork_server,
    own_server_env,
    prefect,
    start_serve,
    stop_serve,
    wait_serving,
)
from tuners.study import JOURNAL, storage_of


def test_the_fork_server_loads_every_knobflow_module_and_what_a_job_imports() -> None:
    names = serve_fork.preload_modules(PACKAGES)
    assert names[0] == "scipy.special"  # before pandas and MLflow, as a command imports it
    for module in ("flows.tune", "flows.watch", "flows.retune", "tasks.gate", "tasks.train",
                   "tuners.surrogate", "targets.synthetic", "great_expectations",
                   "mlflow.sklearn", "lightgbm.sklearn"):
        assert module in names
    assert not [n for n in names if n.endswith("__main__")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("changed", ["multiprocessing", "run_flow_in_subprocess"])
def test_a_prefect_that_starts_runs_otherwise_is_left_alone(
        changed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if changed == "multiprocessing":  # the function no longer asks the module for "spawn"
        monkeypatch.setattr(flow_engine, "multiprocessing", object())
    else:  # the runner's starter calls something else
        from prefect.runner import _starter_direct

        monkeypatch.setattr(_starter_direct, "run_flow_in_subprocess", lambda *a, **k: None)
    said: list[str] = []
    assert serve_fork.fork_served_runs(PACKAGES, said.append) is None
    assert said and said[0].startswith("flow runs start cold")
    assert multiprocessing.get_context("spawn").get_start_method() == "spawn"
    if changed == "run_flow_in_subprocess":
        assert flow_engine.multiprocessing is multiprocessing  # untouched


def test_runs_start_in_a_new_interpreter_once_the_code_changed_under_serve() -> None:
    """After an upgrade under a running serve, a fork would run the old code: runs are spawned
    (with the code on disk) from then on, and serve says so once."""
    forkserver = multiprocessing.get_context("forkserver")
    on_disk = ["v1"]
    said: list[str] = []
    stand_in = serve_fork._ForkserverForSpawn(forkserver, lambda: on_disk[0], said.append)
    assert stand_in.get_context("spawn") is forkserver
    assert stand_in.get_context("fork") is multiprocessing.get_context("fork")
    assert stand_in.Process is multiprocessing.Process  # the rest is the module's own
    on_disk[0] = "v2"
    for _ in range(2):
        assert isinstance(stand_in.get_context("spawn"), serve_fork._ServedSpawnContext)
    on_disk[0] = "v1"  # changed once is changed: what runs may have loaded either
    assert isinstance(stand_in.get_context("spawn"), serve_fork._ServedSpawnContext)
    assert len(said) == 1 and "restart knobflow serve" in said[0]
    assert stand_in.get_context("spawn").get_start_method() == "spawn"
    read: list[str] = []

    def fingerprint() -> str:
        read.append(on_disk[0])
        return on_disk[0]

    without = serve_fork._ForkserverForSpawn(None, fingerprint, said.append)  # --no-fork
    assert isinstance(without.get_context("spawn"), serve_fork._ServedSpawnContext)
    assert read == []  # every run is a new interpreter: the code on disk is not read for it


def _report(answers: Any) -> None:
    """In a served run's process: what the collector keeps apart, the signal its parent's end
    sends it (``PR_GET_PDEATHSIG``), its parent, whether it holds the lifeline's FIFO."""
    import ctypes
    import gc

    sig = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(sig))  # 2: PR_GET_PDEATHSIG
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    answers.put((gc.get_freeze_count(), sig.value, os.getppid(),
                 os.environ[LIFELINE_ENV] in fds))


@pytest.fixture
def lifeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A FIFO with a reader, named to served runs as serve names its server's lifeline."""
    fifo = tmp_path / "lifeline"
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    monkeypatch.setenv(LIFELINE_ENV, str(fifo))
    yield fifo
    os.close(reader)


def test_a_served_run_starts_frozen_and_ends_with_its_fork_server(lifeline: Path) -> None:
    """A run forked by serve's fork server has what the fork server loaded frozen for the
    collector, asks for SIGTERM when its parent, the fork server, ends, and holds its server's
    lifeline (``flows.lifeline``)."""
    import signal

    context = serve_fork._ServedRunContext()
    answers = context.Queue()
    process = context.Process(target=_report, args=(answers,))
    assert isinstance(process, serve_fork._ServedRunProcess)
    process.start()
    frozen, pdeathsig, parent, holds = answers.get(timeout=120)
    process.join(30)
    assert process.exitcode == 0
    assert frozen > 0 and pdeathsig == signal.SIGTERM and holds
    assert parent != os.getpid()  # a child of the fork server, not of this process


def test_a_run_in_a_new_interpreter_holds_the_lifeline_too(lifeline: Path) -> None:
    """``--no-fork``, or knobflow changed under serve: the spawned run holds the lifeline."""
    context = serve_fork._ServedSpawnContext()
    answers = context.Queue()
    process = context.Process(target=_report, args=(answers,))
    process.start()
    _, _, parent, holds = answers.get(timeout=120)
    process.join(30)
    assert process.exitcode == 0 and parent == os.getpid() and holds


def test_serve_refuses_a_home_that_is_a_file_before_it_starts_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    result = run_cli(["serve", "--target", "synthetic", "--home", str(home)], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"knobflow: error: the knobflow home {home} is not a directory ({home} is a file); "
        "choose another with --home or KNOBFLOW_HOME")
    assert home.read_text() == "not a folder"  # nothing written over it


def test_a_killed_fork_server_ends_its_runs_and_a_new_one_serves_the_next(home: Path) -> None:
    """The fork server killed outright (SIGKILL: the OOM killer, a stray ``pkill``) under a
    running tuning job: the job's process stops too (it would otherwise run on, orphaned, while
    the runner took it for ended), its run is Crashed and never Completed, the job is recorded
    as interrupted (``--resume`` continues it); serve starts a new fork server for its next run,
    and Ctrl-C still leaves nothing running."""
    serve = start_serve(home, {k: v for k, v in os.environ.items()
                               if not k.startswith("PREFECT_API")}, "--target", "synthetic")
    try:
        forks, env, run, job = tuning_run(home, serve, budget=400)
        tree = [job, *job.children(recursive=True)]  # its trial launcher and trials too
        assert any("tasks.launcher" in command(p) for p in tree[1:]), tree
        forks.kill()
        _, alive = psutil.wait_procs(tree, timeout=120)
        for orphan in alive:
            orphan.kill()
        assert not alive, f"outlived the fork server: {[command(p) for p in alive]}"

        def final() -> Any:
            with api_client(env) as api:
                state = api.read_flow_run(run.id).state
            return state if state is not None and state.is_final() else None

        state = wait_for(final, "the run's final state", timeout=120, interval=0.5)
        assert state.is_crashed(), state
        after = prefect(env, "deployment", "run", "watch/synthetic-watch", "--watch")
        assert after.returncode == 0, after.stdout + after.stderr
        assert fork_server(serve).pid != forks.pid
        with api_client(env) as api:
            assert api.read_flow_run(run.id).state.is_crashed()  # never Completed later
    finally:
        code, rest, left = stop_serve(serve)
    assert code == 0 and "knobflow serve: stopped" in rest, rest
    assert not left, [p.cmdline() for p in left]
    (job_record,) = recorded_jobs(home)
    assert job_record.status == JobStatus.INTERRUPTED, job_record.status


def test_serve_killed_outright_leaves_its_server_to_its_run_then_nothing(home: Path) -> None:
    """A second serve of the home refuses to start. ``knobflow serve`` killed outright (SIGKILL)
    under a tuning job: the run goes on (as Prefect's runs do when their runner dies) and
    finishes against serve's Prefect server, which its lifeline's watchdog ends after the run
    (``flows.lifeline``); nothing is left running, and the server's record is removed."""
    serve = start_serve(home, {k: v for k, v in os.environ.items()
                               if not k.startswith("PREFECT_API")}, "--target", "synthetic")
    tree: list[psutil.Process] = []
    try:
        # 14 trials left after the first two (7 s), and verification: longer than the second
        # serve's command below takes, so the run is still running when serve is killed
        _, env, _, job = tuning_run(home, serve, budget=16)
        second = run_cli(["serve", "--target", "synthetic", "--home", str(home)], timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.strip() == (  # it started nothing: one serve per home's server
            f"knobflow: error: another knobflow serve (pid {serve.pid}) serves this home's "
            f"Prefect server ({home / 'prefect-server'}); stop it first, or give another --home")
        tree = psutil.Process(serve.pid).children(recursive=True)
        assert any(WATCHDOG in p.cmdline() for p in tree), [command(p) for p in tree]
        serve.kill()
        serve.wait(30)
        assert api_answers(env["PREFECT_API_URL"], env["PREFECT_API_AUTH_STRING"])
        assert job.is_running()  # the run goes on, its server with it
        serve.communicate(timeout=240)  # read what the run writes to serve's output, to its end
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, f"left running: {[command(p) for p in alive]}"
    finally:
        serve.kill()
        for left in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                left.kill()
    (job_record,) = recorded_jobs(home)
    assert job_record.status == JobStatus.FINISHED, job_record.status
    assert not (home / "prefect-server" / "server.json").exists()


def tuning_run(home: Path, serve: subprocess.Popen[str], budget: int
               ) -> tuple[psutil.Process, dict[str, str], Any, psutil.Process]:
    """Once ``serve`` serves: its fork server, its Prefect server's client environment, a run of
    ``tune/synthetic-nightly`` (0.5 s trials) and that run's process, after two trials."""
    wait_serving(serve)
    forks = fork_server(serve)
    env = own_server_env(home)
    with api_client(env) as api:
        deployment = api.read_deployment_by_name("tune/synthetic-nightly")
        run = api.create_flow_run_from_deployment(deployment.id, parameters={
            "budget": budget, "workload": {"duration": 0.5}})
    job = wait_for(lambda: running_job(home, forks), "the tuning job's trials", timeout=480,
                   interval=0.5)
    return forks, env, run, job


def running_job(home: Path, forks: psutil.Process, trials: int = 2) -> psutil.Process | None:
    """The served run's process (a child of ``forks``) once its job has finished ``trials``."""
    children, jobs = forks.children(), recorded_jobs(home)
    if not children or not jobs:
        return None
    try:
        study = optuna.load_study(study_name=jobs[0].study_name,
                                  storage=storage_of(home / JOURNAL))
    except KeyError:  # the job is recorded before its study is made
        return None
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return children[0] if len(done) >= trials else None


def command(process: psutil.Process) -> str:
    """The command line of ``process``, or "" once it has ended (a trial's lasts 0.5 s)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""
