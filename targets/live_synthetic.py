"""The live driver of the synthetic target: a running ``targets.synthetic_server``.

A synthetic live instance is the synthetic target's response surface served by a small process
that keeps its config in a file and counts what it does, so demos, the continual-tuning watch and
the actuation benchmark have a live system that costs nothing to run. This module owns talking to
it as to any live system:

* the connection URL is ``synthetic://`` followed by the server's socket path (no password: the
  socket is 0600 in a 0700 directory, only its owner reaches it);
* ``read_config`` is the server's ``config_get`` (the config it applies, ``buffer_kb`` rounded down
  to 16 KiB as the trial target's ``normalize_config`` says), checked against the spec;
* ``apply`` is ``config_set`` (the server persists it atomically in its ``config.json``); a knob
  with ``restart: true`` is refused without a restart command, and with one it is written to the
  file and the restart command makes the server re-read it;
* a window is the difference of two ``stats`` answers: ``throughput`` (ops/s), ``latency_ms`` (the
  mean per op), the workload's ``shift`` as fingerprint, and the server's CPU, memory, error rate
  and busy and stalled fractions. A config of the crash region gives errors and no ops, one of
  the hang region stalls the load: both read as a throughput of 0, never as a failure here.

Launching (``targets.live_daemon``'s hooks): ``ServedSynthetic`` starts a server in a directory
with the default config, ``python -m targets.live_synthetic load SOCKET WORKLOAD_JSON`` is the load
client for a workload of the synthetic target (it declares ``shift`` and ``noise`` and asks for
work until killed, reconnecting after a restart), and ``python -m targets.live_synthetic restart
SOCKET`` is the restart command a launched instance's connection carries.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from targets.base import BenchmarkError, Measurement, Target
from targets.common.errors import ConfigError, KnobflowError
from targets.common.files import write_text_atomic
from targets.live import ActuationRefused, Connection, LiveError, LiveSystem, Snapshot, Window
from targets.process import (
    Server,
    ServerExited,
    connect_unix,
    kill_from_pid_file,
    last_lines,
    private_dir,
)
from targets.synthetic import SyntheticTarget
from targets.synthetic_server import (
    CONFIG,
    COUNTERS,
    LOG,
    NEEDS_RESTART,
    PID,
    SOCKET,
    request,
)

__all__ = ["SCHEME", "ServedSynthetic", "SyntheticLive", "socket_path"]

SCHEME = "synthetic://"


def socket_path(url: str) -> Path:
    """The socket of a ``synthetic://PATH`` URL (a directory means its ``synthetic.sock``)."""
    if not url.startswith(SCHEME) or len(url) == len(SCHEME):
        raise LiveError(f"'{url}' is not a synthetic URL; write synthetic:///path/to/{SOCKET}")
    path = Path(url[len(SCHEME):])
    return path / SOCKET if path.is_dir() else path


