"""The rocksdb target against real RocksDB in a temporary directory: rocksdict and db_bench."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import available, needs, wait_for

from targets.base import BenchmarkError, ConfigRefused, FailureClass, Measurement
from targets.common.errors import WorkloadError
from targets.process import ClientRun, Usage
from targets.rocksdb import HANG, RocksdbTarget
from targets.rocksdb_dbbench import classify_failure, db_bench_path, parse_benchmarks
from targets.rocksdb_options import (
    DEFAULTS,
    KNOBS,
    block_cache_capacity,
    bloom_bits_from_tables,
    parse_options_file,
    read_effective,
)
from targets.rocksdb_workload import Phase, run_metrics
from targets.spec import load_spec
from tasks.runner import TrialRunner
from tuners.trials import TrialOutcome

rocksdict = pytest.importorskip("rocksdict", reason="pip install rocksdict")
DB_BENCH = db_bench_path()  # where the target finds it
#: for needs() and available(): what the db_bench driver lacks
DB_BENCH_NEEDS = ("RocksDB's db_bench driver", [] if DB_BENCH else ["db_bench"],
                  "on PATH or /usr/bin; Debian: apt-get install rocksdb-tools")
needs_db_bench = needs(*DB_BENCH_NEEDS)
DRIVERS = ["rocksdict", pytest.param("db_bench", marks=needs_db_bench)]
SMALL = {"num_keys": 50_000, "ops": 50_000}  # well under a second per phase
TINY = {"num_keys": 20_000, "ops": 5_000}
#: Every knob away from its default, inside the spec's ranges.
TUNED = {
    "write_buffer_size": 4 * 2**20, "max_write_buffer_number": 4,
    "min_write_buffer_number_to_merge": 2, "level0_file_num_compaction_trigger": 2,
    "level0_slowdown_writes_trigger": 30, "max_bytes_for_level_base": 64 * 2**20,
    "target_file_size_base": 8 * 2**20, "max_background_jobs": 3, "max_open_files": 256,
    "bytes_per_sync": 1048576, "compression": "lz4", "block_size": 16384,
    "block_cache_size": 64 * 2**20, "bloom_bits": 10, "cache_index_and_filter_blocks": True,
}


def runner(tmp_path: Path, driver: str, workload: dict[str, Any] | None = None,
           timeout: float = 30.0, instances: tuple[str, ...] = ("i1",),
           job: str = "job") -> TrialRunner:
    return TrialRunner(
        target_cls=RocksdbTarget,
        target_ref="targets.rocksdb:RocksdbTarget",
        workload=RocksdbTarget.parse_workload({"driver": driver, **(workload or SMALL)}),
        objective="ops_per_s",
        timeout_s=timeout,
        job_dir=tmp_path / job,
        instance_dirs={name: tmp_path / name for name in instances},
    )


def run_direct(data_dir: Path, driver: str, config: dict[str, Any],
               workload: dict[str, Any] | None = None) -> Measurement:
    target = RocksdbTarget(data_dir, RocksdbTarget.parse_workload(
        {"driver": driver, **(workload or TINY)}), seed=1)
    with target:
        target.start(config)
        return target.run()


def db_benches_on(path: Path) -> list[int]:
    """PIDs of db_bench processes whose command line names ``path``."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "db_bench" and str(path) in cmd:
            found.append(proc.info["pid"])
    return found


