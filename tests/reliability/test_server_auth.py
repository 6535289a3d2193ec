"""The servers a trial starts admit only knobflow (fault-injection report, item 3).

Each test performs the attack while a trial's server runs, from this test as an outsider:

* PostgreSQL: ``COPY ... TO PROGRAM`` (a shell command as the ``postgres`` OS user) over
  127.0.0.1 without the password, with a wrong one, over the socket without it, and as another
  local OS user (``nobody``) over the socket and over TCP: every connection is refused and the
  command never runs. The password is random per instance, in a 0600 pgpass file; the socket
  directory is 0700; the password is in no process's command line or environment, in no file of
  the instance or of the job's home but its pgpass file (logs, MLflow store, Optuna journal), in
  no Measurement and in no MLflow parameter or tag. A cluster made before passwords (``trust``)
  is locked by its next trial and keeps its data.
* Redis: it listens on no TCP port at all, only on a Unix socket in a 0700 directory; another
  local OS user cannot connect to it, so ``CONFIG SET dir`` (the classic way to write files as
  the server's user) is refused; no client is given a password on its command line.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import missing_executables, needs

from targets import postgres_cluster as pgc
from targets.base import Measurement
from targets.postgres import PostgresTarget
from targets.process import run_with_input
from targets.redis import SOCKET, RedisTarget

BINDIR = pgc.find_bindir()
needs_postgres = needs(
    "PostgreSQL", [] if BINDIR else ["postgres, initdb, psql and pgbench in one directory"],
    "$KNOBFLOW_PG_BINDIR, /usr/lib/postgresql/*/bin or PATH: apt-get install postgresql",
)
needs_redis = needs("Redis", missing_executables(RedisTarget.contract_examples()["redis"].requires),
                    "on PATH; Debian: apt-get install redis-server redis-tools")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as another OS user")
PG_SHORT = {"scale": 1, "duration": 2, "clients": 2, "threads": 1}
REDIS_SHORT = {"requests": 200_000}
#: The environment of an outsider's client: no password from anywhere (no pgpass file either).
OUTSIDER_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                "HOME": "/nonexistent", "PGPASSFILE": "/nonexistent/pgpass"}
#: The pg_hba.conf of a cluster knobflow made before passwords (initdb --auth=trust).
OLD_HBA = ("local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
           "local replication all trust\nhost replication all 127.0.0.1/32 trust\n")


# -- helpers -------------------------------------------------------------------------------------
def outsider(cmd: list[str], *, user: str | None = None, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as an outsider would: this test's user without the password, or ``user``."""
    prefix = ["runuser", "-u", user, "--"] if user else []
    return subprocess.run([*prefix, *cmd], env={**OUTSIDER_ENV, **(env or {})}, cwd="/",
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)


