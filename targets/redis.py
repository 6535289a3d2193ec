"""The redis target: a private redis-server per instance, measured with redis-benchmark.

It owns the instance's ``redis.conf`` (written into the data directory at every start, 0600),
starting redis-server in the foreground, reading every knob back with ``redis-cli CONFIG GET``,
running redis-benchmark and parsing its CSV, classifying failures from Redis's own output, and
ending the server with ``SHUTDOWN NOSAVE`` (and its leftovers, after a killed trial, through the
pid file).

The server admits only knobflow: it listens on no TCP port at all (``port 0``), only on a Unix
socket in the instance's ``sock`` directory (0700, and the socket itself ``unixsocketperm 700``),
so only the user running knobflow (and root) can connect. A password (``requirepass``) cannot do
this job: redis-benchmark 7.0 takes one only as ``-a`` on its command line, which every local
user can read in /proc (it ignores ``REDISCLI_AUTH``), and Redis asks it of socket clients too.
Clients run in the data directory and name the socket by a relative path, so a deep data
directory never exceeds the 107 bytes of a socket path.

A knob's name is Redis's directive name with '_' for '-' (knob names must be identifiers):
``maxmemory_policy`` is written as ``maxmemory-policy``. Any knob is passed through that way, so a
directive Redis does not know is refused by Redis itself ("Bad directive"). Persistence is off
unless knobs turn it on (``save ""``, ``appendonly no``); snapshot and AOF files are removed
before and after every trial, so every trial starts from an empty server.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from targets.base import (
    MAXIMIZE,
    MINIMIZE,
    BenchmarkError,
    ConfigRefused,
    ContractExamples,
    FailureClass,
    Measurement,
    Target,
    TrialFailed,
)
from targets.common.errors import WorkloadError, did_you_mean
from targets.process import (
    Server,
    ServerExited,
    connect_unix,
    kill_from_pid_file,
    last_lines,
    private_dir,
    run_client,
    write_private,
)

CONF_NAME = "redis.conf"
LOG_NAME = "redis.log"
PID_NAME = "redis.pid"
#: The server's only listener, relative to the data directory (its working directory and the
#: clients'); the directory is 0700.
SOCKET = "sock/redis.sock"
#: What Redis persists into the data directory; removed before and after every trial.
PERSISTENCE = ("dump.rdb", "appendonlydir")
#: How each knob of specs/redis.yaml reads back from CONFIG GET (a test keeps them in step).
KNOB_KINDS: dict[str, str] = {
    "maxmemory": "int", "maxmemory_policy": "str", "maxmemory_samples": "int",
    "maxmemory_eviction_tenacity": "int", "io_threads": "int", "io_threads_do_reads": "bool",
    "hz": "int", "dynamic_hz": "bool", "appendonly": "bool", "appendfsync": "str",
    "save": "str", "rdbcompression": "bool", "lazyfree_lazy_eviction": "bool",
    "lazyfree_lazy_server_del": "bool", "active_expire_effort": "int", "activerehashing": "bool",
    "jemalloc_bg_thread": "bool", "tcp_backlog": "int", "hash_max_listpack_entries": "int",
    "list_max_listpack_size": "int", "zset_max_listpack_entries": "int",
}
#: Directives the target sets itself: where Redis listens, writes and logs.
MANAGED = frozenset({
    "port", "bind", "dir", "daemonize", "logfile", "pidfile", "unixsocket", "include",
    "supervised", "proc_title_template", "set_proc_title", "dbfilename", "appenddirname",
    "tls_port", "protected_mode", "unixsocketperm", "requirepass", "user", "aclfile",
})
#: Persistence stays off unless a knob turns it on.
_BASE_KNOBS: dict[str, Any] = {"save": "", "appendonly": False}
#: redis-benchmark 7.0's tests (``-t``); "ping" and "lrange" select a group.
TESTS = (
    "ping", "ping_inline", "ping_mbulk", "set", "get", "incr", "lpush", "rpush", "lpop", "rpop",
    "sadd", "hset", "spop", "zadd", "zpopmin", "lrange", "lrange_100", "lrange_300",
    "lrange_500", "lrange_600", "mset",
)
_READ_ONLY_TESTS = frozenset(t for t in TESTS if t.startswith(("ping", "lrange")) or t == "get")
_BARE = re.compile(r"^[A-Za-z0-9._:/+-]+$")
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})
_OOM = ("OOM command not allowed", "Out of memory", "Cannot allocate memory")
_IO = ("MISCONF", "No space left on device", "Input/output error", "Read-only file system",
       "Error writing to the AOF", "Permission denied", "Disk quota exceeded")
_CLIENT_TIMEOUT_S = 3600.0  # the tuner's hard timeout is the one that counts
_LATENCIES = ("avg", "p50", "p95", "p99")


def directive(knob: str) -> str:
    """Redis's name of a knob: '_' becomes '-'."""
    return knob.replace("_", "-")


