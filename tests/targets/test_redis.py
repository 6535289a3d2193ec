"""The redis target against a real redis-server and redis-benchmark in a temporary directory."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import missing_executables, needs

from targets.base import ConfigRefused, FailureClass, TrialFailed
from targets.common.errors import WorkloadError
from targets.redis import (
    KNOB_KINDS,
    PERSISTENCE,
    RedisTarget,
    classify,
    conf_lines,
    conf_value,
    parse_csv,
)
from targets.registry import load_target
from tasks.runner import TrialRunner
from tuners.trials import TrialOutcome

# the programs the target runs, as it declares them
BINARIES = RedisTarget.contract_examples()["redis"].requires
needs_redis = needs("Redis", missing_executables(BINARIES),
                    "on PATH; Debian: apt-get install redis-server redis-tools")
SMALL = {"requests": 200_000}  # about 0.5 s of benchmark for set + get
TUNED = {
    "maxmemory": 256 * 2**20, "maxmemory_policy": "allkeys-lru", "maxmemory_samples": 10,
    "io_threads": 2, "io_threads_do_reads": True, "hz": 50, "dynamic_hz": False,
    "appendonly": True, "appendfsync": "no", "save": "3600 1 300 100 60 10000",
    "rdbcompression": False, "lazyfree_lazy_eviction": True, "lazyfree_lazy_server_del": True,
    "active_expire_effort": 3, "tcp_backlog": 128, "list_max_listpack_size": 128,
}


def runner(tmp_path: Path, timeout: float = 120.0, workload: dict[str, Any] | None = None,
           instances: tuple[str, ...] = ("i1",)) -> TrialRunner:
    """Trials of SMALL; the timeout only keeps a stuck test from hanging: on 2 cores shared with
    other work a trial with I/O threads (they busy-wait) once took over 15 s instead of 1-4 s."""
    return TrialRunner(
        target_cls=RedisTarget,
        target_ref="targets.redis:RedisTarget",
        workload=RedisTarget.parse_workload(SMALL if workload is None else workload),
        objective="rps",
        timeout_s=timeout,
        job_dir=tmp_path / "job",
        instance_dirs={name: tmp_path / name for name in instances},
    )


def servers_of(data_dir: Path) -> list[int]:
    """PIDs of live processes whose command line names ``data_dir`` (Redis: in its title)."""
    marker = str(data_dir.resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def socket_of(outcome: TrialOutcome) -> str:
    """The Unix socket the trial's server listened on (it has no TCP port)."""
    line = next(ln for ln in outcome.log_tail if ln.startswith("redis at "))
    return line.split()[2].rstrip(":")


def assert_clean(data_dir: Path) -> None:
    assert servers_of(data_dir) == []
    assert not any((data_dir / name).exists() for name in PERSISTENCE)


# -- without a server ---------------------------------------------------------------------------
def test_spec_and_target_agree_on_the_knobs() -> None:
    spec = RedisTarget.knob_spec()
    assert spec.target == "redis" and load_target("redis") is RedisTarget
    assert spec.names == list(KNOB_KINDS)
    for knob in spec:
        expected = {"int": "int", "bool": "bool", "categorical": "str"}[knob.type]
        assert KNOB_KINDS[knob.name] == expected, knob.name
    assert spec["appendfsync"].choices == ("always", "everysec", "no")
    assert spec.defaults()["save"] == ""


def test_config_renders_as_redis_conf_with_hyphenated_names() -> None:
    text = RedisTarget.render_native({"maxmemory_policy": "allkeys-lru", "io_threads_do_reads":
                                      True, "save": "", "appendfsync": "no"})
    assert text.endswith("maxmemory-policy allkeys-lru\nio-threads-do-reads yes\nsave \"\"\n"
                         "appendfsync no\n")
    assert conf_value("60 1000") == '"60 1000"'
    # a value cannot smuggle in a second directive
    assert conf_lines({"save": 'x"\nport 1'}) == ['save "x\\"\\nport 1"']


def test_workload_tests_are_checked_and_features_leave_out_the_length() -> None:
    with pytest.raises(WorkloadError, match="did you mean 'lpush'"):
        RedisTarget.parse_workload({"tests": "set,lpsh"})
    assert RedisTarget.parse_workload({"tests": " SET, lrange_100 "})["tests"] == "set,lrange_100"
    features = RedisTarget.workload_features(RedisTarget.parse_workload({"tests": "set,get"}))
    assert features["read_ratio"] == 0.5 and "requests" not in features
    assert features["pipeline"] == 16 and features["value_size"] == 64


def test_benchmark_output_is_parsed_and_classified() -> None:
    out = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
           '"p99_latency_ms","max_latency_ms"\n'
           '"LRANGE_100 (first 100 elements)","50000.00","0.2","0.1","0.2","0.3","0.4","1.0"\n'
           '"GET","6')
    assert parse_csv(out) == [{"test": "lrange_100", "rps": 50000.0, "latency_avg_ms": 0.2,
                               "latency_p50_ms": 0.2, "latency_p95_ms": 0.3,
                               "latency_p99_ms": 0.4, "latency_max_ms": 1.0}]
    oom = "Error from server: OOM command not allowed when used memory > 'maxmemory'."
    assert classify(oom) == FailureClass.OUT_OF_MEMORY
    assert classify("MISCONF Errors writing to the AOF file") == FailureClass.IO_ERROR
    assert classify("Error: Connection reset by peer") is None


