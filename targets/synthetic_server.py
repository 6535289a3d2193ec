"""A live synthetic system: the synthetic target's response surface served by a small process.

Trials of the synthetic target compute their throughput in-process; a live instance (a demo, the
continual-tuning watch, the actuation benchmark) needs a system that runs on its own, keeps its
config and counts what it does. This module is that system, standard library only:

* ``python -m targets.synthetic_server serve DIR``: the server. It listens on ``DIR/synthetic.sock``
  only (a Unix socket, 0600, in a 0700 directory; no TCP port), holds its config in
  ``DIR/config.json`` (written with the spec's defaults when missing, re-read at every start, and
  replaced atomically by every change), and counts ops done, busy and stalled seconds, errors, the
  latency sum and the workload's shift. An engine thread ticks every ``TICK_S``: while a load is
  attached, the ops advance at ``SyntheticTarget.true_value(config, workload)`` times the
  per-tick multiplicative noise of the workload's ``noise``. In the crash region every request of
  the load fails (counted as errors, no ops); in the hang region the load's requests wait and no
  op is done; a refused config is refused by ``config_set``. The server itself stays up.
* its ``restart`` request (``python -m targets.live_synthetic restart SOCKET``, the restart
  command): the server re-reads its config file (taking the knobs that need a restart), resets
  its counters (a new ``boot``) and drops its clients, as a restarted system would.

The protocol is one JSON object per line each way: ``{"cmd": "ping" | "config_get" |
"config_set" | "restart" | "stats" | "workload" | "work", ...}``, answered ``{"ok": true, ...}`` or
``{"ok": false, "error": ..., "refused": {knob: why}}``. A load declares its ``workload`` and
then sends ``work`` requests in a loop; each is answered after the next tick. The driver, the
launcher, the load client and the restart command are ``targets.live_synthetic``.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from targets.common.errors import KnobflowError
from targets.common.files import write_text_atomic
from targets.process import connect_unix
from targets.synthetic import SyntheticTarget, crashes, hangs, noisy, refusal

SOCKET = "synthetic.sock"
CONFIG = "config.json"
PID = "server.pid"
LOG = "server.log"
VERSION = "synthetic-live 1"
#: Seconds between two advances of the counters (one noise draw each).
TICK_S = 0.1
#: What ``config_set`` says of a knob that needs a restart.
NEEDS_RESTART = "needs a restart of the system (restart: true)"
#: The cumulative counters ``stats`` reports (all start at 0 at every boot).
COUNTERS = ("ops", "busy_s", "stalled_s", "errors", "latency_ms_sum", "shift_s", "requests")


def request(sock: Path, message: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the server at ``sock`` and return its answer (``OSError`` when it
    cannot be reached or does not answer, ``ValueError`` when the answer is not JSON)."""
    with connect_unix(sock, timeout=timeout) as conn:
        conn.sendall(json.dumps(dict(message)).encode() + b"\n")
        with conn.makefile("rb") as stream:
            line = stream.readline()
    if not line:
        raise ConnectionResetError(f"{sock}: the server closed the connection without answering")
    answer: dict[str, Any] = json.loads(line)
    return answer


