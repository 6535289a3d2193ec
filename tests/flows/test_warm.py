"""The warm process (``knobflow warm``, ``flows/warm.py``): a real one per module, with its own
Prefect server, and ``knobflow tune`` commands started through the console script's entry
(``flows.entry``) as a user's shell starts them. What they must show: a job runs in a child of
the warm process with the command's output, folder and exit code; Ctrl-C and SIGKILL of the
command and SIGTERM of the warm process stop jobs as interrupted (resumable); a command whose
environment or code differs runs on its own and says so; a home has one warm process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import CLI, REPO, wait_for

from flows.warm import WarmError, _check_free, _refusal
from flows.warm_client import code_fingerprint, import_time_environment


class Warm:
    """A running ``knobflow warm`` process of ``home``; its log (stderr) in ``log``."""

    def __init__(self, home: Path, env: dict[str, str], log: Path) -> None:
        self.home, self.env, self.log = home, env, log
        self.proc = subprocess.Popen([*CLI, "warm", "--home", str(home)],
                                     cwd=REPO, env=env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: "ready in" in self.text() or self.proc.poll() is not None,
                 lambda: f"the warm process to be ready:\n{self.text()}", timeout=240)
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def jobs(self) -> dict[int, str]:
        """Each job the warm process started: its pid and its command line."""
        return {int(m.group(1)): m.group(2)
                for m in re.finditer(r"^warm: job (\d+): knobflow (.*)$", self.text(), re.M)}

    def ended(self, pid: int) -> int | None:
        found = re.search(rf"^warm: job {pid} ended: exit (-?\d+)", self.text(), re.M)
        return int(found.group(1)) if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)


def warm_env(tmp: Path) -> dict[str, str]:
    """The environment of the warm process and of its commands: their own Prefect home, no
    configured Prefect API (the warm process starts its own server)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "KNOBFLOW_NO_WARM"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warm]:
    tmp = tmp_path_factory.mktemp("warm")
    process = Warm(tmp / "home", warm_env(tmp), tmp / "warm.log")
    try:
        yield process
    finally:
        process.stop()


def command(args: list[str], env: dict[str, str], cwd: Path = REPO,
            **kwargs: object) -> subprocess.Popen[str]:
    """``knobflow ARGS`` started as the console script starts it."""
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # type: ignore[call-overload]


def job_args(warm: Warm, service: str, budget: int, duration: float) -> list[str]:
    return ["tune", "synthetic", "--budget", str(budget), "--service", service, "--seed", "1",
            "--set-workload", f"duration={duration}", "--home", str(warm.home), "--json"]


def new_job(warm: Warm, before: set[int]) -> int:
    return wait_for(lambda: next(iter(set(warm.jobs()) - before), None),
                    lambda: f"the warm process to start the job:\n{warm.text()}")


def test_a_tune_command_runs_in_the_warm_process_with_its_folder_output_and_exit_code(
        warm: Warm) -> None:
    sock = warm.home / "warm.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    before = set(warm.jobs())
    # a relative --home: the job runs in the command's folder, not the warm process's
    args = job_args(warm, "runs-warm", 6, 0.0)
    args[args.index("--home") + 1] = warm.home.name
    done = command(args, warm.env, cwd=warm.home.parent)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    pid = new_job(warm, before)
    wait_for(lambda: warm.ended(pid) is not None, lambda: f"the job's end:\n{warm.text()}")
    assert warm.ended(pid) == 0
    assert "warm process" not in err  # it was not refused
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["n_trials"] == 6 and Path(summary["best_config_file"]).is_file()
    assert Path(summary["best_config_file"]).is_relative_to(warm.home)
    # the command's time counts from the command's start, not the warm process's
    assert 0 < summary["fixed_s"]["imports"] < summary["duration_s"]
    # bad input answers from the warm process too, with the cold command's line and code
    before = set(warm.jobs())
    bad = command(["tune", "synthetic", "--budget", "0", "--home", str(warm.home)], warm.env)
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "'budget' option" in err, err
    assert set(warm.jobs()) - before