def test_directives_the_target_owns_are_refused(tmp_path: Path) -> None:
    target = RedisTarget(tmp_path / "i1", RedisTarget.parse_workload(SMALL))
    with pytest.raises(ConfigRefused, match="port"):
        target.start({"port": 6379})
    for knob in ("unixsocketperm", "requirepass", "aclfile", "user", "bind"):
        with pytest.raises(ConfigRefused, match=knob):  # none may open the server to others
            target.start({knob: "x"})


# -- with a real server ----------------------------------------------------------------------
@needs_redis
def test_default_config_runs_and_reads_back_every_knob(tmp_path: Path) -> None:
    defaults = RedisTarget.knob_spec().defaults()
    outcome = runner(tmp_path).run("0", defaults, "i1", 0)
    assert outcome.ok, outcome.message
    assert outcome.value is not None and outcome.value > 0
    assert outcome.effective_config == defaults and outcome.changed_knobs == []
    assert [s["phase"] for s in outcome.samples] == ["set", "get"]
    assert 0 < outcome.metrics["latency_p50_ms"] <= outcome.metrics["latency_p99_ms"]
    assert_clean(tmp_path / "i1")


@needs_redis
def test_tuned_config_is_applied_and_its_files_removed(tmp_path: Path) -> None:
    outcome = runner(tmp_path).run("0", TUNED, "i1", 0)
    assert outcome.ok, outcome.message
    assert {k: outcome.effective_config[k] for k in TUNED} == TUNED
    assert_clean(tmp_path / "i1")


@needs_redis
def test_silent_clamp_is_read_back(tmp_path: Path) -> None:
    target = RedisTarget(tmp_path / "i1", RedisTarget.parse_workload(SMALL))
    with target:
        target.start({"hz": 1000, "maxmemory": 1})
        assert target._effective["hz"] == 500 and target._effective["maxmemory"] == 1
    assert_clean(tmp_path / "i1")


@needs_redis
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"maxmemory_policy": "bogus"}, ["FATAL CONFIG FILE ERROR", "must be one of", "knob "
                                         "'maxmemory_policy'"]),
        ({"no_such_knob": 1}, ["FATAL CONFIG FILE ERROR", "Bad directive"]),
    ],
)
def test_refused_config_gives_redis_own_message(tmp_path: Path, config: dict[str, Any],
                                                 words: list[str]) -> None:
    outcome = runner(tmp_path).run("0", config, "i1", 0)
    assert outcome.failure_class == FailureClass.REFUSED
    for word in words:
        assert word in outcome.message
    assert_clean(tmp_path / "i1")


@needs_redis
def test_maxmemory_of_one_byte_is_out_of_memory(tmp_path: Path) -> None:
    outcome = runner(tmp_path).run("0", {"maxmemory": 1}, "i1", 0)
    assert outcome.failure_class == FailureClass.OUT_OF_MEMORY
    assert "OOM command not allowed" in outcome.message
    assert_clean(tmp_path / "i1")


@needs_redis
def test_server_killed_mid_run_is_a_crash(tmp_path: Path) -> None:
    target = RedisTarget(tmp_path / "i1", RedisTarget.parse_workload(SMALL))
    with target:
        target.start({})
        assert target._server is not None and target._server.proc is not None
        os.kill(target._server.proc.pid, signal.SIGKILL)
        with pytest.raises(TrialFailed, match="killed by SIGKILL") as err:
            target.run()
    assert err.value.failure_class == FailureClass.CRASH
    assert_clean(tmp_path / "i1")


@needs_redis
def test_cleanup_ends_a_leftover_server(tmp_path: Path) -> None:
    target = RedisTarget(tmp_path / "i1", RedisTarget.parse_workload(SMALL))
    target.start({"appendonly": True})
    assert servers_of(tmp_path / "i1")
    RedisTarget.cleanup(tmp_path / "i1")
    assert_clean(tmp_path / "i1")
    target.stop()


@needs_redis
def test_io_threads_hang_hits_the_timeout_and_the_instance_recovers(tmp_path: Path) -> None:
    # 4 busy-waiting I/O threads on 2 cores: ~36k rps, 500k requests take far beyond 3 s
    hung = runner(tmp_path, timeout=3.0, workload={"requests": 500_000}).run(
        "0", {"io_threads": 4}, "i1", 0)
    assert hung.failure_class == FailureClass.TIMEOUT
    assert_clean(tmp_path / "i1")
    after = runner(tmp_path).run("1", {}, "i1", 1)  # the same instance, an ordinary trial
    assert after.ok, after.message
    assert_clean(tmp_path / "i1")


@needs_redis
def test_two_instances_run_side_by_side(tmp_path: Path) -> None:
    run = runner(tmp_path, instances=("a", "b"))
    outcomes: dict[str, TrialOutcome] = {}

    def trial(name: str) -> None:
        outcomes[name] = run.run(name, {}, name, 0)

    threads = [threading.Thread(target=trial, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in outcomes.values()), [o.message for o in outcomes.values()]
    assert socket_of(outcomes["a"]) != socket_of(outcomes["b"])
    assert_clean(tmp_path / "a")
    assert_clean(tmp_path / "b")


@needs_redis
def test_a_data_directory_deeper_than_a_socket_path_works(tmp_path: Path) -> None:
    """A socket path holds 107 bytes; the server and its clients name the socket relative to the
    data directory, so an instance may live anywhere."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    outcome = TrialRunner(
        target_cls=RedisTarget, target_ref="targets.redis:RedisTarget",
        workload=RedisTarget.parse_workload(SMALL), objective="rps", timeout_s=120.0,
        job_dir=tmp_path / "job", instance_dirs={"i1": deep},
    ).run("0", {}, "i1", 0)
    assert outcome.ok, outcome.message
    assert len(socket_of(outcome).encode()) > 107
    assert_clean(deep)
