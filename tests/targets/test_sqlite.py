"""The sqlite target against a real SQLite (stdlib sqlite3) in a temporary directory."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from targets.base import ConfigRefused, Measurement
from targets.common.errors import ConfigError, WorkloadError
from targets.registry import load_target
from targets.spec import load_spec
from targets.sqlite import DB_NAME, SIDE_SUFFIXES, SqliteTarget
from targets.sqlite_pragmas import PRAGMA_ORDER, read_back

SMALL = {"rows": 2000, "ops": 3000, "batch_size": 50}
KNOBS = [
    "journal_mode", "synchronous", "cache_size", "page_size", "mmap_size", "temp_store",
    "locking_mode", "wal_autocheckpoint", "cache_spill",
]
TUNED = {
    "journal_mode": "wal", "synchronous": "normal", "cache_size": -262144, "page_size": 8192,
    "mmap_size": 268435456, "temp_store": "memory", "locking_mode": "exclusive",
    "wal_autocheckpoint": 5000, "cache_spill": False,
}


def run_once(data_dir: Path, config: dict[str, Any], workload: dict[str, Any] | None = None,
             seed: int = 0) -> Measurement:
    target = SqliteTarget(data_dir, SqliteTarget.parse_workload(workload or SMALL), seed=seed)
    with target:
        target.start(config)
        return target.run()


def applied(data_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The effective config of ``config`` after start() alone (no workload)."""
    target = SqliteTarget(data_dir, SqliteTarget.parse_workload(SMALL))
    with target:
        target.start(config)
        return dict(target._effective)


def fresh_read_back(db: Path, script: str = "") -> dict[str, Any]:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        if script:
            conn.executescript(script)
        conn.execute("CREATE TABLE t (x)")
        return read_back(conn)
    finally:
        conn.close()


# -- the spec ---------------------------------------------------------------------------------
def test_spec_loads_with_the_knobs_the_target_applies() -> None:
    spec = load_spec(SqliteTarget.spec_path())
    assert spec.target == "sqlite"
    assert set(spec.names) == set(KNOBS) == set(PRAGMA_ORDER)
    assert spec["page_size"].restart and not spec["journal_mode"].restart
    assert spec["journal_mode"].choices == ("delete", "truncate", "persist", "memory", "wal", "off")
    assert spec["synchronous"].choices == ("off", "normal", "full", "extra")
    assert load_target("sqlite") is SqliteTarget


def test_spec_defaults_are_what_a_fresh_connection_uses(tmp_path: Path) -> None:
    assert fresh_read_back(tmp_path / "fresh.db") == SqliteTarget.knob_spec().defaults()


def test_spec_refuses_what_sqlite_would_silently_change() -> None:
    spec = SqliteTarget.knob_spec()
    for bad in ({"page_size": 1000}, {"synchronous": 9}, {"journal_mode": "bogus"}):
        with pytest.raises(ConfigError):
            spec.validate_config(bad, "test")


# -- the lifecycle ----------------------------------------------------------------------------
def test_default_config_runs_and_reports_every_knob(tmp_path: Path) -> None:
    m = run_once(tmp_path, SqliteTarget.knob_spec().defaults())
    assert set(m.metrics) == set(SqliteTarget.metrics)
    assert all(value > 0 for value in m.metrics.values()), m.metrics
    assert m.metrics["latency_p99_us"] >= m.metrics["latency_p50_us"]
    assert m.effective_config == SqliteTarget.knob_spec().defaults()
    assert {s["phase"] for s in m.samples} == {"load", "run"}
    assert sum(s["ops"] for s in m.samples) == SMALL["rows"] + SMALL["ops"]
    assert m.counters["rows"] == SMALL["rows"] + m.counters["run_inserts"]
    assert m.counters["run_reads"] + m.counters["run_inserts"] + m.counters["run_updates"] == (
        SMALL["ops"]
    )
    assert 0.7 < m.counters["run_reads"] / SMALL["ops"] < 0.9  # read_ratio 0.8
    assert m.duration_s > 0 and m.log


def test_every_trial_starts_from_a_fresh_database(tmp_path: Path) -> None:
    first = run_once(tmp_path, {"journal_mode": "wal"})
    second = run_once(tmp_path, {})
    assert second.counters["rows"] == first.counters["rows"]  # not loaded on top of the first
    assert second.effective_config["journal_mode"] == "delete"  # wal does not stick to the dir