def process_texts() -> Iterator[tuple[int, bytes]]:
    """(pid, command line + environment) of every process this test may read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            text = b""
            for part in ("cmdline", "environ"):
                try:
                    text += (entry / part).read_bytes() + b"\0"
                except OSError:
                    continue
            yield int(entry.name), text


def while_scanning(work: Callable[[], Any], secret: bytes, programs: frozenset[str] | None = None
                   ) -> tuple[Any, list[str], set[str]]:
    """Run ``work`` in a thread while scanning the command line and environment of every process
    (of ``programs``, if given) for ``secret``: the result of ``work``, the processes holding the
    secret, the programs seen running."""
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # re-raised below, in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    holders: list[str] = []
    seen: set[str] = set()
    while thread.is_alive():
        for pid, text in process_texts():
            argv0 = text.split(b"\0", 1)[0].split(b" ", 1)[0]  # a title may hold spaces
            program = Path(argv0.decode(errors="replace")).name
            seen.add(program)
            if secret in text and (programs is None or program in programs):
                holders.append(f"{pid}: {text[:200]!r}")
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value"), holders, seen


def files_holding(secret: bytes, *roots: Path, but: Path) -> list[str]:
    """Every file below ``roots`` (logs, the cluster's own files, stores) holding ``secret``,
    except ``but``."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path != but:
                try:
                    if secret in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def server_uid() -> int:
    user = pgc.server_user()
    return pwd.getpwnam(user).pw_uid if user else os.geteuid()


# -- PostgreSQL --------------------------------------------------------------------------------
@pytest.fixture
def pg_instance(tmp_path: Path) -> Iterator[Path]:
    """An instance data directory; its cluster is deleted afterwards."""
    data = tmp_path / "i1"
    data.mkdir()
    yield data
    PostgresTarget.cleanup(data)
    pgc.forget_instance(data)


def psql(port: int, host: str, sql: str = "SELECT 1", role: str = pgc.SUPERUSER) -> list[str]:
    assert BINDIR is not None
    return [str(BINDIR / "psql"), "-w", "-X", "-At", "-h", host, "-p", str(port), "-U", role,
            "-d", "postgres", "-c", sql]


def assert_refused(done: subprocess.CompletedProcess[str], why: tuple[str, ...]) -> None:
    assert done.returncode != 0 and done.stdout.strip() == "", (done.stdout, done.stderr)
    assert any(reason in done.stderr for reason in why), done.stderr


def attack_postgres(target: PostgresTarget, cluster: pgc.Cluster, marker: Path) -> None:
    """Every way in without the password, while the server runs: each one is refused."""
    port, sock = target._port, str(cluster.sockdir)
    copy = f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"
    no_password = ("fe_sendauth: no password supplied",)
    assert_refused(outsider(psql(port, "127.0.0.1", copy)), no_password)
    assert_refused(outsider(psql(port, "127.0.0.1", copy), env={"PGPASSWORD": "knobflow"}),
                   ('password authentication failed for user "knobflow"',))
    assert_refused(outsider(psql(port, "127.0.0.1", copy, role="postgres")),
                   (*no_password, 'role "postgres" does not exist'))
    assert_refused(outsider(psql(port, sock, copy)), no_password)  # the socket wants it too
    if os.geteuid() == 0:  # another local user: the socket directory is closed to it
        assert_refused(outsider(psql(port, sock, copy), user="nobody"), ("Permission denied",))
        assert_refused(outsider(psql(port, "127.0.0.1", copy), user="nobody"), no_password)
    assert not marker.exists(), "the outsider's COPY ... TO PROGRAM ran"
    # knobflow's own way in works: the pgpass file, named by the environment
    mine = outsider(psql(port, sock, "SELECT current_user"), env=pgc.client_env(cluster))
    assert mine.returncode == 0 and mine.stdout.strip() == pgc.SUPERUSER, mine.stderr


@needs_postgres
def test_postgres_admits_only_knobflow(pg_instance: Path, tmp_path: Path) -> None:
    target = PostgresTarget(pg_instance, PostgresTarget.parse_workload(PG_SHORT))
    with target:
        target.start({})
        cluster = pgc.locate(pg_instance)
        assert cluster is not None
        password = pgc.read_password(cluster)
        assert password is not None and len(password) >= 40
        assert mode(cluster.password_file) == 0o600
        assert os.stat(cluster.password_file).st_uid == os.geteuid()
        assert mode(cluster.sockdir) == 0o700 and os.stat(cluster.sockdir).st_uid == server_uid()
        assert cluster.hba_file.read_text() == pgc.HBA and "trust" not in pgc.HBA.lower()
        attack_postgres(target, cluster, tmp_path / "pwned")
        measurement, holders, seen = while_scanning(target.run, password.encode())
    assert isinstance(measurement, Measurement)
    assert {"postgres", "pgbench"} <= seen, "the scan missed the benchmark"
    assert holders == [], "the password is in a process's command line or environment"
    assert password not in json.dumps(measurement.to_dict(), default=str)
    assert files_holding(password.encode(), pg_instance, cluster.root,
                         but=cluster.password_file) == []


@needs_postgres
def test_a_cluster_made_before_passwords_is_locked_by_its_next_trial(pg_instance: Path,
                                                                     tmp_path: Path) -> None:
    first = PostgresTarget(pg_instance, PostgresTarget.parse_workload(PG_SHORT))
    with first:
        first.start({})  # a cluster with pgbench's tables
    cluster = pgc.locate(pg_instance)
    assert cluster is not None and BINDIR is not None
    # make it what knobflow made before: trust for every connection, no password, no file
    unset = run_with_input(
        [str(BINDIR / "postgres"), "--single", "-D", str(cluster.pgdata), "postgres"],
        f"ALTER ROLE {pgc.SUPERUSER} PASSWORD NULL;\n", timeout=120, env=pgc.clean_env(),
        cwd=cluster.root, user=pgc.server_user())
    assert unset.returncode == 0 and "ERROR" not in unset.stderr, unset.stderr
    cluster.hba_file.write_text(OLD_HBA)
    cluster.password_file.unlink()
    old = PostgresTarget(pg_instance, PostgresTarget.parse_workload(PG_SHORT))
    old._cluster, old._bindir = cluster, BINDIR
    old._start_server()  # as the old version did: the attack succeeds
    try:
        opened = outsider(psql(old._port, "127.0.0.1", "SELECT current_user"))
        assert opened.returncode == 0 and opened.stdout.strip() == pgc.SUPERUSER, opened.stderr
    finally:
        old.stop()
    target = PostgresTarget(pg_instance, PostgresTarget.parse_workload(PG_SHORT))
    with target:
        target.start({})  # the next trial locks it
        assert pgc.locked(cluster) and mode(cluster.password_file) == 0o600
        attack_postgres(target, cluster, tmp_path / "pwned")
        measurement = target.run()
    assert measurement.counters["pgbench_init_s"] == 0.0  # its data were kept
    assert measurement.metrics["tps"] > 0


@needs_postgres
@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_no_mlflow_parameter_or_file_of_a_job_holds_the_password(prefect_api: str,
                                                                 home: Path) -> None:
    from mlflow.tracking import MlflowClient

    from flows.tune import tune

    try:
        summary = tune("postgres", budget=1, verify_repeats=2, seed=1, workload=PG_SHORT,
                       home=str(home))
        instances = sorted((home / "instances" / "postgres").iterdir())
        clusters = [c for c in (pgc.locate(p) for p in instances if p.is_dir()) if c]
        assert len(clusters) == 1
        password = pgc.read_password(clusters[0])
        assert password is not None
        uri = f"sqlite:///{home / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        parent = client.get_run(summary.mlflow_run_id)
        runs = client.search_runs([parent.info.experiment_id], max_results=1000)
        assert len(runs) >= 2  # the job and its trials
        for run in runs:
            for key, value in {**run.data.params, **run.data.tags}.items():
                assert password not in f"{key}={value}", (run.info.run_id, key)
        assert files_holding(password.encode(), home, clusters[0].root,
                             but=clusters[0].password_file) == []
    finally:
        for path in (home / "instances" / "postgres").glob("*"):
            if path.is_dir():
                PostgresTarget.cleanup(path)
                pgc.forget_instance(path)


# -- Redis ---------------------------------------------------------------------------------------
@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every local user may enter (tmp_path's parents are root's alone, which would
    keep another user out whatever the target did)."""
    path = Path(tempfile.mkdtemp(prefix="knobflow-auth-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_redis
def test_redis_admits_only_knobflow(open_dir: Path) -> None:
    data = open_dir / "i1"
    target = RedisTarget(data, RedisTarget.parse_workload(REDIS_SHORT))
    with target:
        target.start({})
        assert target._server is not None and target._server.proc is not None
        server = psutil.Process(target._server.proc.pid)
        assert server.net_connections(kind="inet") == []  # nothing to reach over 127.0.0.1
        sock = data / SOCKET
        assert mode(sock.parent) == 0o700 and os.stat(sock.parent).st_uid == os.geteuid()
        assert stat.S_ISSOCK(os.lstat(sock).st_mode) and mode(sock) == 0o700
        assert mode(data / "redis.conf") == 0o600
        if os.geteuid() == 0:  # another local user cannot reach the socket
            attack = ["redis-cli", "-s", str(sock), "CONFIG", "SET", "dir", "/tmp"]
            done = outsider(attack, user="nobody")
            assert "Permission denied" in done.stdout + done.stderr, (done.stdout, done.stderr)
            assert "OK" not in done.stdout
        assert target._cli("CONFIG", "GET", "dir").split("\n")[1] == str(data)
        assert target._cli("PING").strip() == "PONG"  # knobflow's own way in works
        redis = frozenset({"redis-server", "redis-benchmark", "redis-cli"})
        measurement, holders, seen = while_scanning(target.run, b"\0-a\0", redis)
    assert {"redis-server", "redis-benchmark"} <= seen, "the scan missed the benchmark"
    assert holders == [], "a Redis client was given a password on its command line"
    assert measurement.metrics["rps"] > 0


@needs_redis
@as_root
def test_a_socket_directory_left_open_is_closed_again(open_dir: Path) -> None:
    """A socket directory someone opened (0777) is made 0700 again by the next start."""
    data = open_dir / "i1"
    (data / SOCKET).parent.mkdir(parents=True)
    (data / SOCKET).parent.chmod(0o777)
    data.chmod(0o755)
    target = RedisTarget(data, RedisTarget.parse_workload(REDIS_SHORT))
    with target:
        target.start({})
        assert mode((data / SOCKET).parent) == 0o700
        done = outsider(["redis-cli", "-s", str(data / SOCKET), "PING"], user="nobody")
        assert "PONG" not in done.stdout and "Permission denied" in done.stdout + done.stderr
