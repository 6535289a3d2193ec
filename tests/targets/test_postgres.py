"""The postgres target against a real PostgreSQL 15 and pgbench, one private cluster per test.

pytest's temporary directories sit below a directory only root may enter, so when the tests run
as root every cluster here lives under /var/tmp/knobflow-postgres; each test deletes its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import needs

from targets import postgres_cluster as pgc
from targets import postgres_leftovers as pgl
from targets import postgres_pgbench as pgb
from targets.base import ConfigRefused, FailureClass, Measurement, TrialFailed
from targets.common.errors import WorkloadError
from targets.postgres import PostgresTarget
from targets.spec import load_spec
from tasks.runner import TrialRunner
from tuners.trials import TrialOutcome

# found where the target finds them (pgc.find_bindir): the tests run exactly when trials can
BINDIR = pgc.find_bindir()
pytestmark = needs(
    "PostgreSQL", [] if BINDIR else ["postgres, initdb, psql and pgbench in one directory"],
    "$KNOBFLOW_PG_BINDIR, /usr/lib/postgresql/*/bin or PATH: apt-get install postgresql",
)

REF = "targets.postgres:PostgresTarget"
SHORT = {"scale": 1, "duration": 2, "clients": 2, "threads": 1}
DEFAULTS = PostgresTarget.knob_spec().defaults() if BINDIR else {}


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Instance data directories under tmp_path; their clusters are deleted afterwards."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        made.append(path)
        return path

    yield make
    for path in made:
        PostgresTarget.cleanup(path)
        pgc.forget_instance(path)


def runner(tmp_path: Path, dirs: dict[str, Path], workload: dict[str, Any] | None = None,
           timeout_s: float = 60.0) -> TrialRunner:
    return TrialRunner(
        target_cls=PostgresTarget, target_ref=REF,
        workload=PostgresTarget.parse_workload(workload or SHORT), objective="tps",
        timeout_s=timeout_s, job_dir=tmp_path / "job", instance_dirs=dirs,
    )


def run_once(data_dir: Path, config: dict[str, Any], workload: dict[str, Any]) -> Measurement:
    target = PostgresTarget(data_dir, PostgresTarget.parse_workload(workload))
    with target:
        target.start(config)
        return target.run()


def leftovers(data_dir: Path) -> list[str]:
    """Live processes naming the data directory or working in (or naming) its cluster."""
    cluster = pgc.locate(data_dir)
    marks = [str(data_dir)] + ([str(cluster.root)] if cluster else [])
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(m in cmd for m in marks) or (cluster and cwd.startswith(str(cluster.root))):
            found.append(f"{entry.name}: {cmd.strip()}")
    return found


def port_of(outcome: TrialOutcome) -> int:
    for line in outcome.log_tail:
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"no port in the log: {outcome.log_tail}")


# -- description ------------------------------------------------------------------------------
def test_spec_matches_the_knobs_the_target_applies() -> None:
    spec = load_spec(PostgresTarget.spec_path())
    assert spec.target == "postgres"
    assert spec.names == list(pgb.KNOBS)
    assert {k.name: k.unit for k in spec} == pgb.KNOB_UNITS
    assert "fsync" not in spec and "full_page_writes" not in spec
    assert spec["synchronous_commit"].choices == ("on", "off", "local", "remote_write",
                                                  "remote_apply")
    assert spec["max_connections"].low > 3  # above superuser_reserved_connections


def test_native_config_workload_and_features() -> None:
    text = PostgresTarget.render_native({"shared_buffers": 256, "synchronous_commit": "off",
                                         "autovacuum": False, "commit_delay": 10})
    assert "shared_buffers = '256MB'" in text and "synchronous_commit = 'off'" in text
    assert "autovacuum = 'off'" in text and "commit_delay = '10'" in text
    with pytest.raises(WorkloadError, match="builtin"):
        PostgresTarget.parse_workload({"builtin": "tpcc"})
    reads = PostgresTarget.workload_features(PostgresTarget.parse_workload(
        {"builtin": "select-only", "duration": 99}))
    writes = PostgresTarget.workload_features(PostgresTarget.parse_workload({}))
    assert reads["read_ratio"] == 1.0 and writes["read_ratio"] == 0.0
    assert writes["scale"] == 5 and writes["clients"] == 4 and "duration" not in writes


def test_pg_settings_are_converted_to_the_spec_units() -> None:
    assert pgb.convert("16384", "8kB", "integer", "MB") == 128
    assert pgb.convert("12", "8kB", "integer", "kB") == 96
    assert pgb.convert("100", "8kB", "integer", "MB") == 0.78125  # the change shows
    assert pgb.convert("300", "s", "integer", "s") == 300
    assert pgb.convert("4", "", "real", "") == 4.0 and pgb.convert("on", "", "bool", "") is True
    samples = pgb.parse_progress("progress: 1.0 s, 10.5 tps, lat 3.1 ms stddev 0.5, 2 failed\n")
    assert samples == [{"t": 1.0, "phase": "run", "tps": 10.5, "latency_ms": 3.1,
                        "latency_stddev_ms": 0.5, "failed": 2}]


def test_cluster_placement(tmp_path: Path) -> None:
    open_dir = Path(tempfile.mkdtemp(prefix="knobflow-pg-", dir="/tmp"))
    try:
        open_dir.chmod(0o755)
        assert pgc.locate(open_dir) is None
        local = pgc.locate(open_dir, create=True)
        assert local is not None and local.root == open_dir / "pg" and not local.relocated
        assert pgc.locate(open_dir) == local  # recorded: clean-up and the next trial find it
        long_dir = open_dir / ("x" * 90)
        long_dir.mkdir()
        far = pgc.locate(long_dir, create=True)
        assert far is not None and far.relocated  # the socket path would be too long
    finally:
        shutil.rmtree(open_dir)
    if os.geteuid() == 0:  # tmp_path is below /tmp/pytest-of-root (0700): postgres cannot enter
        hidden = pgc.locate(tmp_path, create=True)
        assert hidden is not None and hidden.relocated
        (tmp_path / pgc.LOCATION_FILE).unlink()
    PostgresTarget.cleanup(tmp_path / "never-used")  # nothing to end, no error


@pytest.fixture
def relocated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A relocated base of the test's own: a sweep here never touches other processes' clusters
    in the real /var/tmp/knobflow-postgres."""
    base = tmp_path / "relocated"
    base.mkdir(mode=0o700)
    monkeypatch.setattr(pgc, "RELOCATED_BASE", base)
    return base