def test_same_seed_same_workload(tmp_path: Path) -> None:
    fast = {"synchronous": "off"}  # the workload is what is compared, not the timings
    a, b = run_once(tmp_path, fast, seed=3), run_once(tmp_path, fast, seed=3)
    c = run_once(tmp_path, fast, seed=4)
    keys = ("run_reads", "run_inserts", "run_updates", "page_count")
    assert [a.counters[k] for k in keys] == [b.counters[k] for k in keys]
    assert [a.counters[k] for k in keys] != [c.counters[k] for k in keys]


@pytest.mark.parametrize(
    ("knob", "value"),
    [("journal_mode", v) for v in ("delete", "truncate", "persist", "memory", "wal", "off")]
    + [("synchronous", v) for v in ("off", "normal", "full", "extra")]
    + [("temp_store", v) for v in ("default", "file", "memory")]
    + [("page_size", v) for v in (512, 16384, 65536)]
    + [("locking_mode", "exclusive"), ("cache_size", -64), ("mmap_size", 1073741824),
       ("wal_autocheckpoint", 0), ("cache_spill", False)],
)
def test_each_valid_value_is_applied_and_read_back(tmp_path: Path, knob: str, value: Any) -> None:
    effective = applied(tmp_path, {knob: value})
    assert effective[knob] == value
    others = {k: v for k, v in SqliteTarget.knob_spec().defaults().items() if k != knob}
    assert {k: effective[k] for k in others} == others


def test_silent_changes_are_read_back_not_echoed(tmp_path: Path) -> None:
    # direct lifecycle calls: values the spec would refuse reach SQLite as they are
    effective = applied(
        tmp_path,
        {"page_size": 1000, "synchronous": 9, "journal_mode": "BOGUS", "cache_size": "abc"},
    )
    assert effective["page_size"] == 4096
    assert effective["synchronous"] == "normal"  # not the default full
    assert effective["journal_mode"] == "delete"
    assert effective["cache_size"] == 0
    assert applied(tmp_path, {"journal_mode": "WAL", "locking_mode": "EXCLUSIVE"})[
        "journal_mode"
    ] == "wal"


def test_silent_change_shows_in_the_measurement(tmp_path: Path) -> None:
    m = run_once(tmp_path, {**SqliteTarget.knob_spec().defaults(), "page_size": 3000})
    assert m.effective_config["page_size"] == 4096
    assert m.counters["db_bytes"] == m.counters["page_count"] * 4096
    assert any("page_size" in line and "4096" in line for line in m.log)


def test_unknown_knob_is_refused(tmp_path: Path) -> None:
    target = SqliteTarget(tmp_path, SqliteTarget.parse_workload(SMALL))
    with target, pytest.raises(ConfigRefused, match="journal_size"):
        target.start({"journal_size": 10})


def test_stop_releases_an_exclusive_lock(tmp_path: Path) -> None:
    target = SqliteTarget(tmp_path, SqliteTarget.parse_workload(SMALL))
    with target:
        target.start({"locking_mode": "exclusive", "journal_mode": "wal"})
        target.run()
    other = sqlite3.connect(tmp_path / DB_NAME, timeout=0.1)
    try:
        other.execute("INSERT INTO kv (k, v) VALUES (-1, x'00')")
        other.commit()
    finally:
        other.close()
    assert not (tmp_path / (DB_NAME + "-wal")).exists()


def test_wal_and_normal_sync_beat_delete_and_full_on_inserts(tmp_path: Path) -> None:
    workload = {"rows": 5000, "ops": 1, "batch_size": 20}
    best: dict[str, float] = {"slow": 0.0, "fast": 0.0}
    for _ in range(2):  # interleaved, best of two: the machine is shared
        for name, config in (("slow", {"journal_mode": "delete", "synchronous": "full"}),
                             ("fast", {"journal_mode": "wal", "synchronous": "normal"})):
            m = run_once(tmp_path, config, workload)
            best[name] = max(best[name], m.metrics["insert_ops_per_s"])
    assert best["fast"] / best["slow"] > 1.5, best


