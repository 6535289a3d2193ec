"""The live synthetic driver against a real synthetic server (``targets.synthetic_server``) launched
by ``targets.live_daemon`` under its load client; windows of 0.5 s."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import statistics
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from rules.ruleset import RuleSet
from targets.live import ActuationRefused, Connection, LiveError, LiveSystem, Window, live_system
from targets.live_daemon import daemon_pid, launch, set_workload, stop_launched
from targets.live_synthetic import ServedSynthetic, SyntheticLive
from targets.synthetic import SyntheticTarget
from targets.synthetic_server import CONFIG, PID, SOCKET

DEFAULTS = SyntheticTarget.knob_spec().defaults()
SHIFT0 = {"shift": 0.0, "noise": 0.03}
#: Far from the optimum along x; no shipped rule blocks it (true ratio 0.4346 at shift 0).
REGRESSING = {"x": 0.8}
#: y mirrored about its best value for the default x at shift 0: the same throughput and latency.
EQUAL = {"y": 39.81}
WINDOW_S = 0.5


def processes_naming(path: Path) -> list[int]:
    """Live processes (not this one) whose command line names ``path``."""
    marker = str(path.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if (proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or ())
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def loaded(live: LiveSystem, shift: float) -> Window:
    """A window once the load runs whole windows under ``shift`` (after a workload change the
    daemon starts a new load client)."""
    def ready() -> Window | None:
        window = live.observe(1, WINDOW_S)[0]
        steady = window.counters["busy_fraction"] > 0.99 and window.metrics["throughput"] > 0
        return window if steady and window.fingerprint["shift"] == shift else None
    return wait_for(ready, f"the load under shift {shift}", timeout=30.0, interval=0.0)


def mean_throughput(windows: list[Window]) -> float:
    return statistics.mean(w.metrics["throughput"] for w in windows)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("live") / "syn"
    launch("synthetic", data_dir, SHIFT0, timeout=60.0)
    yield data_dir
    stop_launched(data_dir)


@pytest.fixture
def live(instance: Path) -> Iterator[SyntheticLive]:
    """The module's instance under the default workload; put back on the defaults afterwards."""
    from targets.live_daemon import launched_connection

    driver = live_system(launched_connection(instance))
    assert isinstance(driver, SyntheticLive)
    loaded(driver, 0.0)
    yield driver
    driver.apply(DEFAULTS)
    if json.loads((instance / "workload.json").read_text())["shift"] != 0.0:
        set_workload(instance, SHIFT0)