def conf_value(value: Any) -> str:
    """A value as redis.conf reads it: yes/no for booleans, plain words bare, the rest quoted."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if _BARE.match(text):
        return text
    return '"' + text.translate(_ESCAPES) + '"'


def conf_lines(config: Mapping[str, Any]) -> list[str]:
    """The knobs of ``config`` as redis.conf directives (one line per knob)."""
    return [f"{directive(name)} {conf_value(value)}" for name, value in config.items()]


def from_redis(kind: str, text: str) -> Any:
    """A CONFIG GET value in the spec's type (the text itself when it does not convert)."""
    if kind == "bool" and text in ("yes", "no"):
        return text == "yes"
    if kind == "int":
        with contextlib.suppress(ValueError):
            return int(text)
    return text


def classify(text: str) -> FailureClass | None:
    """The failure class Redis's own words in ``text`` name, if any."""
    for failure, words in ((FailureClass.OUT_OF_MEMORY, _OOM), (FailureClass.IO_ERROR, _IO)):
        if any(w in text for w in words):
            return failure
    return None


def parse_csv(text: str) -> list[dict[str, Any]]:
    """The result rows of ``redis-benchmark --csv``: test, rps and latencies in ms."""
    rows = []
    for rec in csv.DictReader(io.StringIO(text)):
        try:
            row = {"test": rec["test"].split(" (")[0].lower(), "rps": float(rec["rps"])}
            for name in (*_LATENCIES, "max"):
                row[f"latency_{name}_ms"] = float(rec[f"{name}_latency_ms"])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a partial line of a benchmark that died
        rows.append(row)
    return rows


def parse_info(text: str) -> dict[str, float]:
    """Counters worth keeping from ``INFO``: memory, hits, evictions, rejections, forks, keys."""
    fields = dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
    counters: dict[str, float] = {}
    for key in ("used_memory_peak", "used_memory", "keyspace_hits", "keyspace_misses",
                "evicted_keys", "rejected_connections", "total_commands_processed",
                "total_forks", "mem_fragmentation_ratio", "aof_rewrites"):
        with contextlib.suppress(KeyError, ValueError):
            counters[f"redis_{key}"] = float(fields[key])
    match = re.search(r"keys=(\d+)", fields.get("db0", ""))
    counters["redis_keys"] = float(match.group(1)) if match else 0.0
    return counters