class Engine:
    """The system's state: its running config, what waits for a restart, the attached loads and
    the cumulative counters. Every method takes the lock."""

    def __init__(self, data_dir: Path) -> None:
        self.spec = SyntheticTarget.knob_spec()
        self.path = data_dir / CONFIG
        self.cond = threading.Condition()
        self.rng = random.Random()
        self.loads: dict[int, tuple[float, dict[str, Any]]] = {}
        self.tick = 0
        self.tick_state = "idle"
        self.factor = 1.0  # the current tick's noise
        self.last = time.monotonic()  # when the counters were last advanced
        self.stopping = False
        self.config: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self._boot()

    def _boot(self) -> None:
        """Read the config file (written with the defaults when missing); zero the counters."""
        if self.path.exists():
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            config = self.spec.full_config(self.spec.validate_config(raw, str(self.path)))
        else:
            config = self.spec.defaults()
        refused = refusal(config)
        if refused:
            raise KnobflowError(f"{self.path}: {refused}")
        self.config, self.pending = dict(config), {}
        self._persist()
        self.boot = time.time()
        self.counters = dict.fromkeys(COUNTERS, 0.0)
        self.last = time.monotonic()

    def _persist(self) -> None:
        text = json.dumps({**self.config, **self.pending}, indent=1, sort_keys=True)
        write_text_atomic(self.path, text + "\n")

    def effective(self) -> dict[str, Any]:
        return SyntheticTarget.normalize_config(self.config)

    def config_set(self, changes: Mapping[str, Any], dry_run: bool,
                   pending_restart: bool) -> dict[str, Any]:
        """Check ``changes`` and apply them: knobs that need a restart only into the config file
        (``pending_restart``), and only when their effective value changes; others at once."""
        with self.cond:
            refused, runtime, later = self._check(changes, pending_restart)
            if refused:
                return {"ok": False, "error": "config refused", "refused": refused}
            if not dry_run:
                self.catch_up()  # what was done so far, at the old config's rate
                self.config.update(runtime)
                for name in runtime:
                    self.pending.pop(name, None)
                self.pending.update(later)
                self._persist()
            return {"ok": True, "config": self.effective(), "pending": dict(self.pending)}

    def _check(self, changes: Mapping[str, Any], pending_restart: bool
               ) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        refused: dict[str, str] = {}
        runtime: dict[str, Any] = {}
        later: dict[str, Any] = {}
        for name, raw in changes.items():
            if name not in self.spec:
                refused[name] = "unknown knob"
                continue
            knob = self.spec[name]
            value = knob.coerce(raw)
            problem = knob.problem_with(value)
            if problem:
                refused[name] = problem
            elif not knob.restart or self._same_effect(name, value):
                runtime[name] = value  # a restart knob left as it is takes no restart
            elif pending_restart:
                later[name] = value
            else:
                refused[name] = NEEDS_RESTART
        if not refused:
            said = refusal({**self.config, **runtime})
            if said:
                refused = {k: said for k in ("mode", "threads") if k in changes} or {"mode": said}
        return refused, runtime, later

    def _same_effect(self, name: str, value: Any) -> bool:
        now = self.effective()[name]
        return bool(SyntheticTarget.normalize_config({**self.config, name: value})[name] == now)

    def restart(self) -> dict[str, Any]:
        """What a restart does: re-read the config file, zero the counters, drop the clients."""
        with self.cond:
            self._boot()
            self.loads.clear()
            self.cond.notify_all()
            return {"ok": True, "config": self.effective(), "boot": self.boot}

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self.cond:
            self.catch_up()
            workload = self._workload()
            return {"ok": True, "boot": self.boot, "counters": dict(self.counters),
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                    "peak_rss_mb": usage.ru_maxrss / 1024.0,
                    "threads": int(self.config["threads"]), "state": self.tick_state,
                    "workload": workload}

    def _workload(self) -> dict[str, Any] | None:
        if not self.loads:
            return None
        return max(self.loads.values(), key=lambda item: item[0])[1]

    def attach(self, key: int, workload: Mapping[str, Any] | None) -> None:
        """A load declares its workload (None: it left)."""
        with self.cond:
            self.catch_up()
            if workload is None:
                self.loads.pop(key, None)
            else:
                self.loads[key] = (time.monotonic(), dict(workload))

    def run_ticks(self) -> None:
        """The engine thread: every ``TICK_S`` the counters advance and a new tick begins, with
        its own draw of the workload's noise."""
        while not self.stopping:
            time.sleep(TICK_S)
            with self.cond:
                self.catch_up()
                workload = self._workload()
                noise = float(workload["noise"]) if workload else 0.0
                self.factor = noisy(1.0, noise, self.rng)
                self.tick += 1
                self.cond.notify_all()

    def catch_up(self) -> None:
        """Advance the counters to now (at every tick, and before anything reads or changes
        them, so a window ends exactly when it is read)."""
        now = time.monotonic()
        dt, self.last = max(0.0, now - self.last), now
        workload = self._workload()
        if workload is None:
            self.tick_state = "idle"
            return
        c = self.counters
        c["busy_s"] += dt
        c["shift_s"] += dt * float(workload["shift"])
        cfg = self.effective()
        if crashes(cfg):
            self.tick_state = "crashed"
        elif hangs(cfg):
            self.tick_state = "hung"
            c["stalled_s"] += dt
        else:
            self.tick_state = "running"
            rate = SyntheticTarget.true_value(cfg, workload) * self.factor
            ops = rate * dt
            c["ops"] += ops
            # each op takes threads / rate seconds (Little's law, as the trial target reports)
            c["latency_ms_sum"] += ops * 1000.0 * int(cfg["threads"]) / rate

    def work(self, boot: float) -> dict[str, Any]:
        """A load's request: wait for the next tick that serves it; its ops or its error."""
        with self.cond:
            self.counters["requests"] += 1
            seen = self.tick
            while not self.stopping and self.boot == boot and (
                    self.tick == seen or self.tick_state == "hung"):
                self.cond.wait(1.0)
            if self.boot != boot or self.stopping:
                return {"ok": False, "error": "the server restarted"}
            if self.tick_state == "crashed":
                self.counters["errors"] += 1
                return {"ok": False, "error": "worker crashed: SIGABRT"}
            return {"ok": True, "tick": self.tick}


