"""The live PostgreSQL driver against a real PostgreSQL 15 launched with pgbench's load.

One instance (``targets.live_daemon.launch``: the trial target's server with no knob on its
command line, pgbench tpcb-like with 4 clients) serves the module's tests in file order; the last
one stops it and checks that nothing is left. As root its cluster lives under
/var/tmp/knobflow-postgres (pytest's directories are closed to the ``postgres`` user).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import needs

from rules.ruleset import RuleSet
from targets import postgres_cluster as pgc
from targets import postgres_leftovers as pgl
from targets import postgres_pgbench as pgb
from targets.live import ActuationRefused, Connection, LiveError
from targets.live_daemon import launch, set_workload, stop_launched
from targets.live_postgres import PostgresLive
from targets.postgres import PostgresTarget

BINDIR = pgc.find_bindir()
pytestmark = needs(
    "PostgreSQL", [] if BINDIR else ["postgres, initdb, psql and pgbench in one directory"],
    "$KNOBFLOW_PG_BINDIR, /usr/lib/postgresql/*/bin or PATH: apt-get install postgresql",
)
WORKLOAD = {"scale": 1, "clients": 4, "threads": 2, "builtin": "tpcb-like"}
DEFAULTS = PostgresTarget.knob_spec().defaults()
#: The regressing config: every commit waits 100 ms for company (group commit) that a
#: single sibling always provides. No shipped rule blocks it.
REGRESSING = {"commit_delay": 100000, "commit_siblings": 1}


class Instance:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.connection = launch("postgres", root, WORKLOAD)
        self.live = PostgresLive(self.connection)
        self.cluster = pgc.locate(root / "server")
        assert self.cluster is not None

    def password(self) -> str:
        secret = pgc.read_password(self.cluster)
        assert secret
        return secret

    def sql(self, query: str) -> list[list[str]]:
        return self.live._psql(query + ";")


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    root = tmp_path_factory.mktemp("live") / "pg"
    instance = Instance(root)
    try:
        yield instance
    finally:
        stop_launched(root)


def mean_tps(windows: list[Any]) -> float:
    return statistics.mean(w.metrics["tps"] for w in windows)


def test_a_launched_instance_reads_back_the_spec_defaults_and_hides_its_password(
        pg: Instance) -> None:
    assert pg.live.ping().startswith("PostgreSQL 15")
    assert pg.live.read_config() == DEFAULTS
    assert pg.live.pending_restart() == []
    url = pg.connection.url
    assert url.startswith("postgresql://knobflow@127.0.0.1:") and url.endswith("/postgres")
    assert pg.connection.secret_file == pg.cluster.password_file
    assert os.stat(pg.cluster.password_file).st_mode & 0o777 == 0o600
    secret, server, load = pg.password(), [], []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or ())
        assert secret not in line
        # this instance's postmaster (a session's shared stack runs a cluster of its own)
        if line.startswith(f"{BINDIR}/postgres -D {pg.cluster.pgdata} "):
            server.append(line)
        if line.startswith(f"{BINDIR}/pgbench") and "-T 86400" in line:
            load.append(line)
    assert len(server) == 1 and load  # the postmaster, and the background pgbench
    for log in ("daemon.log", "load.log", "connection.json"):
        assert secret not in (pg.root / log).read_text()
    # no knob on the server's command line: it would override ALTER SYSTEM
    assert not [k for k in pgb.KNOBS if f" {k}=" in server[0]]


def test_a_runtime_knob_is_applied_read_back_and_kept_in_postgresql_auto_conf(
        pg: Instance) -> None:
    changes = {"random_page_cost": 1.1, "work_mem": 8192, "autovacuum": False}
    pg.live.apply(changes)
    try:
        assert pg.live.read_config() == {**DEFAULTS, **changes}
        # the server's own re-read of its files: the values stand in postgresql.auto.conf
        rows = pg.sql("SELECT name, setting, applied FROM pg_file_settings "
                      "WHERE sourcefile LIKE '%postgresql.auto.conf' ORDER BY name")
        assert [r for r in rows if r[0] in changes] == [
            ["autovacuum", "off", "t"], ["random_page_cost", "1.1", "t"],
            ["work_mem", "8192kB", "t"]]
        assert pg.live.pending_restart() == []
    finally:
        pg.live.apply({k: DEFAULTS[k] for k in changes})
    assert pg.live.read_config() == DEFAULTS


def test_refused_knobs_change_nothing_and_say_why(pg: Instance) -> None:
    changes = {"shared_buffers": 256, "random_page_cost": 2.0, "commit_delay": 10**6,
               "fsync": False}
    assert pg.live.runtime_refusals({"random_page_cost": 2.0}) == {}
    with pytest.raises(ActuationRefused) as caught:
        pg.live.apply(changes)
    assert str(caught.value) == (
        f"{pg.connection.url}: refused, nothing was changed: "
        "commit_delay: 1000000 is outside range [0, 100000]; "
        "fsync: not a knob of the postgres target; "
        "shared_buffers: needs a server restart (pg_settings context postmaster) and the "
        "instance has no restart command")
    assert pg.live.read_config() == DEFAULTS


def test_bad_secrets_and_an_unreachable_server_say_what_and_the_fix(
        pg: Instance, tmp_path: Path) -> None:
    url = pg.connection.url
    plain = tmp_path / "password"
    plain.write_text(pg.password() + "\n")
    plain.chmod(0o600)
    assert PostgresLive(Connection("postgres", url, plain)).ping().startswith("PostgreSQL 15")
    plain.chmod(0o644)
    with pytest.raises(LiveError, match=f"^the secret file {plain} may be read by others: "
                                        f"chmod 600 {plain}$"):
        PostgresLive(Connection("postgres", url, plain)).ping()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    with pytest.raises(LiveError) as caught:
        PostgresLive(Connection("postgres", url, wrong)).ping()
    assert str(caught.value) == (f"{url}: PostgreSQL refused the password of knobflow (secret "
                                 f"file {wrong}): put the role's password there")
    with pytest.raises(LiveError, match="asks knobflow for a password and none was given"):
        PostgresLive(Connection("postgres", url)).ping()
    closed = "postgresql://knobflow@127.0.0.1:1/postgres"
    with pytest.raises(LiveError, match=r"^postgresql://knobflow@127.0.0.1:1/postgres: cannot "
                                        r"reach PostgreSQL \(.*\): is the server running"):
        PostgresLive(Connection("postgres", closed, plain.with_name("wrong"))).ping()
    with pytest.raises(LiveError, match="the PostgreSQL URL holds a password"):
        PostgresLive(Connection("postgres", "postgresql://knobflow:secret@127.0.0.1/postgres"))


def test_a_role_without_alter_system_is_told_the_grant(pg: Instance, tmp_path: Path) -> None:
    role_password = "tuner-secret-1"
    pg.sql(f"DROP ROLE IF EXISTS tuner; CREATE ROLE tuner LOGIN PASSWORD '{role_password}'")
    secret = tmp_path / "tuner.pgpass"
    secret.write_text(f"127.0.0.1:*:*:tuner:{role_password}\n")
    secret.chmod(0o600)
    url = pg.connection.url.replace("knobflow@", "tuner@")
    tuner = PostgresLive(Connection("postgres", url, secret))
    assert tuner.read_config() == DEFAULTS  # anyone may read pg_settings
    with pytest.raises(ActuationRefused) as caught:
        tuner.apply({"random_page_cost": 1.5})
    assert caught.value.reasons == {"random_page_cost": (
        "the role tuner may not ALTER SYSTEM SET random_page_cost or run pg_reload_conf(): GRANT "
        "ALTER SYSTEM ON PARAMETER random_page_cost TO tuner (PostgreSQL 15+); GRANT EXECUTE ON "
        "FUNCTION pg_reload_conf() TO tuner; or connect as a superuser")}
    pg.sql("GRANT ALTER SYSTEM ON PARAMETER random_page_cost TO tuner")
    assert tuner.runtime_refusals({"random_page_cost": 1.5}) == {"random_page_cost": (
        "the role tuner may not run pg_reload_conf(): GRANT EXECUTE ON FUNCTION pg_reload_conf() "
        "TO tuner; or connect as a superuser")}
    pg.sql("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO tuner")
    try:
        tuner.apply({"random_page_cost": 1.5})
        assert pg.live.read_config() == {**DEFAULTS, "random_page_cost": 1.5}
    finally:
        pg.live.apply({"random_page_cost": DEFAULTS["random_page_cost"]})
        pg.sql("REVOKE ALTER SYSTEM ON PARAMETER random_page_cost FROM tuner")
        pg.sql("REVOKE EXECUTE ON FUNCTION pg_reload_conf() FROM tuner")
        pg.sql("DROP ROLE tuner")


def test_windows_report_throughput_and_the_fingerprint_follows_the_load(pg: Instance) -> None:
    # windows of 3 s: each backend publishes its transaction counts about once a second, while
    # transaction ids (write transactions) count at once; read_ratio compares the two
    for window in pg.live.observe(1, 3.0):
        assert window.metrics["tps"] > 0
        assert window.fingerprint["clients"] == 4 and window.fingerprint["scale"] == 1
        assert window.fingerprint["read_ratio"] < 0.2
        assert 3.0 < window.fingerprint["writes_per_txn"] < 5.0  # 3 updates + 1 insert
        assert window.counters["server_cpu_s_per_s"] > 0
        assert window.counters["statements_per_s"] > 0  # pg_stat_statements is loaded
        assert all(v >= 0 for v in [*window.fingerprint.values(), *window.counters.values()])
    # pgbench's tables are made anew at scale 2 before the new load starts
    set_workload(pg.root, {**WORKLOAD, "builtin": "select-only", "clients": 2, "threads": 1,
                           "scale": 2})
    try:
        deadline, seen = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            seen = pg.live.observe(1, 3.0)[0]
            if (seen.fingerprint["read_ratio"] > 0.9 and seen.fingerprint["clients"] == 2
                    and seen.fingerprint.get("scale") == 2):
                break
            time.sleep(0.5)
        assert seen is not None and seen.fingerprint["read_ratio"] > 0.9, seen
        assert seen.fingerprint["clients"] == 2 and seen.fingerprint["writes_per_txn"] < 0.1
        assert seen.fingerprint["scale"] == 2
        assert seen.metrics["tps"] > 0
    finally:
        set_workload(pg.root, WORKLOAD)


def test_a_snapshot_while_pgbench_remakes_its_tables_leaves_the_scale_out(
        pg: Instance) -> None:
    # pgbench -i drops and re-makes its tables: the count can fail after the check that the
    # table is there. A view that fails when read makes that moment last, in a database of its own
    pg.sql("CREATE DATABASE remaking")
    try:
        remaking = PostgresLive(dataclasses.replace(
            pg.connection, url=pg.connection.url.rsplit("/", 1)[0] + "/remaking"))
        remaking._psql("CREATE VIEW pgbench_branches AS SELECT g AS bid "
                       "FROM generate_series(1, 1) g WHERE g / (g - 1) = 0;")
        values = remaking.snapshot().values
        assert "scale" not in values and values["xacts"] > 0 and "db_bytes" in values
    finally:
        pg.sql("DROP DATABASE remaking WITH (FORCE)")


def test_the_regressing_config_passes_every_shipped_rule_and_cuts_throughput(
        pg: Instance) -> None:
    rules = RuleSet.for_target(PostgresTarget, workload=WORKLOAD, all_policies=True)
    assert rules.check(REGRESSING).failures == []
    time.sleep(2)  # the tpcb-like load of the previous test's end is back
    before = pg.live.observe(3, 1.0)
    pg.live.apply(REGRESSING)
    try:
        after = pg.live.observe(3, 1.0)
    finally:
        pg.live.apply({k: DEFAULTS[k] for k in REGRESSING})
    assert mean_tps(after) < 0.5 * mean_tps(before), (before, after)
    assert pg.live.read_config() == DEFAULTS


def test_a_restart_knob_with_a_restart_command_is_applied_by_a_restart(pg: Instance) -> None:
    pgdata, log = pg.cluster.pgdata, pg.cluster.root / "restart.log"
    command = f"{BINDIR}/pg_ctl restart -D {pgdata} -m fast -w -s -l {log}"
    if os.geteuid() == 0:
        command = f"{shutil.which('runuser')} -u postgres -- {command}"
    live = PostgresLive(Connection("postgres", pg.connection.url,
                                   pg.connection.secret_file, restart_command=command))
    started = pg.sql("SELECT pg_postmaster_start_time()")
    live.apply({"shared_buffers": 256})
    # wal_buffers is PostgreSQL's -1 (a 32nd of shared_buffers), which the spec's 4096 kB stands for
    assert live.read_config() == {**DEFAULTS, "shared_buffers": 256, "wal_buffers": 8192}
    assert live.pending_restart() == []
    assert pg.sql("SELECT pg_postmaster_start_time()") != started


def test_stop_leaves_no_process_socket_or_directory(pg: Instance) -> None:
    marks = [str(pg.root), str(pg.cluster.root)]
    stop_launched(pg.root)
    left = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        line = " ".join(proc.info["cmdline"] or ()) + " " + str(proc.info["cwd"])
        if any(mark in line for mark in marks):
            left.append(line)
    assert left == []
    assert not pg.root.exists() and not pg.cluster.root.exists()
    done = subprocess.run(["ss", "-xl"], capture_output=True, text=True, check=False)
    assert str(pg.cluster.sockdir) not in done.stdout


def test_a_killed_daemon_leaves_nothing_after_stop(tmp_path: Path) -> None:
    root = tmp_path / "killed"
    launch("postgres", root, {**WORKLOAD, "clients": 2, "threads": 1})
    cluster = pgc.locate(root / "server")
    assert cluster is not None and pgl.cluster_processes(cluster)
    daemon = int((root / "daemon.pid").read_text())
    os.kill(daemon, 9)
    psutil.wait_procs([psutil.Process(daemon)], timeout=5)
    stop_launched(root)
    left = [" ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"])
            if str(root) in " ".join(p.info["cmdline"] or ())
            or str(cluster.root) in " ".join(p.info["cmdline"] or ())]
    assert left == [] and pgl.cluster_processes(cluster) == []
    assert not root.exists() and not cluster.root.exists()