def make_root(base: Path, name: str, origin: bytes | None, age_s: float = 0.0) -> Path:
    """A relocated cluster root with ``origin`` as its origin file's bytes (None: no file),
    last changed ``age_s`` ago."""
    root = base / name
    root.mkdir(mode=0o700)
    if origin is not None:
        (root / "origin").write_bytes(origin)
    if age_s:
        then = time.time() - age_s
        os.utime(root, (then, then))
    return root


def test_clusters_of_deleted_instances_are_swept(relocated: Path) -> None:
    orphan = make_root(relocated, "orphan", b"/nonexistent/knobflow/instance\n")
    pgc.sweep_orphans()
    assert not orphan.exists()


def test_a_sweep_leaves_clusters_being_created_alone(tmp_path: Path, relocated: Path) -> None:
    """Another process sweeps while this one writes a new cluster's origin: an origin read empty,
    cut short (no final newline, even cut inside a character) or not an absolute path is a
    cluster being created, left alone until it is an hour old; a cluster whose instance's record
    is gone, or names another cluster, is still removed."""
    data = tmp_path / "instance"
    data.mkdir()
    whole = f"{data}\n".encode()
    being_created = [
        make_root(relocated, "no-origin", None),
        make_root(relocated, "empty", b""),
        make_root(relocated, "cut-short", whole[: len(whole) // 2]),
        make_root(relocated, "relative", b"instance\n"),
        make_root(relocated, "cut-in-a-character", "/tmp/données\n".encode()[:10]),
    ]
    live = make_root(relocated, "live", whole)
    (data / pgc.LOCATION_FILE).write_text(f"{live}\n")
    stale = make_root(relocated, "stale", whole)  # the record names ``live``, not this one
    old_empty = make_root(relocated, "old-empty", b"", age_s=pgc._ORPHAN_AGE_S + 60)
    gone = make_root(relocated, "gone", f"{tmp_path / 'deleted'}\n".encode())
    pgc.sweep_orphans()
    assert [root.name for root in being_created if not root.exists()] == []
    assert live.exists() and (live / "origin").read_bytes() == whole
    assert not stale.exists() and not old_empty.exists() and not gone.exists()


def test_a_record_that_is_not_a_path_counts_as_none(tmp_path: Path, relocated: Path) -> None:
    """An empty location record (a write cut short) names no cluster: ``locate`` never takes
    the working directory for one; with ``create`` it records a cluster anew, whole."""
    (tmp_path / pgc.LOCATION_FILE).write_text("")
    assert pgc.locate(tmp_path) is None
    made = pgc.locate(tmp_path, create=True)
    assert made is not None and made.root.is_absolute()
    assert (tmp_path / pgc.LOCATION_FILE).read_text() == f"{made.root}\n"
    assert pgc.locate(tmp_path) == made
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- trials -----------------------------------------------------------------------------------
def test_default_config_runs_and_reads_every_knob_back(tmp_path: Path, instance) -> None:
    data = instance("i1")
    out = runner(tmp_path, {"i1": data}).run("0", DEFAULTS, "i1", 0)
    assert out.ok, (out.failure_class, out.message, out.log_tail)
    assert out.value is not None and out.value > 0 and out.metrics["latency_avg_ms"] > 0
    assert out.effective_config == DEFAULTS and out.changed_knobs == []
    assert len(out.samples) >= 1 and all(s["tps"] > 0 for s in out.samples)
    assert leftovers(data) == []
    assert not (pgc.locate(data).pgdata / "postmaster.pid").exists()


@pytest.mark.parametrize(("config", "text"), [
    ({"shared_buffers": 0}, 'FATAL:  0 8kB is outside the valid range for parameter "shared_b'),
    ({"wal_compression": "bogus"}, 'FATAL:  invalid value for parameter "wal_compression"'),
    ({"max_connections": 3}, "superuser_reserved_connections (3) must be less than max_conn"),
])
def test_refused_configs_carry_the_servers_line(tmp_path: Path, instance, config: dict[str, Any],
                                                text: str) -> None:
    data = instance("i1")
    out = runner(tmp_path, {"i1": data}).run("0", config, "i1", 0)
    assert out.failure_class == FailureClass.REFUSED and text in out.message, out.message
    assert leftovers(data) == []


def test_failures_are_classified(instance) -> None:
    data = instance("i1")
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() != "1":
        with pytest.raises(TrialFailed, match="could not map anonymous shared memory") as exc:
            run_once(data, {"shared_buffers": 400_000}, SHORT)
        assert exc.value.failure_class == FailureClass.OUT_OF_MEMORY
    with pytest.raises(ConfigRefused, match="too many clients"):
        run_once(data, {"max_connections": 16}, {**SHORT, "clients": 20, "duration": 1})
    with pytest.raises(ConfigRefused, match="no knob 'fsync'"):
        run_once(data, {"fsync": False}, SHORT)
    assert leftovers(data) == []


def test_synchronous_commit_off_stops_commits_waiting_for_the_wal_flush(instance) -> None:
    # What the knob does, read from pg_stat_wal: with it on, every commit waits for its WAL
    # flush (2 clients: at most 2 commits share one, so >= 0.5 syncs per commit); with it off,
    # a run's syncs are a few dozen (pgbench's vacuum, the WAL writer) whatever its commits.
    # Throughput is not asserted: idle, off gave 1.48-2.00x, but CI's other worker once left
    # it at 0.93x and once at 0.52x, and a run's commits, not its syncs, are what load moves.
    data = instance("i1")
    work = {"scale": 1, "duration": 4, "clients": 2, "threads": 2}
    on = run_once(data, {}, work)
    off = run_once(data, {"synchronous_commit": "off"}, work)
    assert on.effective_config["synchronous_commit"] == "on"
    assert off.effective_config["synchronous_commit"] == "off"
    assert off.counters["pgbench_init_s"] == 0.0  # the tables of the first run were reused
    seen = {name: (m.counters["pg_wal_sync"], m.counters["pg_xact_commit"], m.metrics["tps"])
            for name, m in (("on", on), ("off", off))}
    per_commit = {name: syncs / commits for name, (syncs, commits, _) in seen.items()}
    assert per_commit["on"] >= 0.4 and per_commit["off"] <= 0.25, seen


def test_instance_is_usable_after_a_killed_trial(tmp_path: Path, instance) -> None:
    data = instance("i1")
    # killed in the middle of a 60 s benchmark: 10 s leave initdb and the start room on a loaded
    # machine (at 4 s it was once killed before the server was up, and nothing was interrupted)
    killed = runner(tmp_path, {"i1": data}, {**SHORT, "duration": 60}, timeout_s=10.0)
    out = killed.run("0", {}, "i1", 0)
    assert out.failure_class == FailureClass.TIMEOUT
    assert "ready to accept connections" in (data / "logs" / "server.log").read_text()
    assert leftovers(data) == []
    assert not (pgc.locate(data).pgdata / "postmaster.pid").exists()
    out = runner(tmp_path, {"i1": data}).run("1", {"wal_buffers": 100}, "i1", 1)
    assert out.ok, (out.failure_class, out.message, out.log_tail)
    assert out.effective_config["wal_buffers"] == 96 and out.changed_knobs == ["wal_buffers"]
    assert "database system was interrupted" in (data / "logs" / "server.log").read_text()
    assert leftovers(data) == []


def test_a_pruned_trial_is_stopped_mid_run_and_the_instance_stays_usable(
    tmp_path: Path, instance
) -> None:
    data = instance("i1")
    heard: list[tuple[int, float]] = []

    def prune_after_2(step: int, metrics: dict[str, float]) -> bool:
        heard.append((step, metrics["tps"]))
        return step >= 1  # pgbench's second progress second

    started = time.monotonic()
    out = runner(tmp_path, {"i1": data}, {**SHORT, "duration": 30}).execute(
        "0", {}, "i1", 0, on_progress=prune_after_2)
    assert out.pruned and out.pruned_step == 1, (out.status, out.message, out.log_tail)
    assert [step for step, _ in heard] == [0, 1] and all(tps > 0 for _, tps in heard)
    assert time.monotonic() - started < 25  # long before its 30 s run would end
    # the pruner's kill is the timeout's, tidied the same way (after which the instance runs
    # again: test_instance_is_usable_after_a_killed_trial): nothing outlives it
    assert leftovers(data) == []
    assert not (pgc.locate(data).pgdata / "postmaster.pid").exists()


def test_a_killed_servers_shared_memory_is_removed(instance) -> None:
    """SIGKILL leaves a server's System V segment and its /dev/shm DSM segments behind (the
    server would have removed them); the cleanup after a killed trial removes every one."""
    data = instance("i1")
    target = PostgresTarget(data, PostgresTarget.parse_workload(SHORT))
    target.start({})
    procs = pgl.cluster_processes(pgc.locate(data))
    mapped: set[str] = set()
    for proc in procs:
        with contextlib.suppress(OSError):  # a short-lived backend may be gone already
            mapped |= {line.split()[-1] for line in
                       Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
                       if "/dev/shm/PostgreSQL." in line}
    assert mapped, "the server maps no DSM segment: is dynamic_shared_memory_type posix?"
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    assert all(Path(m).exists() for m in mapped)  # nobody removed them
    PostgresTarget.cleanup(data)
    assert [m for m in mapped if Path(m).exists()] == []
    assert leftovers(data) == []


def test_two_instances_side_by_side(tmp_path: Path, instance) -> None:
    dirs = {"i1": instance("i1"), "i2": instance("i2")}
    both = runner(tmp_path, dirs)
    outcomes: dict[str, TrialOutcome] = {}

    def go(name: str) -> None:
        outcomes[name] = both.run(name, {}, name, 0)

    threads = [threading.Thread(target=go, args=(name,)) for name in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in outcomes.values()), {n: o.message for n, o in outcomes.items()}
    assert port_of(outcomes["i1"]) != port_of(outcomes["i2"])
    assert pgc.locate(dirs["i1"]).root != pgc.locate(dirs["i2"]).root
    assert leftovers(dirs["i1"]) == [] and leftovers(dirs["i2"]) == []


def test_a_password_file_others_could_read_is_replaced(tmp_path: Path, instance) -> None:
    """A pgpass file someone opened (0644) holds no secret any more: the next trial gives the
    cluster a new password, in a new 0600 file, and keeps its data."""
    data = instance("i1")
    run = runner(tmp_path, {"i1": data})
    assert run.run("0", {}, "i1", 0).ok
    cluster = pgc.locate(data)
    old = pgc.read_password(cluster)
    assert old is not None and pgc.locked(cluster)
    cluster.password_file.chmod(0o644)
    assert pgc.read_password(cluster) is None and not pgc.locked(cluster)
    out = run.run("1", {}, "i1", 1)
    assert out.ok, (out.failure_class, out.message, out.log_tail)
    assert out.counters["pgbench_init_s"] == 0.0  # the tables were kept
    assert (cluster.password_file.stat().st_mode & 0o777) == 0o600
    assert pgc.read_password(cluster) not in (None, old) and pgc.locked(cluster)
    assert leftovers(data) == []