def test_a_launched_instance_runs_the_defaults_under_load_on_a_private_socket(
        instance: Path, live: SyntheticLive) -> None:
    assert live.ping() == "synthetic-live 1"
    assert live.read_config() == DEFAULTS
    windows = live.observe(2, WINDOW_S)
    truth = SyntheticTarget.true_value(DEFAULTS, SHIFT0)
    for w in windows:
        assert w.metrics["throughput"] == pytest.approx(truth, rel=0.1)
        # Little's law with the config's threads, as the trial target reports latency
        assert w.metrics["latency_ms"] == pytest.approx(2000.0 / w.metrics["throughput"],
                                                        rel=0.05)
        assert w.fingerprint == {"shift": 0.0}
        assert set(w.metrics) == set(SyntheticLive.observed_metrics)
        assert all(v >= 0 for v in (*w.metrics.values(), *w.counters.values()))
        assert w.counters["errors_per_s"] == 0.0
        assert 0 < w.counters["server_peak_rss_mb"] < 500
    server = instance / "server"
    assert stat.S_IMODE(server.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((server / SOCKET).stat().st_mode)
    assert stat.S_IMODE((server / SOCKET).stat().st_mode) == 0o600
    pid = int((server / PID).read_text())
    assert psutil.Process(pid).net_connections(kind="inet") == []  # no TCP or UDP port


def test_a_runtime_knob_applied_is_read_back_and_persisted(instance: Path,
                                                           live: SyntheticLive) -> None:
    live.apply({"x": 0.5, "mode": "beta", "threads": 16})
    assert live.read_config() == {**DEFAULTS, "x": 0.5, "mode": "beta", "threads": 16}
    on_disk = json.loads((instance / "server" / CONFIG).read_text())
    assert on_disk == {**DEFAULTS, "x": 0.5, "mode": "beta", "threads": 16}
    window = live.observe(1, WINDOW_S)[0]
    truth = SyntheticTarget.true_value(live.read_config(), SHIFT0)
    assert window.metrics["throughput"] == pytest.approx(truth, rel=0.1)


def test_the_config_survives_a_restart_of_the_server_and_restart_knobs_take_one(
        tmp_path: Path) -> None:
    """No daemon: the server is stopped and started again on its directory."""
    served = ServedSynthetic(tmp_path / "srv", SHIFT0)
    served.start(DEFAULTS)
    try:
        connection = SyntheticLive.connection_for(served, served.data_dir)
        live = SyntheticLive(connection)
        live.apply({"x": 0.4, "compress": True, "buffer_kb": 1000})  # restarts: buffer_kb
        applied = {**DEFAULTS, "x": 0.4, "compress": True, "buffer_kb": 992}  # 16 KiB steps
        assert live.read_config() == applied
        first_pid = int((served.data_dir / PID).read_text())
        served.stop()
        assert not psutil.pid_exists(first_pid)
        with pytest.raises(LiveError, match="is not running"):
            live.read_config()
        served.start(None)  # the file as the server left it
        assert live.read_config() == applied
    finally:
        served.stop()
    assert processes_naming(tmp_path) == []
    assert not (tmp_path / "srv" / SOCKET).exists()


def test_a_restart_knob_without_a_restart_command_is_refused_and_nothing_changes(
        instance: Path, live: SyntheticLive) -> None:
    bare = SyntheticLive(dataclasses.replace(live.connection, restart_command=None))
    before = (instance / "server" / CONFIG).read_text()
    with pytest.raises(ActuationRefused) as refused:
        bare.apply({"buffer_kb": 1024, "x": 0.3})
    assert refused.value.reasons == {
        "buffer_kb": "needs a restart (restart: true in targets/specs/synthetic.yaml) and this "
                     "instance has no restart command; add one or leave the knob out"}
    assert str(refused.value).startswith(f"{live.connection.url}: refused, nothing was changed: "
                                         "buffer_kb: needs a restart")
    assert bare.read_config() == DEFAULTS
    assert (instance / "server" / CONFIG).read_text() == before
    # the same value is no change: no restart needed (a rollback re-applies whole configs)
    bare.apply({**DEFAULTS, "buffer_kb": 260, "x": 0.6})
    assert bare.read_config() == {**DEFAULTS, "x": 0.6}
    assert bare.runtime_refusals({"nope": 1, "x": 2.0, "threads": 8}) == {
        "nope": "the synthetic system has no such knob (see its spec)",
        "x": "the spec refuses it: 2.0 is outside range [0.0, 1.0]"}
    assert bare.runtime_refusals({"mode": "gamma", "threads": 1}) == {
        "mode": "the system refuses it: FATAL: mode 'gamma' needs threads >= 2",
        "threads": "the system refuses it: FATAL: mode 'gamma' needs threads >= 2"}


def test_a_workload_change_moves_the_fingerprint_and_the_throughput(
        instance: Path, live: SyntheticLive) -> None:
    set_workload(instance, {"shift": 1.0, "noise": 0.03})
    moved = loaded(live, 1.0)
    truths = [SyntheticTarget.true_value(DEFAULTS, {"shift": s}) for s in (0.0, 1.0)]
    assert truths[1] < 0.95 * truths[0]  # shift 1 moves the optimum away from the defaults
    assert moved.fingerprint == {"shift": 1.0}
    assert moved.metrics["throughput"] == pytest.approx(truths[1], rel=0.04)
    set_workload(instance, SHIFT0)
    back = loaded(live, 0.0)
    assert back.metrics["throughput"] == pytest.approx(truths[0], rel=0.04)


def test_a_regressing_config_drops_throughput_and_an_equal_one_does_not(
        live: SyntheticLive) -> None:
    rules = RuleSet.for_target(SyntheticTarget)
    for config in (REGRESSING, EQUAL):
        assert not rules.check({**DEFAULTS, **config}).blocked
    before = mean_throughput(live.observe(3, WINDOW_S))
    live.apply(EQUAL)
    equal = mean_throughput(live.observe(3, WINDOW_S))
    live.apply(REGRESSING)
    worse = live.observe(3, WINDOW_S)
    assert equal / before == pytest.approx(1.0, abs=0.04)
    assert mean_throughput(worse) / before == pytest.approx(0.4346, abs=0.04)
    assert all(w.metrics["latency_ms"] > 2.0 * 2000.0 / before for w in worse)


def test_crash_and_hang_regions_read_as_no_throughput_and_the_server_stays_up(
        live: SyntheticLive) -> None:
    live.apply({"compress": True, "threads": 56})  # the trial target aborts here
    crashed = live.observe(1, WINDOW_S)[0]
    assert crashed.metrics["throughput"] == 0.0
    assert crashed.counters["errors_per_s"] > 2
    live.apply({"compress": False, "threads": 2, "mode": "beta", "y": 500.0})  # it hangs here
    hung = live.observe(1, WINDOW_S)[0]
    assert hung.metrics["throughput"] == 0.0
    assert hung.metrics["latency_ms"] == pytest.approx(1000.0 * hung.seconds)
    # all the server's time under load was stalled (its clock: the window's own seconds, timed
    # by this process, also hold the reads' round trips, ~10 % of 0.5 s on a loaded machine)
    assert hung.counters["busy_fraction"] > 0.5
    assert hung.counters["stalled_fraction"] == pytest.approx(hung.counters["busy_fraction"],
                                                              abs=0.01)
    live.apply(DEFAULTS)
    assert live.observe(2, WINDOW_S)[-1].metrics["throughput"] > 0


def test_an_unreachable_or_misnamed_server_is_a_clear_live_error(tmp_path: Path) -> None:
    gone = SyntheticLive(Connection("synthetic", f"synthetic://{tmp_path}/{SOCKET}"))
    with pytest.raises(LiveError) as error:
        gone.ping()
    assert str(error.value) == (
        f"the synthetic server at {tmp_path}/{SOCKET} is not running (No such file or directory)"
        "; start it with knobflow instance start or python -m targets.synthetic_server serve DIR")
    with pytest.raises(LiveError, match="is not a synthetic URL; write synthetic:///path/to/"):
        SyntheticLive(Connection("synthetic", "redis:///tmp/x.sock"))


def test_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "gone"
    connection = launch("synthetic", data_dir, {"shift": 0.5}, timeout=60.0)
    live = live_system(connection)
    assert loaded(live, 0.5).metrics["throughput"] > 0
    pids = [daemon_pid(data_dir), int((data_dir / "server" / PID).read_text())]
    pids += processes_naming(data_dir)
    assert len(set(pids)) >= 3  # the daemon, the server and the load client
    stop_launched(data_dir)
    assert processes_naming(tmp_path) == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in pids if p)
    assert not data_dir.exists()
