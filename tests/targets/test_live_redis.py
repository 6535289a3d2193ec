"""The live Redis driver against a real redis-server launched under load by targets.live_daemon.

One launched instance serves the module (a launch is about a second); a test that changes its
config changes it back. The load is redis-benchmark without pipelining: then each write waits for
its own event-loop round, and an fsync per round (appendfsync always) shows plainly.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import missing_executables, needs, wait_for

from rules.ruleset import RuleSet
from targets.live import ActuationRefused, Connection, LiveError, live_system
from targets.live_daemon import launch, set_workload, stop_launched
from targets.live_redis import RedisLive
from targets.live_redis_latency import histogram_values, latencies
from targets.process import free_port, new_secret, write_private
from targets.redis import RedisTarget

pytestmark = needs("Redis", missing_executables(["redis-server", "redis-benchmark", "redis-cli"]),
                   "on PATH; Debian: apt-get install redis-server redis-tools")
#: requests per test and loop: far below a window's worth, so every window sees the same mix (CI
#: once read 23 % GETs in a 1 s window with 20,000: a loaded machine's test phase lasts ~1 s)
WORKLOAD = {"tests": "set,get", "requests": 2_000, "pipeline": 1, "keyspace": 10_000}
AOF_ALWAYS = {"appendonly": True, "appendfsync": "always"}


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RedisLive]]:
    data_dir = tmp_path_factory.mktemp("live") / "redis"
    connection = launch("redis", data_dir, WORKLOAD)
    try:
        live = live_system(connection)
        assert isinstance(live, RedisLive)
        yield data_dir, live
    finally:
        stop_launched(data_dir)


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path``."""
    mounts = [p for p in psutil.disk_partitions(all=True)
              if str(path.resolve()).startswith(p.mountpoint)]
    return max(mounts, key=lambda p: len(p.mountpoint)).fstype


def processes_naming(text: str) -> list[psutil.Process]:
    mine = os.getpid()
    return [p for p in psutil.process_iter(["cmdline"])
            if p.pid != mine and text in " ".join(p.info["cmdline"] or ())]


# -- without a server ---------------------------------------------------------------------------
def test_window_percentiles_come_from_the_histograms_difference() -> None:
    # 100 calls at <= 1 us before; 100 more, of them 50 at 1-2 us and 50 at 2-4 us, in between
    a = {"calls:get": 100.0, "usec:get": 100.0,
         **histogram_values({"get": {"histogram_usec": {1: 100}}})}
    b = {"calls:get": 200.0, "usec:get": 400.0,
         **histogram_values({"get": {"histogram_usec": {1: 100, 2: 150, 4: 200}}})}
    got = latencies(a, b, ["get"])
    assert got["latency_avg_ms"] == pytest.approx(0.003)
    assert got["latency_p50_ms"] == pytest.approx(0.002)
    assert got["latency_p99_ms"] == pytest.approx((2 + 2 * 49 / 50) / 1000)
    assert latencies(a, a, ["get"]) == {}  # no calls in the window: no latency


# -- on a launched instance ---------------------------------------------------------------------
def test_read_config_is_the_spec_defaults(instance: tuple[Path, RedisLive]) -> None:
    _, live = instance
    assert live.ping().startswith("Redis 7.")
    assert live.read_config() == RedisTarget.knob_spec().defaults()