class SyntheticLive(LiveSystem):
    """A running synthetic server, driven through its socket."""

    target: ClassVar[str] = "synthetic"
    observed_metrics: ClassVar[tuple[str, ...]] = ("throughput", "latency_ms")

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self.socket = socket_path(connection.url)

    def _ask(self, cmd: str, **fields: Any) -> dict[str, Any]:
        where = f"the synthetic server at {self.socket}"
        try:
            answer = request(self.socket, {"cmd": cmd, **fields})
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise LiveError(f"{where} is not running ({exc.strerror}); start it with knobflow "
                            "instance start or python -m targets.synthetic_server serve DIR"
                            ) from None
        except TimeoutError:
            raise LiveError(f"{where} did not answer '{cmd}' within 5 s") from None
        except OSError as exc:
            raise LiveError(f"{where} cannot be reached: {exc}") from None
        except ValueError:
            raise LiveError(f"{where} answered '{cmd}' with what is not JSON") from None
        if not answer.get("ok") and "refused" not in answer:
            raise LiveError(f"{where} refused '{cmd}': {answer.get('error')}")
        return answer

    def ping(self) -> str:
        return str(self._ask("ping")["version"])

    def read_config(self) -> dict[str, Any]:
        config = self._ask("config_get")["config"]
        missing = [name for name in self.spec.names if name not in config]
        if missing:
            raise LiveError(f"the synthetic server at {self.socket} does not report "
                            f"{', '.join(missing)}")
        try:
            valid = self.spec.validate_config({n: config[n] for n in self.spec.names},
                                              f"{self.socket} config_get")
        except ConfigError as exc:
            raise LiveError(str(exc)) from None
        return dict(valid)

    def runtime_refusals(self, changes: Mapping[str, Any]) -> dict[str, str]:
        reasons: dict[str, str] = {}
        for name, value in changes.items():
            if name not in self.spec:
                reasons[name] = "the synthetic system has no such knob (see its spec)"
            else:
                problem = self.spec[name].problem_with(self.spec[name].coerce(value))
                if problem:
                    reasons[name] = f"the spec refuses it: {problem}"
        if reasons:
            return reasons
        answer = self._ask("config_set", changes=_plain(changes), dry_run=True,
                           pending_restart=bool(self.connection.restart_command))
        for name, why in answer.get("refused", {}).items():
            reasons[name] = (
                "needs a restart (restart: true in targets/specs/synthetic.yaml) and this "
                "instance has no restart command; add one or leave the knob out"
                if why == NEEDS_RESTART else f"the system refuses it: {why}")
        return reasons

    def apply(self, changes: Mapping[str, Any]) -> None:
        reasons = self.runtime_refusals(changes)
        if reasons:
            raise ActuationRefused(self.connection.url, reasons)
        restart = bool(self.connection.restart_command)
        answer = self._ask("config_set", changes=_plain(changes), pending_restart=restart)
        if not answer.get("ok"):  # it changed between the check and the change
            raise ActuationRefused(self.connection.url, answer.get("refused", {}))
        if answer.get("pending"):
            self.restart()

    def snapshot(self) -> Snapshot:
        stats = self._ask("stats")
        workload = stats.get("workload") or {}
        values = {k: float(stats["counters"][k]) for k in COUNTERS}
        values.update(cpu_s=float(stats["cpu_s"]), boot=float(stats["boot"]),
                      peak_rss_mb=float(stats["peak_rss_mb"]), threads=float(stats["threads"]),
                      shift_now=float(workload.get("shift", 0.0)))
        return Snapshot(t=time.monotonic(), wall=time.time(), values=values)

    def window(self, first: Snapshot, last: Snapshot) -> Window:
        seconds = max(last.t - first.t, 1e-9)
        now = last.values
        # a restart in between zeroed the counters: count from zero
        was = first.values if first.values["boot"] == now["boot"] else dict.fromkeys(now, 0.0)
        d = {k: max(0.0, now[k] - was[k]) for k in (*COUNTERS, "cpu_s")}
        ops, busy = d["ops"], d["busy_s"]
        # nothing done under load: a waiting request waited the whole window at least
        latency = (d["latency_ms_sum"] / ops if ops > 0
                   else 1000.0 * seconds if busy > 0 else 0.0)
        shift = d["shift_s"] / busy if busy > 0 else now["shift_now"]
        return Window(
            start=first.wall, seconds=seconds,
            metrics={"throughput": ops / seconds, "latency_ms": latency},
            fingerprint={"shift": shift},
            counters={"ops": ops, "errors_per_s": d["errors"] / seconds,
                      "busy_fraction": min(1.0, busy / seconds),
                      "stalled_fraction": min(1.0, d["stalled_s"] / seconds),
                      "server_cpu_s_per_s": d["cpu_s"] / seconds,
                      "server_peak_rss_mb": now["peak_rss_mb"], "threads": now["threads"]})

    # -- launching ------------------------------------------------------------------------------
    @classmethod
    def launch_target(cls, data_dir: Path, workload: Mapping[str, Any]) -> Target:
        served = ServedSynthetic(data_dir, SyntheticTarget.parse_workload(workload))
        served.start(SyntheticTarget.knob_spec().defaults())
        return served

    @classmethod
    def connection_for(cls, target: Target, data_dir: Path) -> Connection:
        sock = Path(data_dir).resolve() / SOCKET
        restart = shlex.join([sys.executable, "-m", "targets.live_synthetic", "restart",
                              str(sock)])
        return Connection(target=cls.target, url=f"{SCHEME}{sock}", restart_command=restart)

    @classmethod
    def load_command(cls, target: Target, workload: Mapping[str, Any]
                     ) -> tuple[list[str], dict[str, str] | None]:
        parsed = SyntheticTarget.parse_workload(workload)
        sock = Path(target.data_dir).resolve() / SOCKET
        return ([sys.executable, "-m", "targets.live_synthetic", "load", str(sock),
                 json.dumps(parsed, sort_keys=True)], None)

    @classmethod
    def remove_launched(cls, data_dir: Path) -> None:
        ServedSynthetic.cleanup(data_dir)


