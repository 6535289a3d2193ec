"""Shared fixtures: one Prefect test harness per session, a knobflow home per test; helpers to
run the CLI, to wait for a condition, and to decide whether a real system's tests run.

A test that needs a real system (PostgreSQL, Redis, db_bench) declares it with ``needs`` (a mark)
or ``require`` (a call): without the system it is skipped, or, when the environment variable
KNOBFLOW_REQUIRE_ALL_TARGETS is set (CI sets it), it fails and says what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from targets.common.settings import quiet_environment

quiet_environment()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("KNOBFLOW_HOME", None)
# A suite started in the background of a shell without job control (`nohup pytest &`, a CI
# step's `&`) inherits SIGINT and SIGQUIT ignored, and so would every process a test starts:
# the tests that stop a served flow, a worker or a job with Ctrl-C's signal would wait forever.
for _sig in (signal.SIGINT, signal.SIGQUIT):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig == signal.SIGINT else signal.SIG_DFL)

REPO = Path(__file__).resolve().parent.parent
#: Set (to anything but "") to fail, not skip, the tests of a real system that is missing.
REQUIRE_ALL = "KNOBFLOW_REQUIRE_ALL_TARGETS"
_NEEDS = "knobflow_needs"
T = TypeVar("T")


# -- real systems: skip without them, or fail under KNOBFLOW_REQUIRE_ALL_TARGETS ----------------
def require_all_targets() -> bool:
    """Whether a missing real system fails its tests (KNOBFLOW_REQUIRE_ALL_TARGETS is set)."""
    return bool(os.environ.get(REQUIRE_ALL))


def missing_executables(executables: Iterable[str]) -> list[str]:
    """Those of ``executables`` (names looked up on PATH, or paths) that cannot be run."""
    return [exe for exe in executables if shutil.which(exe) is None]


def _reason(what: str, missing: Sequence[str], hint: str) -> str:
    return f"{what} needs {', '.join(missing)}" + (f" ({hint})" if hint else "")


def require(what: str, missing: Sequence[str], hint: str = "") -> None:
    """Stop the running test if ``what`` lacks anything (``missing`` is not empty): skip it, or
    fail it when KNOBFLOW_REQUIRE_ALL_TARGETS is set. Return if nothing is missing."""
    if not missing:
        return
    reason = _reason(what, missing, hint)
    if require_all_targets():
        pytest.fail(
            f"{reason}; {REQUIRE_ALL} is set, so this fails instead of skipping", pytrace=False
        )
    pytest.skip(reason)


def available(what: str, missing: Sequence[str], hint: str = "") -> bool:
    """For a test that covers a system only in part when it is there: whether it is. A missing
    one is left out (False), or fails the test when KNOBFLOW_REQUIRE_ALL_TARGETS is set."""
    if missing and require_all_targets():
        require(what, missing, hint)
    return not missing


def needs(what: str, missing: Sequence[str], hint: str = "") -> pytest.MarkDecorator:
    """A mark (for a test, a ``pytest.param`` or a module's ``pytestmark``) that runs ``require``
    for the test: skipped before its fixtures are set up, or failed when the test is called."""
    return getattr(pytest.mark, _NEEDS)(what, tuple(missing), hint)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{_NEEDS}(what, missing, hint): a real system the test needs (see needs())"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if not require_all_targets():  # skip before fixtures (a Prefect server, say) are set up
        for mark in item.iter_markers(_NEEDS):
            require(*mark.args, **mark.kwargs)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    for mark in item.iter_markers(_NEEDS):  # here a failure is the test's, not its set-up's
        require(*mark.args, **mark.kwargs)


# -- waiting -----------------------------------------------------------------------------------
def wait_for(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = 60.0,
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` every ``interval`` s until it returns something true, and return that;
    fail the test if it has not by ``timeout`` s (generous: a loaded machine is slow, not
    wrong). ``what`` says what was awaited (a callable: asked at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout:g} s for {what() if callable(what) else what}")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own cache folder (``XDG_CACHE_HOME``, also for the processes tests start):
    knobflow's caches (skops' trusted types, the empty MLflow store) are made there, not in the
    user's ~/.cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    cache = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (the test harness: a temporary server and database) for the session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """knobflow's own Prefect server (``flows.server``: 127.0.0.1, basic auth from a 0600 file)
    for the session, with its event and automation services: what deployments, triggers and
    paused runs need. Yields the client environment (``PREFECT_API_URL``,
    ``PREFECT_API_AUTH_STRING``) to pass to the processes a test starts."""
    from flows.server import PrefectServer

    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    env = server.start()
    try:
        yield env
    finally:
        server.stop()


class SharedStack(dict[str, str]):
    """The session's shared stack (``flows.stack``): the dict is the client environment
    (KNOBFLOW_CONFIG, PREFECT_API_URL, PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_URI,
    MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) to pass to the processes a test starts;
    ``.dir`` is the stack's directory and ``.stack`` the ``Stack`` (``start_workers``...)."""

    def __init__(self, stack: Any) -> None:
        super().__init__(stack.client_env())
        self.stack = stack
        self.dir: Path = stack.dir


def stack_missing() -> list[str]:
    """What the shared stack needs and this machine lacks (PostgreSQL's programs)."""
    from targets.postgres_cluster import find_bindir

    return [] if find_bindir() is not None else ["postgres", "initdb"]


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStack]:
    """One shared stack for the session (``infra/stack``'s: PostgreSQL, a Prefect server and an
    MLflow server on it, the ``knobflow`` work pool, no worker: start them with
    ``shared_stack.stack.start_workers(n)``), stopped at the end with everything it ran.
    Skipped without PostgreSQL (failed under KNOBFLOW_REQUIRE_ALL_TARGETS)."""
    require("the shared stack", stack_missing(), "install postgresql")
    from flows.stack import Stack

    stack = Stack(tmp_path_factory.mktemp("stack"))
    stack.start(workers=0)
    try:
        yield SharedStack(stack)
    finally:
        stack.purge()  # its cluster may be under /var/tmp: no disk left behind either


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty knobflow state directory (Optuna journals, MLflow store, instances)."""
    path = tmp_path / "kf"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded MLflow store made once per session by knobflow's own ``client_for``: copy
    it (``shutil.copyfile``) where a test needs a store but does not test making one."""
    from model_registry.store import client_for

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client_for(f"sqlite:///{db}")
    return db