def test_heap_peak_follows_the_page_cache_and_leaves_mmap_out(tmp_path: Path) -> None:
    # the database (~300 KiB) fits a 2000 KiB cache, not a 64 KiB one; SQLite's heap holds its
    # page cache, and pages read through mmap_size are the OS's, not counted
    workload = {"rows": 2000, "ops": 2000}
    heap = {name: run_once(tmp_path, config, workload).metrics["heap_peak_kb"]
            for name, config in (("small", {"cache_size": -64}), ("default", {}),
                                 ("small+mmap", {"cache_size": -64, "mmap_size": 1 << 28}))}
    db_kib = run_once(tmp_path, {}, workload).counters["db_bytes"] / 1024
    assert heap["small"] < 0.6 * heap["default"], heap
    assert heap["default"] > 0.8 * db_kib, (heap, db_kib)  # the whole file cached
    assert heap["small+mmap"] <= 1.1 * heap["small"], heap
    # the next trial's peak starts afresh, not from the previous trial's
    assert run_once(tmp_path, {"cache_size": -64}, workload).metrics["heap_peak_kb"] < (
        0.6 * heap["default"])


def test_workload_limits() -> None:
    with pytest.raises(WorkloadError, match="read_ratio"):
        SqliteTarget.parse_workload({"read_ratio": 1.5})
    with pytest.raises(WorkloadError, match="rows"):
        SqliteTarget.parse_workload({"rows": 0})
    assert "sample_interval_s" not in SqliteTarget.workload_features(SqliteTarget.workload_defaults)


# -- native config ----------------------------------------------------------------------------
@pytest.mark.parametrize("config", [SqliteTarget.knob_spec().defaults(), TUNED,
                                    {"page_size": 1000, "synchronous": 9}])
def test_render_native_applies_like_the_target(tmp_path: Path, config: dict[str, Any]) -> None:
    text = SqliteTarget.render_native(config)
    statements = [line for line in text.splitlines() if line.startswith("PRAGMA")]
    assert statements[0].startswith("PRAGMA page_size = ")
    assert len(statements) == len(config)
    assert any(line.startswith("--") and "VACUUM" in line for line in text.splitlines())
    assert fresh_read_back(tmp_path / "native.db", text) == applied(tmp_path / "target", config)


def test_render_native_writes_values_bare() -> None:
    text = SqliteTarget.render_native(TUNED)
    assert "PRAGMA journal_mode = wal;" in text
    assert "PRAGMA cache_size = -262144;" in text
    assert "PRAGMA cache_spill = false;" in text


# -- after a killed trial ---------------------------------------------------------------------
KILLED_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = {mode}")
conn.execute("PRAGMA wal_autocheckpoint = 0")
conn.execute("CREATE TABLE t (x)")
conn.execute("BEGIN")
conn.executemany("INSERT INTO t VALUES (?)", ((i,) for i in range(20000)))
{commit}
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("mode", "commit", "left"), [
    ("wal", 'conn.execute("COMMIT")', ("-wal", "-shm")),
    ("delete", 'conn.execute("PRAGMA cache_size = 10")', ("-journal",)),
])
def test_cleanup_removes_what_a_killed_trial_left(
    tmp_path: Path, mode: str, commit: str, left: tuple[str, ...]
) -> None:
    db = tmp_path / DB_NAME
    code = KILLED_WRITER.format(mode=mode, commit=commit)
    proc = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, timeout=30)
    assert proc.returncode < 0, proc.stderr
    for suffix in left:
        assert (tmp_path / (DB_NAME + suffix)).exists(), list(tmp_path.iterdir())
    SqliteTarget.cleanup(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(DB_NAME)]
    assert set(SIDE_SUFFIXES) >= set(left)
    assert run_once(tmp_path, {}).metrics["ops_per_s"] > 0  # the directory is usable again


# -- through the real trial process -----------------------------------------------------------
def test_one_trial_through_the_trial_process(tmp_path: Path) -> None:
    from tasks.runner import TrialRunner

    runner = TrialRunner(
        target_cls=SqliteTarget,
        target_ref="targets.sqlite:SqliteTarget",
        workload=SqliteTarget.parse_workload(SMALL),
        objective="ops_per_s",
        timeout_s=60,
        job_dir=tmp_path / "job",
        instance_dirs={"i1": tmp_path / "i1"},
    )
    config = {**SqliteTarget.knob_spec().defaults(), "journal_mode": "wal"}
    outcome = runner.run("0", config, "i1", seed=1)
    assert outcome.ok, (outcome.failure_class, outcome.message, outcome.log_tail)
    assert outcome.value is not None and outcome.value > 0
    assert outcome.effective_config["journal_mode"] == "wal"
    assert outcome.changed_knobs == []
    assert outcome.samples