def test_two_commands_at_once_run_side_by_side(warm: Warm) -> None:
    before = set(warm.jobs())
    jobs = [command(job_args(warm, f"side-{i}", 4, 0.5), warm.env) for i in range(2)]
    results = [job.communicate(timeout=600) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [err for _, err in results]
    services = {json.loads(out.strip().splitlines()[-1])["service"] for out, _ in results}
    assert services == {"side-0", "side-1"}
    assert len(set(warm.jobs()) - before) == 2


def test_a_silent_connection_holds_up_no_command(warm: Warm) -> None:
    """A client that connects and sends nothing waits on its own: a command sent meanwhile is
    served at once, and the silent one is closed after ``REQUEST_WAIT_S``."""
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    idle.connect(str(warm.home / "warm.sock"))
    try:
        start, before = len(warm.text()), set(warm.jobs())
        done = command(job_args(warm, "beside-silent", 2, 0.0), warm.env)
        _, err = done.communicate(timeout=600)
        assert done.returncode == 0 and "warm process" not in err, err
        pid = new_job(warm, before)
        closed = "a connection sent no command within"
        wait_for(lambda: closed in warm.text()[start:], lambda: warm.text()[start:],
                 timeout=60)
        log = warm.text()[start:]
        assert log.index(f"job {pid}:") < log.index(closed), log  # served before it was closed
        assert idle.recv(16) == b""  # closed by the warm process
    finally:
        idle.close()


def test_ctrl_c_of_the_command_interrupts_its_job_which_resumes(warm: Warm) -> None:
    before = set(warm.jobs())
    job = command(job_args(warm, "ctrl-c", 8, 1.0), warm.env)
    pid = new_job(warm, before)
    time.sleep(4)  # into its trials
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    wait_for(lambda: warm.ended(pid) == 130, lambda: f"the job's end:\n{warm.text()}")
    resumed = command(["tune", "synthetic", "--budget", "8", "--service", "ctrl-c",
                       "--home", str(warm.home), "--resume", "--json"], warm.env)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n_trials"] == 8


def test_a_killed_command_stops_its_job(warm: Warm) -> None:
    before = set(warm.jobs())
    job = command(job_args(warm, "killed", 40, 1.0), warm.env)
    pid = new_job(warm, before)
    time.sleep(3)
    job.kill()
    job.wait(timeout=30)
    # the job hears its command's socket close and stops as interrupted (it keeps its trials)
    wait_for(lambda: warm.ended(pid) is not None, lambda: f"the job's end:\n{warm.text()}",
             timeout=120)
    assert job.stderr is not None  # the job wrote on after its command was killed: read it
    assert warm.ended(pid) == 130, warm.text() + job.stderr.read()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    records = [json.loads(p.read_text()) for p in (warm.home / "jobs").glob("*/job.json")]
    assert [r["status"] for r in records if r["service"] == "killed"] == ["interrupted"]


def test_a_command_with_another_environment_runs_on_its_own_and_says_why(warm: Warm) -> None:
    before = set(warm.jobs())
    env = {**warm.env, "MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}
    bad = command(["tune", "synthetic", "--budget", "0", "--home", str(warm.home)], env)
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2, err  # the cold command's answer
    assert "warm process: the command's environment differs" in err
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" in err and "running here" in err
    assert set(warm.jobs()) == before
    # and so does any command with KNOBFLOW_NO_WARM, silently
    cold = command(["tune", "synthetic", "--budget", "0", "--home", str(warm.home)],
                   {**warm.env, "KNOBFLOW_NO_WARM": "1"})
    _, err = cold.communicate(timeout=300)
    assert cold.returncode == 2 and "warm process" not in err
    assert set(warm.jobs()) == before


def test_a_home_has_one_warm_process(warm: Warm) -> None:
    second = command(["warm", "--home", str(warm.home)], warm.env)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert "a warm process already serves this home" in err
    assert (warm.home / "warm.sock").exists()  # the first one's socket is kept


def test_stopping_the_warm_process_interrupts_its_jobs_and_removes_its_socket(
        tmp_path: Path) -> None:
    process = Warm(tmp_path / "home", warm_env(tmp_path), tmp_path / "warm.log")
    try:
        job = command(job_args(process, "stopped", 40, 1.0), process.env)
        pid = new_job(process, set())
        time.sleep(4)
        process.proc.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=180)
        assert job.returncode == 130, err
        assert process.proc.wait(timeout=120) == 0
        assert process.ended(pid) == 130 and "stopped" in process.text()
        assert not (process.home / "warm.sock").exists()
    finally:
        process.stop()


def test_a_warm_process_killed_under_a_job_and_the_next_one_that_takes_its_home(
        tmp_path: Path) -> None:
    """SIGKILL of the warm process while a job runs: the job stops as interrupted at once (its
    command exits 130; it reported to the warm process's Prefect server, which outlives it
    until the job has ended, then ends too); the socket stays behind, a command meanwhile runs
    on its own, the next warm process takes the home and resumes the job."""
    process = Warm(tmp_path / "home", warm_env(tmp_path), tmp_path / "warm.log")
    try:
        server = [c for c in psutil.Process(process.proc.pid).children(recursive=True)
                  if "uvicorn" in " ".join(c.cmdline())]
        assert len(server) == 1
        job = command(job_args(process, "warm-killed", 40, 1.0), process.env)
        new_job(process, set())
        time.sleep(4)  # into its trials
        process.proc.kill()  # SIGKILL: no handler runs, the socket stays behind
        process.proc.wait(timeout=60)
        _, err = job.communicate(timeout=90)  # it retried a dead server for minutes before
        assert job.returncode == 130, err
        assert "--resume" in err and "Error logging to API" not in err
        server[0].wait(timeout=30)  # the server ends once its last job has
        assert (process.home / "warm.sock").exists()
        # a command meanwhile finds nobody listening and runs on its own
        cold = command(["tune", "synthetic", "--budget", "0", "--home", str(process.home)],
                       process.env)
        _, err = cold.communicate(timeout=300)
        assert cold.returncode == 2 and "'budget' option" in err, err
        again = Warm(process.home, process.env, tmp_path / "warm-2.log")
        try:
            done = command(["tune", "synthetic", "--budget", "6", "--service", "warm-killed",
                            "--home", str(process.home), "--resume", "--json"], again.env)
            out, err = done.communicate(timeout=600)
            assert done.returncode == 0, err
            assert "Traceback" not in err
            assert json.loads(out.strip().splitlines()[-1])["n_trials"] >= 6
            assert again.jobs()  # served by the new warm process
        finally:
            again.stop()
    finally:
        process.stop()


def test_a_socket_left_by_a_killed_warm_process_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "warm.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left.bind(str(path))
    left.close()  # bound, nobody listening: what a SIGKILL leaves
    _check_free(path)
    assert not path.exists()
    with pytest.raises(WarmError, match="longer than"):
        _check_free(tmp_path / ("x" * 120) / "warm.sock")


def test_the_code_fingerprint_follows_every_module(tmp_path: Path) -> None:
    (tmp_path / "flows" / "sub").mkdir(parents=True)
    module = tmp_path / "flows" / "sub" / "m.py"
    module.write_text("x = 1\n")
    first = code_fingerprint(tmp_path)
    assert code_fingerprint(tmp_path) == first
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 10**9))
    assert code_fingerprint(tmp_path) != first
    request = {"argv": ["tune"], "code": code_fingerprint(tmp_path), "env": {}}
    refused = _refusal(request, first, {}, 3)
    assert refused is not None and "code or its libraries changed" in refused
    assert _refusal({**request, "code": first}, first, {}, 3) is None
    assert "terminal" in _refusal({**request, "code": first}, first, {}, 0)