def _plain(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` as JSON can carry them (numpy scalars and the like become Python's)."""
    return {str(k): v.item() if hasattr(v, "item") else v for k, v in changes.items()}


# -- the launched system, its load client and its restart command ----------------------------
def run_load(sock: Path, workload: Mapping[str, Any]) -> int:
    """The load client: declare ``workload`` and ask for work until killed; reconnect after a
    restart; give up when the server has not answered for 10 s."""
    lost_since: float | None = None
    while True:
        try:
            with connect_unix(sock, timeout=30.0) as conn, conn.makefile("rwb") as stream:
                lost_since = None
                stream.write(json.dumps({"cmd": "workload", "workload": dict(workload)}).encode()
                             + b"\n")
                stream.flush()
                answer = json.loads(stream.readline() or b"{}")
                if not answer.get("ok"):
                    print(f"synthetic load: {answer.get('error')}", file=sys.stderr, flush=True)
                    return 2
                while True:
                    stream.write(b'{"cmd": "work"}\n')
                    stream.flush()
                    answer = json.loads(stream.readline() or b"{}")
                    if not answer or answer.get("error") == "the server restarted":
                        break  # connect again: a crash region's errors are only counted
        except (OSError, ValueError):
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 10.0:
                print(f"synthetic load: no server at {sock}", file=sys.stderr, flush=True)
                return 1
        time.sleep(0.1)


def restart_command(sock: Path) -> int:
    """The restart command: ask the server to restart; 0 when it did."""
    try:
        answer = request(sock, {"cmd": "restart"}, timeout=30.0)
    except (OSError, ValueError) as exc:
        print(f"synthetic restart: {sock}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


class ServedSynthetic(SyntheticTarget):
    """The synthetic system served from ``data_dir`` (``start`` writes the config and starts the
    server, ``stop`` ends it): what ``targets.live_synthetic`` launches. It is measured live,
    with observe windows, not by ``run``."""

    def __init__(self, data_dir: Path, workload: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(data_dir, workload, seed)
        self.server: Server | None = None

    @property
    def socket(self) -> Path:
        return self.data_dir / SOCKET

    def start(self, config: Mapping[str, Any] | None = None) -> None:
        """Start the server with ``config`` written to its file (None: the file as it is)."""
        private_dir(self.data_dir)
        if config is not None:
            write_text_atomic(self.data_dir / CONFIG, json.dumps(dict(config), sort_keys=True))
        self.server = Server([sys.executable, "-m", "targets.synthetic_server", "serve",
                              str(self.data_dir)], log_path=self.data_dir / LOG,
                             pid_file=self.data_dir / PID, cwd=self.data_dir)
        try:
            self.server.start(self._ready, timeout=30.0)
        except ServerExited as exc:
            self.server = None
            raise KnobflowError(f"the synthetic server in {self.data_dir} {exc}: "
                                f"{last_lines(exc.log, n=2)}") from None

    def _ready(self) -> bool:
        try:
            return bool(request(self.socket, {"cmd": "ping"}, timeout=1.0).get("ok"))
        except (OSError, ValueError):
            return False

    def run(self) -> Measurement:
        raise BenchmarkError("a served synthetic system is measured live (observe), not by run()")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @classmethod
    def cleanup(cls, data_dir: Path) -> None:
        kill_from_pid_file(Path(data_dir) / PID, must_contain=str(Path(data_dir).resolve()))
        (Path(data_dir) / SOCKET).unlink(missing_ok=True)

def main(argv: list[str]) -> int:
    """``load SOCKET WORKLOAD_JSON`` (the load client) or ``restart SOCKET`` (the restart
    command); the server itself is ``python -m targets.synthetic_server serve DIR``."""
    if len(argv) == 3 and argv[0] == "load":
        try:
            workload = SyntheticTarget.parse_workload(json.loads(argv[2]), "load workload")
        except (KnobflowError, ValueError, AttributeError) as exc:
            print(f"synthetic load: {exc}", file=sys.stderr)
            return 2
        return run_load(Path(argv[1]), workload)
    if len(argv) == 2 and argv[0] == "restart":
        return restart_command(Path(argv[1]))
    print("usage: python -m targets.live_synthetic load SOCKET WORKLOAD_JSON | restart SOCKET",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