def join_all(threads: list[threading.Thread], timeout: float = 600.0) -> None:
    """Wait for trial threads: a generous bound, only so a stuck trial cannot hang the suite."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"trials still running after {timeout:g} s"


def assert_ok(outcome: TrialOutcome) -> None:
    assert outcome.ok, (outcome.failure_class, outcome.message, outcome.log_tail[-5:])


# -- without RocksDB ----------------------------------------------------------------------------
def test_spec_knobs_and_defaults_match_the_target() -> None:
    spec = load_spec(RocksdbTarget.spec_path())
    assert spec.target == "rocksdb" and spec.names == list(KNOBS)
    assert spec.defaults() == DEFAULTS
    assert spec["compression"].choices == ("none", "snappy", "lz4", "zstd")
    # the known hangs lie outside the ranges a tuner may try
    assert spec["level0_file_num_compaction_trigger"].problem_with(-1)
    assert spec["target_file_size_base"].problem_with(0)


def test_workload_driver_and_benchmark_are_checked() -> None:
    assert RocksdbTarget.parse_workload({})["driver"] == "rocksdict"
    with pytest.raises(WorkloadError, match="'rocksdict', 'db_bench'"):
        RocksdbTarget.parse_workload({"driver": "leveldb"})
    with pytest.raises(WorkloadError, match="needs the db_bench driver"):
        RocksdbTarget.parse_workload({"benchmark": "readwhilewriting"})
    with pytest.raises(WorkloadError, match="runs one thread"):
        RocksdbTarget.parse_workload({"threads": 4})
    with pytest.raises(WorkloadError, match="outside"):
        RocksdbTarget.parse_workload({"read_ratio": 1.5})
    features = RocksdbTarget.workload_features(RocksdbTarget.parse_workload({"read_ratio": 0.9}))
    assert features == {"num_keys": 300000.0, "value_size": 100.0, "compression_ratio": 0.5,
                        "read_ratio": 0.9, "threads": 1.0}


def test_db_bench_output_is_parsed() -> None:
    out = (
        "fillrandom   :       3.635 micros/op 275037 ops/sec 0.727 seconds 200000 operations;"
        "   30.4 MB/s\nMicroseconds per write:\nCount: 200000 Average: 3.6352  StdDev: 5.58\n"
        "Min: 2  Median: 2.9143  Max: 2411\nPercentiles: P50: 2.91 P75: 3.64 P99: 5.99 P99.9: 20\n"
        "flush memtable\n"
        "readrandomwriterandom :       2.208 micros/op 452232 ops/sec 0.044 seconds 20000 "
        "operations; ( reads:14000 writes:6000 total:20000 found:9363)\n"
        "Microseconds per read:\nCount: 14000 Average: 1.8600  StdDev: 1\n"
        "Percentiles: P50: 1.02 P75: 2.00 P99: 4.94 P99.9: 8.00 P99.99: 9.00\n"
        "Microseconds per write:\nCount: 6000 Average: 3.2600  StdDev: 1\n"
        "Percentiles: P50: 3.00 P75: 3.50 P99: 7.00 P99.9: 8.00 P99.99: 9.00\n"
    )
    fill, mixed = parse_benchmarks(out)
    assert (fill.name, fill.ops, fill.seconds) == ("fillrandom", 200000, 0.727)
    assert fill.histograms["write"] == (200000, 3.6352, 2.91, 5.99)
    assert mixed.histograms["read"] == (14000, 1.86, 1.02, 4.94)
    metrics = run_metrics([Phase("load", "fillrandom", 200000, 0.727, writes=200000,
                                 write_mean_us=3.6352),
                           Phase("run", "readrandom", 100, 0.001, reads=100, read_mean_us=2.0,
                                 read_p50_us=1.0, read_p99_us=9.0)])
    assert metrics["ops_per_s"] == pytest.approx(200100 / 0.728)
    assert metrics["read_ops_per_s"] == pytest.approx(500000)
    assert (metrics["read_p50_us"], metrics["read_p99_us"]) == (1.0, 9.0)


def test_db_bench_failures_are_classified_from_its_own_messages() -> None:
    def run(code: int, err: str) -> ClientRun:
        return ClientRun(code, "", err, 0.1, Usage())

    refused = classify_failure(run(1, "Cannot parse compression type 'bogus'"), "load")
    assert isinstance(refused, ConfigRefused) and "'bogus'" in str(refused)
    io = classify_failure(run(1, "put error: IO error: While open a file for appending: "
                                 "/x/db/000123.sst: Too many open files"), "load")
    assert getattr(io, "failure_class", None) == FailureClass.IO_ERROR
    crash = classify_failure(run(-6, "db_bench: version_set.cc:42: Assertion `x' failed."),
                             "run")
    assert getattr(crash, "failure_class", None) == FailureClass.CRASH
    assert "SIGABRT" in str(crash) and "Assertion" in str(crash)
    assert isinstance(classify_failure(run(2, "something else"), "run"), BenchmarkError)


def test_options_file_and_log_parsing() -> None:
    text = ("[Version]\n  rocksdb_version=7.8.3\n[CFOptions \"default\"]\n  compression=kZSTD\n"
            "[TableOptions/BlockBasedTable \"default\"]\n  filter_policy=bloomfilter:10:false\n")
    assert parse_options_file(text)['CFOptions "default"'] == {"compression": "kZSTD"}
    log = ("  no_block_cache: 0\n  block_cache_options:\n    capacity : 33554432\n"
           "    num_shard_bits : 4\n")
    assert block_cache_capacity(log) == 33554432
    assert block_cache_capacity("  no_block_cache: 1\n") == 0
    # 10 bits per key: 126330 keys take 157957 bytes (64-byte lines, 5 bytes of metadata)
    assert bloom_bits_from_tables([{"filter_size": 157957, "num_filter_entries": 126330}]) == 10
    assert bloom_bits_from_tables([{"filter_size": 0, "num_filter_entries": 0}]) == 0


def test_render_native_is_an_options_file() -> None:
    text = RocksdbTarget.render_native({"compression": "zstd", "bloom_bits": 10})
    sections = parse_options_file(text)
    assert sections["Version"]["options_file_version"] == "1.1"
    assert sections['CFOptions "default"']["compression"] == "kZSTD"
    table = sections['TableOptions/BlockBasedTable "default"']
    assert table["filter_policy"] == "bloomfilter:10:false"
    assert table["block_cache"] == "8388608"  # knobs not given are at their defaults
    assert "nullptr" in RocksdbTarget.render_native({"bloom_bits": 0})


# -- real trials --------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_default_config_runs_and_every_knob_is_read_back(tmp_path: Path, driver: str) -> None:
    outcome = runner(tmp_path, driver).run("0", RocksdbTarget.knob_spec().defaults(), "i1", 1)
    assert_ok(outcome)
    assert set(outcome.metrics) == set(RocksdbTarget.metrics)
    assert outcome.value == outcome.metrics["ops_per_s"] > 0
    assert outcome.metrics["read_p99_us"] >= outcome.metrics["read_p50_us"] > 0
    assert outcome.effective_config == DEFAULTS and outcome.changed_knobs == []
    assert {s["phase"] for s in outcome.samples if s["kind"] == "phase"} == {"load", "run"}
    assert any(line.startswith("RocksDB ") and f"via {driver}" in line
               for line in outcome.log_tail)
    assert db_benches_on(tmp_path) == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_knob_is_applied_and_read_back(tmp_path: Path, driver: str) -> None:
    m = run_direct(tmp_path, driver, TUNED)
    assert m.effective_config == TUNED
    assert m.counters["server_cpu_s"] > 0 and m.counters["client_cpu_s"] == 0
    assert m.counters["sst_files"] >= 1 and m.counters["bloom_filter_useful"] > 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_silently_clamped_value_is_a_changed_knob(tmp_path: Path, driver: str) -> None:
    config = {**DEFAULTS, "write_buffer_size": 0, "max_write_buffer_number": 1}
    outcome = runner(tmp_path, driver, TINY).run("0", config, "i1", 1)
    # it ran, but measured another config than requested: never learned from, and it says why
    assert outcome.failure_class == "invalid_measurement", outcome.message
    assert "write_buffer_size requested 0, applied 65536" in outcome.message
    assert outcome.effective_config["write_buffer_size"] == 65536
    assert outcome.effective_config["max_write_buffer_number"] == 2
    assert sorted(outcome.changed_knobs) == ["max_write_buffer_number", "write_buffer_size"]
    assert any("requested write_buffer_size=0, RocksDB applied 65536" in line
               for line in outcome.log_tail)


@pytest.mark.parametrize(
    ("driver", "config", "message"),
    [
        ("rocksdict", {"block_size": 8 * 2**30}, "block size exceeds maximum"),
        ("rocksdict", {"write_buffer_size": -1}, "can't convert negative int to unsigned"),
        ("rocksdict", {"compression": "zlib"}, "built without zlib"),
        pytest.param("db_bench", {"compression": "bogus"}, "Cannot parse compression type",
                     marks=needs_db_bench),
        pytest.param("db_bench", {"block_size": "4k"}, "illegal value '4k'",
                     marks=needs_db_bench),
    ],
)
def test_refused_configs_carry_the_systems_message(
    tmp_path: Path, driver: str, config: dict[str, Any], message: str
) -> None:
    outcome = runner(tmp_path, driver, TINY).run("0", config, "i1", 1)
    assert outcome.failure_class == "refused_config", outcome.message
    assert message in outcome.message


@pytest.mark.parametrize(
    ("bad", "classes"),
    [
        (HANG, ("timeout",)),
        # TARGETS.md: rocksdict hangs; db_bench fails after ~40 s ("Too many open files")
        ({"target_file_size_base": 0, "write_buffer_size": 262144}, ("timeout", "io_error")),
    ],
    ids=["l0-trigger-minus-one", "target-file-size-zero"],
)
def test_known_hangs_end_by_the_timeout_and_the_instance_is_usable_after(
    tmp_path: Path, bad: dict[str, Any], classes: tuple[str, ...]
) -> None:
    drivers = ["rocksdict"] + (["db_bench"] if available(*DB_BENCH_NEEDS) else [])
    outcomes: dict[str, list[TrialOutcome]] = {}

    def bad_then_default(driver: str) -> None:  # both drivers at once: a hang mostly waits
        run = runner(tmp_path, driver, {"num_keys": 100_000, "ops": 10_000}, timeout=8.0,
                     instances=(driver,), job=f"job-{driver}")
        outcomes[driver] = [run.run("bad", {**DEFAULTS, **bad}, driver, 1),
                            run.run("after", DEFAULTS, driver, 2)]

    threads = [threading.Thread(target=bad_then_default, args=(d,)) for d in drivers]
    for t in threads:
        t.start()
    join_all(threads)
    for driver in drivers:
        failed, after = outcomes[driver]
        # the class says the 8 s timeout (or the system) ended it; how soon after is a figure
        # for benchmarks/, not a bound a loaded machine could break
        assert failed.failure_class in classes, (driver, failed.failure_class, failed.message)
        assert_ok(after)
        assert after.changed_knobs == []
    assert db_benches_on(tmp_path) == []


@needs_db_bench
def test_bloom_big_cache_no_compression_beat_zstd_big_blocks_tiny_cache(tmp_path: Path) -> None:
    good = {"bloom_bits": 10, "block_cache_size": 512 * 2**20, "compression": "none"}
    bad = {"compression": "zstd", "block_size": 65536, "block_cache_size": 2**20}
    workload = {"num_keys": 50_000, "ops": 30_000}
    fast = run_direct(tmp_path / "good", "db_bench", good, workload)
    slow = run_direct(tmp_path / "bad", "db_bench", bad, workload)
    # measured 2.3x vs -92% of the default (TARGETS.md): an order of magnitude apart
    assert fast.metrics["read_ops_per_s"] > 4 * slow.metrics["read_ops_per_s"]
    assert fast.counters["bloom_filter_useful"] > 0 == slow.counters["bloom_filter_useful"]


def test_two_instances_side_by_side(tmp_path: Path) -> None:
    drivers = ["rocksdict", "db_bench" if available(*DB_BENCH_NEEDS) else "rocksdict"]
    outcomes: list[TrialOutcome] = []
    lock = threading.Lock()

    def one(name: str, driver: str) -> None:
        outcome = runner(tmp_path, driver, TINY, instances=(name,), job=f"job-{name}").run(
            "0", DEFAULTS, name, 1)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one, args=(f"i{i}", d)) for i, d in enumerate(drivers)]
    for t in threads:
        t.start()
    join_all(threads)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert_ok(outcome)
    assert all((tmp_path / name / "db" / "CURRENT").exists() for name in ("i0", "i1"))


@needs_db_bench
def test_cleanup_ends_the_instances_db_bench_only_and_removes_its_db(tmp_path: Path) -> None:
    procs = []
    for name in ("i1", "i2"):  # hanging db_benches in their own sessions, as if orphaned
        (tmp_path / name).mkdir()
        procs.append(subprocess.Popen(
            [str(DB_BENCH), f"--db={tmp_path / name / 'db'}", "--benchmarks=fillrandom",
             "--num=1000000", "--level0_file_num_compaction_trigger=-1",
             "--write_buffer_size=65536"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        wait_for((tmp_path / "i1" / "db" / "LOCK").exists, "db_bench to open its database",
                 interval=0.05)
        assert procs[0].poll() is None  # stalled: level0 compaction never runs
        RocksdbTarget.cleanup(tmp_path / "i1")
        assert db_benches_on(tmp_path / "i1") == []
        assert not (tmp_path / "i1" / "db").exists()
        assert db_benches_on(tmp_path / "i2") == [procs[1].pid]  # the other one runs on
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@needs_db_bench
def test_render_native_loads_in_db_bench_as_the_same_config(tmp_path: Path) -> None:
    options = tmp_path / "knobflow.ini"
    options.write_text(RocksdbTarget.render_native(TUNED))
    subprocess.run(
        [str(DB_BENCH), f"--options_file={options}", f"--db={tmp_path / 'db'}",
         "--benchmarks=fillrandom", "--num=5000"],
        check=True, capture_output=True, timeout=30,
    )
    effective = read_effective(tmp_path / "db")
    expected = {k: v for k, v in TUNED.items() if k != "block_cache_size"}
    # db_bench --options_file keeps its own --cache_size block cache
    assert {k: effective[k] for k in expected} == expected


@needs_db_bench
@pytest.mark.parametrize(
    "workload",
    [{"read_ratio": 0.7}, {"benchmark": "readwhilewriting", "threads": 2},
     {"benchmark": "mixgraph", "read_ratio": 0.8}],
)
def test_db_bench_run_phase_variants(tmp_path: Path, workload: dict[str, Any]) -> None:
    m = run_direct(tmp_path, "db_bench", {}, {**TINY, **workload})
    assert m.metrics["ops_per_s"] > 0 and m.metrics["read_ops_per_s"] > 0
    assert m.metrics["read_p99_us"] > 0


def test_rocksdict_read_write_mix(tmp_path: Path) -> None:
    m = run_direct(tmp_path, "rocksdict", {}, {**TINY, "read_ratio": 0.5})
    run = next(s for s in m.samples if s["phase"] == "run" and s["kind"] == "phase")
    assert run["benchmark"] == "readrandomwriterandom"
    assert m.metrics["write_ops_per_s"] > 0 and m.metrics["read_ops_per_s"] > 0
    assert 0.3 < m.counters["reads_found"] / TINY["ops"] < 0.5  # ~63% of half the operations


def test_no_db_bench_means_a_clear_benchmark_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("targets.rocksdb_dbbench.db_bench_path", lambda: None)
    with pytest.raises(BenchmarkError, match="rocksdb-tools"):
        run_direct(tmp_path, "db_bench", {})