def test_the_code_fingerprint_follows_the_installed_libraries(tmp_path: Path) -> None:
    """A library upgraded, installed or removed under a warm process (or a serve's fork
    server) changes the fingerprint: a fork would run the old library's loaded modules
    beside the new one's files."""
    code, site = tmp_path / "code", tmp_path / "site-packages"
    (code / "flows").mkdir(parents=True)
    (site / "somelib").mkdir(parents=True)
    (site / "somelib-1.0.dist-info").mkdir()
    first = code_fingerprint(code, [site])
    assert code_fingerprint(code, [site]) == first
    (site / "somelib" / "extra.py").write_text("")  # a library's own files: not read
    assert code_fingerprint(code, [site]) == first
    (site / "somelib-1.0.dist-info").rename(site / "somelib-1.1.dist-info")  # upgraded
    upgraded = code_fingerprint(code, [site])
    assert upgraded != first
    (site / "other-2.0.dist-info").mkdir()  # installed
    installed = code_fingerprint(code, [site])
    assert installed not in (first, upgraded)
    info = site / "other-2.0.dist-info"  # the same version installed again
    os.utime(info, ns=(info.stat().st_atime_ns, info.stat().st_mtime_ns + 10**9))
    assert code_fingerprint(code, [site]) != installed
    info.rmdir()  # removed: as before it was installed
    assert code_fingerprint(code, [site]) == upgraded
    assert code_fingerprint(code, [tmp_path / "gone"]) == code_fingerprint(code, [])