@pytest.fixture
def mlflow_store(home: Path, mlflow_template: Path) -> Path:
    """``home`` with its embedded MLflow store already made: a copy of the session's. MLflow's
    first migration of a new store costs seconds (tens on a loaded machine) in every test that
    tracks anything. For tests that are not about making a store: a fresh home, or a job killed
    while it makes one, must not use it (``home`` alone is empty)."""
    db = home / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    return db


def trial_processes(marker: str) -> list[int]:
    """PIDs of live trial processes whose command line mentions ``marker`` (a path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "tasks.trial_process" in cmd and marker in cmd:
                found.append(int(entry.name))
    return found


#: ``knobflow`` as its console script runs it (``flows.entry``: the collector off while the
#: command imports, a ``tune`` ending without the interpreter's teardown); with
#: ``KNOBFLOW_NO_WARM`` set, never handed to a warm process.
CLI = [sys.executable, "-c", "import sys; from flows.entry import main; sys.exit(main())"]


def start_cli(args: list[str], api_url: str) -> subprocess.Popen[str]:
    """Start ``knobflow ARGS`` in the background against the session's Prefect API."""
    return subprocess.Popen(
        [*CLI, *args],
        cwd=REPO,
        env={"KNOBFLOW_NO_WARM": "1", **os.environ, "PREFECT_API_URL": api_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    args: list[str],
    *,
    api_url: str | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``knobflow ARGS`` in a new process, as a user would, and capture its output."""
    full_env = {"KNOBFLOW_NO_WARM": "1", **os.environ, **(env or {})}
    if api_url:
        full_env["PREFECT_API_URL"] = api_url  # use the session's server, not a new ephemeral one
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def invoke_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``knobflow ARGS`` in this process (typer's ``CliRunner``: the same command group and
    error handling as the console script, without a new interpreter's start-up); a flow it runs
    uses the session's Prefect API when the test has ``prefect_api``. Use ``run_cli`` where a
    process matters (kills, timeouts, orphans, another PYTHONPATH)."""
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["knobflow", *args], result.exit_code, result.stdout,
                                       result.stderr)


# -- the processes of a job -----------------------------------------------------------------
class JobProcesses:
    """The processes of one job, recorded while it runs, each with its name (a process that has
    ended is kept: psutil tells it from a later process that reuses its pid)."""

    def __init__(self, tuner_pid: int, home: Path) -> None:
        self.tuner = psutil.Process(tuner_pid)
        self.home = str(home)
        self.sessions: set[int] = set()  # of trial processes, and the groups they lead
        self.trials: set[psutil.Process] = set()
        self.seen: dict[psutil.Process, str] = {}

    def record(self) -> list[psutil.Process]:
        """Record the job's processes alive now, and return them."""
        now: set[psutil.Process] = set()
        with contextlib.suppress(psutil.Error):  # the tuner is gone once it is killed
            now.update(self.tuner.children(recursive=True))
        for pid in trial_processes(self.home):  # `python -m tasks.trial_process <home>/...`
            with contextlib.suppress(OSError, psutil.Error):
                self.sessions |= {os.getsid(pid), os.getpgid(pid)}
                trial = psutil.Process(pid)
                self.trials.add(trial)
                now.add(trial)
        if self.sessions:
            for proc in psutil.process_iter():
                with contextlib.suppress(OSError):
                    if {os.getsid(proc.pid), os.getpgid(proc.pid)} & self.sessions:
                        now.add(proc)
        for proc in now - self.seen.keys():
            with contextlib.suppress(psutil.Error):
                self.seen[proc] = proc.name()
        return [p for p in now if p in self.seen and running(p)]

    def named(self, names: frozenset[str]) -> list[psutil.Process]:
        """Every recorded process with one of ``names``, ended or not."""
        return [proc for proc, name in self.seen.items() if name in names]


def running(proc: psutil.Process) -> bool:
    """Whether ``proc`` (not a later process with its pid) still runs; a zombie has ended."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="session")
def records_db(shared_stack: SharedStack) -> dict[str, str]:
    """knobflow's shared records on the session's stack: the settings' environment that points
    the records alone at it (``KNOBFLOW_RECORDS_URL``, ``KNOBFLOW_SECRET_FILE``)."""
    import tomllib

    config = tomllib.loads((shared_stack.dir / "knobflow.toml").read_text(encoding="utf-8"))
    return {"KNOBFLOW_RECORDS_URL": config["records_url"],
            "KNOBFLOW_SECRET_FILE": str(config["secret_file"])}