class _Handler(socketserver.StreamRequestHandler):
    """One client connection: one JSON request per line, one JSON answer per line."""

    server: _UnixServer

    def handle(self) -> None:
        engine = self.server.engine
        boot = engine.boot
        try:
            for line in self.rfile:
                answer = self._answer(engine, line, boot)
                self.wfile.write(json.dumps(answer).encode() + b"\n")
                self.wfile.flush()
                if answer.get("error") == "the server restarted":
                    return
        except (OSError, ValueError):
            return
        finally:
            engine.attach(id(self), None)

    def _answer(self, engine: Engine, line: bytes, boot: float) -> dict[str, Any]:
        try:
            req = json.loads(line)
            cmd = req["cmd"]
            if cmd == "ping":
                return {"ok": True, "version": VERSION, "boot": engine.boot}
            if cmd == "config_get":
                with engine.cond:
                    return {"ok": True, "config": engine.effective(),
                            "pending": dict(engine.pending)}
            if cmd == "config_set":
                return engine.config_set(dict(req["changes"]), bool(req.get("dry_run")),
                                         bool(req.get("pending_restart")))
            if cmd == "restart":
                return engine.restart()
            if cmd == "stats":
                return engine.stats()
            if cmd == "workload":
                workload = SyntheticTarget.parse_workload(req["workload"], "workload request")
                engine.attach(id(self), workload)
                return {"ok": True, "workload": workload}
            if cmd == "work":
                return engine.work(boot)
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        except (KnobflowError, KeyError, TypeError, ValueError, OSError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    engine: Engine


def serve(data_dir: Path) -> int:
    """Run the server in ``data_dir`` until SIGTERM or SIGINT."""
    data_dir = data_dir.resolve()
    os.chdir(data_dir)  # the socket is bound by its relative name: any depth of directory
    try:
        engine = Engine(data_dir)
    except (KnobflowError, ValueError, OSError) as exc:
        print(f"synthetic server: cannot start: {exc}", flush=True)
        return 2
    Path(SOCKET).unlink(missing_ok=True)
    server = _UnixServer(SOCKET, _Handler)
    os.chmod(SOCKET, 0o600)
    server.engine = engine
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    threads = [threading.Thread(target=engine.run_ticks, daemon=True),
               threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True)]
    for thread in threads:
        thread.start()
    print(f"synthetic server: ready on {data_dir / SOCKET}: {engine.effective()}", flush=True)
    done.wait()
    engine.stopping = True
    server.shutdown()
    server.server_close()
    Path(SOCKET).unlink(missing_ok=True)
    print("synthetic server: stopped", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        return serve(Path(argv[1]))
    print("usage: python -m targets.synthetic_server serve DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