def test_the_code_fingerprint_reads_the_folders_the_libraries_are_installed_in() -> None:
    import optuna
    import prefect

    from flows.warm_client import _site_dirs

    for module in (prefect, optuna):
        assert Path(module.__file__).resolve().parent.parent in _site_dirs()


def test_only_what_is_read_at_import_time_is_compared() -> None:
    env = {"PREFECT_HOME": "/a", "MLFLOW_X": "1", "KNOBFLOW_HOME": "/h", "PYTHONPATH": "/p",
           "TERM": "xterm", "COLUMNS": "80", "PATH": "/bin", "KNOBFLOW_NO_WARM": "1",
           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL"}
    assert set(import_time_environment(env)) == {"PREFECT_HOME", "MLFLOW_X", "PYTHONPATH"}


def test_a_process_knows_when_it_started_to_the_tick() -> None:
    """``duration_s`` counts from the command's start (``flows.timing.process_started``), warm
    or cold: within the launch of the process, not psutil's up-to-a-second-off boot time."""
    code = ("import time; time.sleep(1.0); from flows.timing import process_started; "
            "print(repr(process_started()))")
    launched = time.time()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    started = float(done.stdout)
    assert launched - 0.05 <= started <= launched + 0.9  # the sleep is after the start


def test_a_warm_process_on_a_configured_prefect_server_runs_its_jobs_there(
        tmp_path: Path, prefect_server: dict[str, str]) -> None:
    """With ``PREFECT_API_URL`` set the warm process starts no server of its own, says which
    one its jobs report to, and runs them."""
    env = {**warm_env(tmp_path), **prefect_server}
    process = Warm(tmp_path / "home", env, tmp_path / "warm.log")
    try:
        assert f"Prefect at {prefect_server['PREFECT_API_URL']}" in process.text()
        assert not [c for c in psutil.Process(process.proc.pid).children(recursive=True)
                    if "uvicorn" in " ".join(c.cmdline())]
        done = command(job_args(process, "configured", 3, 0.0), env)
        out, err = done.communicate(timeout=600)
        assert done.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["n_trials"] == 3
        assert process.jobs()
    finally:
        process.stop()