def test_a_runtime_change_is_read_back_and_rewritten_into_the_config_file(
        instance: tuple[Path, RedisLive], tmp_path: Path) -> None:
    data_dir, live = instance
    change = {"hz": 11, "maxmemory_policy": "allkeys-lru", "lazyfree_lazy_server_del": True}
    live.apply(change)
    try:
        config = live.read_config()
        assert {k: config[k] for k in change} == change and live.persisted is True
        conf = (data_dir / "server" / "redis.conf").read_text()
        assert "\nhz 11\n" in conf and "\nmaxmemory-policy allkeys-lru\n" in conf
        # Redis's own reading of the rewritten file: a second server started on a copy of it
        copy = tmp_path / "redis.conf"
        shutil.copy(data_dir / "server" / "redis.conf", copy)
        sock = tmp_path / "r.sock"
        server = subprocess.Popen(["redis-server", str(copy), "--dir", str(tmp_path),
                                   "--unixsocket", str(sock), "--pidfile", ""],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            reread = RedisLive(Connection("redis", f"unix://{sock}"))
            wait_for(lambda: sock.exists(), "the second server's socket", timeout=10)
            assert reread.read_config() == config
        finally:
            server.terminate()
            server.wait(10)
    finally:
        live.apply({k: RedisTarget.knob_spec().defaults()[k] for k in change})
    assert live.read_config() == RedisTarget.knob_spec().defaults()


def test_refused_changes_change_nothing(instance: tuple[Path, RedisLive]) -> None:
    _, live = instance
    url = live.connection.url
    with pytest.raises(ActuationRefused) as refused:
        live.apply({"io_threads": 2, "hz": 12})
    assert str(refused.value) == (
        f"{url}: refused, nothing was changed: io_threads: Redis reads io-threads only when it "
        f"starts, and the instance has no restart command (instance add --restart)")
    assert live.runtime_refusals({"hz": 600, "hzz": 1, "dir": "/tmp", "hz_": 2}) == {
        "hz": "600 is outside range [1, 500]", "hzz": "not a Redis knob (did you mean 'hz'?)",
        "dir": "not a Redis knob", "hz_": "not a Redis knob (did you mean 'hz'?)"}
    # a value Redis itself refuses: one CONFIG SET, so the other knob is not changed either
    with pytest.raises(ActuationRefused, match=r"maxmemory_policy: Redis refused it: CONFIG SET "
                       r"failed .*'maxmemory-policy'"):
        live._config_set({"hz": 20, "maxmemory_policy": "bogus"})
    assert live.read_config() == RedisTarget.knob_spec().defaults()


def test_windows_report_throughput_and_follow_the_workload(
        instance: tuple[Path, RedisLive]) -> None:
    data_dir, live = instance
    # the load writes random keys of a 10,000-key space: ~30,000 writes fill 95 % of it, seconds
    # on a loaded machine (the module's first test may run as soon as the load starts)
    wait_for(lambda: live._do(lambda c: c.dbsize()) >= 9_900, "the workload's keyspace filled",
             timeout=60)
    windows = live.observe(2, 1.0)
    for w in windows:
        assert set(w.metrics) == set(RedisLive.observed_metrics) and w.metrics["rps"] > 1000
        values = [*w.metrics.values(), *w.fingerprint.values(), *w.counters.values()]
        assert all(math.isfinite(v) and v >= 0 for v in values)
        assert w.fingerprint["read_ratio"] == pytest.approx(0.5, abs=0.25)
        assert w.fingerprint["clients"] == 20 and w.fingerprint["pipeline"] < 1.5
        assert w.fingerprint["value_size"] == 64  # the workload's data_size
        assert w.counters["server_cpu_s_per_s"] > 0 and w.counters["used_memory_bytes"] > 0
    assert windows[-1].fingerprint["keys"] == pytest.approx(10_000, rel=0.05)
    set_workload(data_dir, {**WORKLOAD, "tests": "set", "pipeline": 8, "clients": 5,
                            "data_size": 100})
    try:
        def switched() -> dict[str, float] | None:
            fp = live.observe(1, 1.0)[0].fingerprint
            return fp if fp.get("read_ratio", 1) < 0.01 and fp["clients"] == 5 else None

        fp = wait_for(switched, "the load to become SET only, 5 clients", timeout=30)
        assert fp["pipeline"] > 4 and fp["commands"] == 1
        wait_for(lambda: live.observe(1, 0.5)[0].fingerprint.get("value_size", 0) > 50,
                 "the values to grow to 100 bytes", timeout=30)
    finally:
        set_workload(data_dir, WORKLOAD)


def test_aof_fsync_always_lowers_throughput(instance: tuple[Path, RedisLive]) -> None:
    data_dir, live = instance
    verdict = RuleSet.for_target(RedisTarget, all_policies=True).check(AOF_ALWAYS)
    assert verdict.failures == []  # no shipped rule blocks it, durable-aof included
    if fs_type(data_dir) == "tmpfs":
        pytest.skip("the instance is on tmpfs, where an fsync costs nothing")
    before = live.observe(3, 1.0)
    live.apply(AOF_ALWAYS)
    try:
        assert {k: live.read_config()[k] for k in AOF_ALWAYS} == AOF_ALWAYS
        after = live.observe(4, 1.0)[1:]  # the first holds the AOF rewrite Redis starts
        assert all(w.counters["aof_enabled"] == 1 for w in after)
    finally:
        live.apply({"appendonly": False, "appendfsync": "everysec"})
    # the default measured before and after (A-B-A): a burst of load from a test beside this one
    # in one phase weighs half as much (CI once read 0.94 with the before-windows alone). The
    # ratio follows the VM's fsync time, which its host's disk moves: 0.42-0.58 (RESULTS, issue
    # 14; 2026-12-04); on another VM 0.59 three times, then 0.06-0.08 minutes later (beside two
    # busy loops, then alone), and 0.76 in a CI run (2026-12-05). Below 0.85: still a clear drop
    again = live.observe(3, 1.0)
    ratio = (statistics.median(w.metrics["rps"] for w in after)
             / statistics.median(w.metrics["rps"] for w in before + again))
    # the windows (rps, server CPU s/s) say which phase moved
    windows = {phase: [(round(w.metrics["rps"]), round(w.counters["server_cpu_s_per_s"], 2))
                       for w in ws] for phase, ws in (("before", before), ("always", after),
                                                      ("again", again))}
    assert ratio < 0.85, f"rps with fsync always / the default around it = {ratio:.2f}: {windows}"
    assert live.read_config() == RedisTarget.knob_spec().defaults()


def test_stop_leaves_no_process_socket_or_directory(tmp_path: Path) -> None:
    # deeper than a socket path may be (107 bytes): the client and the load reach it all the same
    data_dir = tmp_path / ("d" * 60) / "gone"
    live = live_system(launch("redis", data_dir, {**WORKLOAD, "clients": 2}))
    socket = Path(live.connection.url[len("unix://"):])
    assert len(str(socket)) > 107 and live.observe(1, 0.5)[0].metrics["rps"] > 0
    server_pid = int(live._do(lambda c: c.info("server"))["process_id"])
    bench = wait_for(lambda: [p for p in psutil.process_iter(["name", "cwd"])
                              if p.info["name"] == "redis-benchmark"
                              and p.info["cwd"] == str(data_dir.resolve())], "the load generator")
    for proc in [psutil.Process(server_pid), *bench]:
        assert "-a" not in proc.cmdline() and "requirepass" not in " ".join(proc.cmdline())
    stop_launched(data_dir)
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == "zombie"
    assert not any(p.is_running() for p in bench)
    assert processes_naming(str(data_dir)) == [] and not socket.exists() and not data_dir.exists()


# -- a Redis on TCP with a password, started by the test ----------------------------------------
@pytest.fixture
def tcp_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A daemonized redis-server on 127.0.0.1 with a password (in its 0600 config file only) and
    a restart command; knobflow's secret file holds the password."""
    password, port = new_secret(), free_port()
    conf, pid_file, secret = tmp_path / "redis.conf", tmp_path / "redis.pid", tmp_path / "secret"
    write_private(conf, f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsave \"\"\n"
                  f"requirepass {password}\ndaemonize yes\npidfile {pid_file}\n"
                  f"logfile {tmp_path / 'redis.log'}\n")
    write_private(secret, password + "\n")
    restart = (f"sh -c 'kill $(cat {pid_file}); while [ -e {pid_file} ]; do sleep 0.05; done; "
               f"exec redis-server {conf}'")
    subprocess.run(["redis-server", str(conf)], check=True, stdout=subprocess.DEVNULL)
    try:
        yield {"url": f"redis://127.0.0.1:{port}/0", "password": password, "secret": secret,
               "restart": restart, "pid_file": pid_file, "port": port}
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        wait_for(lambda: not pid_file.exists(), "the TCP server to end", timeout=10)


def test_password_only_from_the_secret_file_and_errors_say_what_to_fix(
        tcp_redis: dict[str, Any], tmp_path: Path) -> None:
    url, password, port = tcp_redis["url"], tcp_redis["password"], tcp_redis["port"]
    wrong = tmp_path / "wrong"
    write_private(wrong, "not-it\n")
    right = RedisLive(Connection("redis", url, secret_file=tcp_redis["secret"]))
    wait_for(lambda: _answers(right), "the TCP server", timeout=10)
    assert right.read_config()["hz"] == 10
    server = psutil.Process(int(tcp_redis["pid_file"].read_text()))
    assert password not in " ".join(server.cmdline())
    messages = []
    for connection, expected in [
        (Connection("redis", url, secret_file=wrong),
         f"Redis at {url} refused the password in {wrong} (invalid username-password pair "
         f"or user is disabled.): check it"),
        (Connection("redis", url),
         f"Redis at {url} asks for a password: give the instance a secret file (0600) "
         f"holding it"),
        (Connection("redis", f"redis://:{password}@127.0.0.1:{port}/0"),
         f"Redis at redis://:***@127.0.0.1:{port}/0: the URL holds a password; put it in "
         f"a secret file (0600) and give that file instead"),
        (Connection("redis", f"redis://127.0.0.1:{free_port()}/0"), "cannot be reached"),
    ]:
        with pytest.raises(LiveError) as error:
            RedisLive(connection).ping()
        messages.append(str(error.value))
        assert expected in str(error.value)
    assert messages[-1].endswith("Connection refused.): is it running, and is the URL right?")
    assert all(password not in m for m in messages)


def test_a_restart_knob_is_written_to_the_file_and_restarted_with_the_restart_command(
        tcp_redis: dict[str, Any]) -> None:
    live = RedisLive(Connection("redis", tcp_redis["url"], secret_file=tcp_redis["secret"],
                                restart_command=tcp_redis["restart"]))
    wait_for(lambda: _answers(live), "the TCP server", timeout=10)
    pid = int(tcp_redis["pid_file"].read_text())
    assert live.runtime_refusals({"tcp_backlog": 128, "hz": 12}) == {}
    live.apply({"tcp_backlog": 128, "hz": 12})
    assert int(tcp_redis["pid_file"].read_text()) != pid  # a new server read its file
    config = live.read_config()
    assert (config["tcp_backlog"], config["hz"]) == (128, 12)


def _answers(live: RedisLive) -> bool:
    try:
        live.ping()
        return True
    except LiveError:
        return False