def _how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class RedisTarget(Target):
    """redis-server 7 (Debian redis-server), one server per instance, on 127.0.0.1 only."""

    name: ClassVar[str] = "redis"
    native_suffix: ClassVar[str | None] = ".conf"
    workload_defaults: ClassVar[Mapping[str, Any]] = {
        "tests": "set,get",  # redis-benchmark -t: comma-separated tests, run one after another
        "requests": 1_000_000,  # -n: requests of each test (~1 s each here)
        "clients": 20,  # -c: parallel connections of the (single-threaded) client
        # -P: requests per round trip. Without pipelining the client saturates its core first
        # (client 0.96 core, server 0.75): the client would be measured. At 16 the server is.
        "pipeline": 16,
        "data_size": 64,  # -d: bytes per SET/GET value
        "keyspace": 100000,  # -r: keys drawn at random from this many
    }
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {
        "requests": (1, 100_000_000), "clients": (1, 1000), "pipeline": (1, 1000),
        "data_size": (1, 1_048_576), "keyspace": (1, 1_000_000_000),
    }
    metrics: ClassVar[Mapping[str, str]] = {
        # all requests / the tests' summed run time: the harmonic mean of the tests' rps
        "rps": MAXIMIZE,
        # means over the tests of each test's figure (every test runs the same requests)
        "latency_avg_ms": MINIMIZE, "latency_p50_ms": MINIMIZE,
        "latency_p95_ms": MINIMIZE, "latency_p99_ms": MINIMIZE,
    }
    default_objective: ClassVar[str] = "rps"
    trial_timeout_s: ClassVar[float] = 30.0

    def __init__(self, data_dir: Path, workload: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(Path(data_dir).resolve(), workload, seed)
        self._server: Server | None = None
        self._requested: dict[str, Any] = {}
        self._effective: dict[str, Any] = {}

    @property
    def socket(self) -> Path:
        """The Unix socket the server listens on (its only listener)."""
        return self.data_dir / SOCKET

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any]) -> None:
        """Write redis.conf with ``config``, start redis-server on its private socket, read the
        knobs back."""
        managed = sorted(k for k in config if k in MANAGED)
        if managed:
            raise ConfigRefused(f"knob(s) {', '.join(managed)} are set by the redis target itself")
        self.stop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cleanup(self.data_dir)  # a server a killed trial left, and its files
        self._requested = dict(config)
        private_dir(self.socket.parent)
        (self.data_dir / LOG_NAME).unlink(missing_ok=True)
        write_private(self.data_dir / CONF_NAME, self._conf_text(config))
        server = Server(["redis-server", str(self.data_dir / CONF_NAME)], cwd=self.data_dir,
                        log_path=self.data_dir / LOG_NAME, pid_file=self.data_dir / PID_NAME)
        try:
            server.start(self._ready, timeout=15.0)
        except ServerExited as exc:
            raise self._start_failure(exc) from None
        self._server = server
        self._effective = self._read_back(config)

    def run(self) -> Measurement:
        """Run redis-benchmark once against the server; parse its CSV rows into metrics."""
        server = self._server
        if server is None:
            raise BenchmarkError("run() was called before start()")
        started = time.monotonic()
        w = {**self.workload_defaults, **self.workload}
        cmd = ["redis-benchmark", "-s", SOCKET, "-t", str(w["tests"]),
               "-n", str(w["requests"]), "-c", str(w["clients"]), "-P", str(w["pipeline"]),
               "-d", str(w["data_size"]), "-r", str(w["keyspace"]), "--csv"]
        # redis-benchmark retries forever against a dead server: end it when the server dies
        client = run_client(cmd, timeout=_CLIENT_TIMEOUT_S, log_dir=self.data_dir,
                            name="benchmark", cwd=self.data_dir, abort=lambda: not server.running)
        server_usage = server.usage()
        if not server.running:
            code = server.stop()
            log = server.log_text()
            raise TrialFailed(
                classify(log) or FailureClass.CRASH,
                f"redis-server {_how_it_ended(code)} during the benchmark: "
                f"{last_lines(log, n=3) or 'no log lines'}",
            )
        failure = classify(client.stderr)
        if failure is not None:
            raise TrialFailed(failure, f"redis-benchmark: {last_lines(client.stderr, n=2)}")
        if client.timed_out:
            raise TrialFailed(FailureClass.TIMEOUT,
                              f"redis-benchmark did not finish within {_CLIENT_TIMEOUT_S:g} s")
        rows = parse_csv(client.stdout)
        if not rows or client.returncode != 0:
            what = "printed no result rows" if not rows else "failed"
            raise BenchmarkError(
                f"redis-benchmark {what} ({_how_it_ended(client.returncode)}): "
                f"{last_lines(client.stderr or client.stdout, n=3) or 'no output'}"
            )
        metrics, samples = self._summarize(rows, int(w["requests"]))
        counters = {**server_usage.counters("server"), **client.usage.counters("client"),
                    "client_wall_s": round(client.wall_s, 4)}
        with contextlib.suppress(BenchmarkError, subprocess.SubprocessError, OSError):
            counters.update(parse_info(self._cli("INFO", "all", timeout=5.0)))
        return Measurement(metrics=metrics, effective_config=dict(self._effective), samples=samples,
                           counters=counters, log=self._log_lines(rows, server, client.stderr),
                           duration_s=time.monotonic() - started)

    def stop(self) -> None:
        """``SHUTDOWN NOSAVE`` (no snapshot on the way out), then make sure the server is gone."""
        server, self._server = self._server, None
        if server is None:
            return
        if server.running and server.proc is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._cli("SHUTDOWN", "NOSAVE", timeout=5.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=5.0)
        server.stop(timeout=5.0)  # SIGTERM and then SIGKILL if it is still there
        self._remove_persistence(self.data_dir)

    @classmethod
    def cleanup(cls, data_dir: Path) -> None:
        """After a killed trial: end the server the pid file names, remove persisted data and
        the socket it left."""
        data_dir = Path(data_dir).resolve()
        kill_from_pid_file(data_dir / PID_NAME, must_contain=str(data_dir))
        cls._remove_persistence(data_dir)
        with contextlib.suppress(OSError):
            (data_dir / SOCKET).unlink(missing_ok=True)

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        return {"redis": ContractExamples(
            workload={"requests": 500_000},  # ~1 s of benchmark
            refused={"maxmemory_policy": "bogus"},
            hang={"io_threads": 4},  # busy-waiting I/O threads on 2 shared cores: ~36k rps, not ~1M
            timeout_s=10.0,
            requires=("redis-server", "redis-benchmark", "redis-cli"),
        )}

    @classmethod
    def render_native(cls, config: Mapping[str, Any]) -> str:
        """The config as redis.conf lines, under Redis's own (hyphenated) directive names."""
        return "\n".join([
            "# knobflow redis config: Redis 7.0 directives (knob maxmemory_policy is",
            "# maxmemory-policy). Add these lines to redis.conf, or pass each as --name value.",
            *conf_lines(config),
        ]) + "\n"

    # -- workload -------------------------------------------------------------------------------
    @classmethod
    def parse_workload(cls, values: Mapping[str, Any], source: str = "workload") -> dict[str, Any]:
        """The base checks, and every test of ``tests`` one that redis-benchmark 7.0 runs."""
        workload = super().parse_workload(values, source)
        tests = [t.strip().lower() for t in str(workload["tests"]).split(",") if t.strip()]
        for test in tests or [""]:
            if test not in TESTS:
                raise WorkloadError(
                    f"{source}: workload parameter 'tests' holds {test!r}, not a redis-benchmark "
                    f"test{did_you_mean(test, TESTS)}; tests are {', '.join(TESTS)}"
                )
        workload["tests"] = ",".join(tests)
        return workload

    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        """Share of read-only tests, clients, pipeline, value size, key count (not requests)."""
        w = {**cls.workload_defaults, **workload}
        tests = [t for t in str(w["tests"]).split(",") if t]
        reads = sum(1 for t in tests if t in _READ_ONLY_TESTS)
        return {
            "read_ratio": reads / len(tests) if tests else 0.0, "tests": float(len(tests)),
            "clients": float(w["clients"]), "pipeline": float(w["pipeline"]),
            "value_size": float(w["data_size"]), "keys": float(w["keyspace"]),
        }

    # -- helpers --------------------------------------------------------------------------------
    def _conf_text(self, config: Mapping[str, Any]) -> str:
        infra = [
            "# written by knobflow for one trial; the knobs follow the instance's settings",
            # no TCP listener: only a socket in a 0700 directory (relative to dir, Redis's cwd)
            "port 0", "bind 127.0.0.1", f"dir {conf_value(str(self.data_dir))}",
            f"unixsocket {SOCKET}", "unixsocketperm 700",
            "daemonize no", 'logfile ""', "protected-mode yes",
            # the title keeps the config path (and so the data directory) visible to cleanup()
            'proc-title-template "{title} {listen-addr} {server-mode} {config-file}"',
        ]
        return "\n".join(infra + conf_lines({**_BASE_KNOBS, **config})) + "\n"

    def _ready(self) -> bool:
        try:
            with connect_unix(self.socket, timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _cli(self, *args: str, timeout: float = 10.0) -> str:
        done = subprocess.run(
            ["redis-cli", "-s", SOCKET, "--raw", *args], cwd=self.data_dir,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise BenchmarkError(f"redis-cli {' '.join(args)}: {last_lines(done.stderr)}")
        return done.stdout

    def _read_back(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """CONFIG GET of every spec knob and every requested one, in the spec's types."""
        kinds = dict(KNOB_KINDS)
        for name, value in config.items():  # a directive the spec does not list: by its value
            kinds.setdefault(name, "bool" if isinstance(value, bool) else
                             "int" if isinstance(value, int) else "str")
        text = self._cli("CONFIG", "GET", *(directive(k) for k in kinds))
        lines = text.split("\n")
        got = dict(zip(lines[0::2], lines[1::2], strict=False))
        return {k: from_redis(kind, got[directive(k)]) for k, kind in kinds.items()
                if directive(k) in got}

    def _start_failure(self, exc: ServerExited) -> Exception:
        """A start-up failure as the contract's exception: refused config, OOM, I/O or crash."""
        log = exc.log
        if "FATAL CONFIG FILE ERROR" in log:
            fatal = log[log.index("*** FATAL CONFIG FILE ERROR"):]
            message = last_lines(fatal, n=4)
            match = re.search(r">>> '([A-Za-z0-9-]+)", fatal)
            if match:
                message += f" (knob '{match.group(1).replace('-', '_')}')"
            return ConfigRefused(message)
        detail = last_lines(log, n=3) or "no log lines"
        return TrialFailed(classify(log) or FailureClass.CRASH,
                           f"redis-server {exc} during start-up: {detail}")

    @staticmethod
    def _summarize(
        rows: list[dict[str, Any]], requests: int
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The metrics, and one sample per test (``t``: when it ended, the tests run in turn)."""
        samples, t = [], 0.0
        for r in rows:
            t += requests / r["rps"] if r["rps"] > 0 else 0.0
            samples.append({"t": round(t, 6), "phase": r["test"], "ops": requests,
                            "ops_per_s": r["rps"],
                            **{k: v for k, v in r.items() if k.startswith("latency_")}})
        metrics = {"rps": len(rows) * requests / t if t > 0 else 0.0}
        for name in _LATENCIES:
            metrics[f"latency_{name}_ms"] = sum(r[f"latency_{name}_ms"] for r in rows) / len(rows)
        return metrics, samples

    def _log_lines(self, rows: list[dict[str, Any]], server: Server, stderr: str) -> list[str]:
        """What Redis applied (and changed silently), each test's result, the logs' tails."""
        lines = [f"redis at {self.socket}: "
                 + " ".join(f"{k}={v!r}" for k, v in self._effective.items())]
        for name, value in self._requested.items():
            got = self._effective.get(name)
            if name in self._effective and conf_value(value) != conf_value(got):
                lines.append(f"requested {name}={value!r}, Redis applied {got!r}")
        lines += [f"{r['test']}: {r['rps']:.0f} rps, p50 {r['latency_p50_ms']:.3f} ms, "
                  f"p99 {r['latency_p99_ms']:.3f} ms" for r in rows]
        server_tail = last_lines(server.log_text(), lambda ln: "overcommit" not in ln, n=3)
        if server_tail:
            lines.append(f"redis-server log: {server_tail}")
        if stderr.strip():
            lines.append(f"redis-benchmark stderr: {last_lines(stderr, n=3)}")
        return lines

    @classmethod
    def _remove_persistence(cls, data_dir: Path) -> None:
        # temp-*: half-written snapshots and AOF rewrites of a killed server
        for path in [*(data_dir / name for name in PERSISTENCE), *data_dir.glob("temp-*")]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
