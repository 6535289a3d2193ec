"""The live driver of Redis (7.0 or later): a running redis-server that knobflow did not start.

It owns reaching Redis with the ``redis`` client (``unix:///abs/path.sock``, ``redis://host:port/db``;
a password only from the secret file, sent with AUTH), reading every knob with ``CONFIG GET`` (as
``targets.redis`` converts it), applying changes with one multi-argument ``CONFIG SET`` (atomic in
Redis 7: a refused value changes nothing) kept by ``CONFIG REWRITE`` when the server has a config
file, and turning Redis's own counters into windows.

What a window holds (all from ``INFO`` and ``LATENCY HISTOGRAM``, deltas between two snapshots):

* ``rps``: commands processed per second (a pipelined client's commands each count, as
  redis-benchmark counts them), the driver's own commands taken out;
* counters ``server_latency_avg_ms`` and ``server_latency_p50/p95/p99_ms`` (deltas of the
  per-command latency histograms): the time Redis spends EXECUTING the data commands, not what a
  client waits (no network, queueing or AOF fsync), so not the trials' latency metrics;
* fingerprint (the trial target's ``workload_features`` names where they mean the same):
  ``read_ratio`` (read-only commands and PING / those plus writes: the trial counts PING tests
  as reads), ``pipeline`` (commands per socket read), ``clients`` (connected, the more of two
  snapshots, less this driver), ``keys`` (all databases), ``value_size`` (mean STRLEN of 8
  random string keys a snapshot), ``commands`` (data commands with >= 1% of the calls);
* counters: the server's CPU seconds per second, used memory, instantaneous ops, network bytes,
  hits, misses, evictions and error replies per second, whether AOF is on.
Launched instances are the trial target's server (a socket in a 0700 directory, no TCP port)
under ``redis-benchmark -l``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import UnixDomainSocketConnection
from redis.retry import Retry

from targets.base import Target
from targets.common.errors import did_you_mean
from targets.live import ActuationRefused, Connection, LiveError, LiveSystem, Snapshot, Window
from targets.live_redis_latency import histogram_values, latencies
from targets.process import connect_unix
from targets.redis import KNOB_KINDS, SOCKET, RedisTarget, conf_lines, directive, from_redis

__all__ = ["RedisLive"]

log = logging.getLogger("knobflow.live.redis")
T = TypeVar("T")

#: The INFO sections a snapshot reads.
_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "cpu", "commandstats",
             "keyspace")
#: Random keys whose STRLEN a snapshot reads (the fingerprint's value_size).
_VALUE_SAMPLES = 8
#: Snapshot keys read from INFO fields of another name, and those of the same name.
_INFO = {"uptime": "uptime_in_seconds", "error_replies": "total_error_replies",
         "net_input_bytes": "total_net_input_bytes", "net_output_bytes": "total_net_output_bytes"}
_KEPT = ("process_id", "total_commands_processed", "total_reads_processed", "used_memory",
         "connected_clients", "instantaneous_ops_per_sec", "keyspace_hits", "keyspace_misses",
         "evicted_keys", "aof_enabled")
#: Rates a window reports per second, from the snapshot keys of the same name.
_RATES = ("net_input_bytes", "net_output_bytes", "keyspace_hits", "keyspace_misses",
          "evicted_keys")
_TIMEOUT_S = 10.0


class _UnixConnection(UnixDomainSocketConnection):
    """A Unix-socket connection that also reaches a socket path longer than ``sun_path``."""

    def _connect(self) -> Any:
        sock = connect_unix(Path(self.path), timeout=self.socket_connect_timeout or _TIMEOUT_S)
        sock.settimeout(self.socket_timeout)
        return sock


def _arg(value: Any) -> str:
    """A knob value as CONFIG SET takes it (yes/no for booleans)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class RedisLive(LiveSystem):
    """A live redis-server reached through the ``redis`` client."""

    target: ClassVar[str] = "redis"
    #: Redis times a command inside the server (~0.001 ms), not what a client waits (the trials'
    #: latency_*_ms, ~0.3 ms): those are counters (server_latency_*), not metrics.
    observed_metrics: ClassVar[tuple[str, ...]] = ("rps",)
    scale_features: ClassVar[tuple[str, ...]] = ("used_memory_bytes", "keys")

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._redis: redis.Redis | None = None
        self._flags: dict[str, frozenset[str]] = {}
        #: Whether the last apply() was written to the server's config file (None: nothing yet).
        self.persisted: bool | None = None

    # -- the connection ---------------------------------------------------------------------
    def _client(self) -> redis.Redis:
        if self._redis is None:
            try:
                self._redis = self._connect(urlsplit(self.connection.url))
            except ValueError as exc:  # a port or database that is not a number
                raise LiveError(f"{self._where()}: not a Redis URL ({exc}); a Redis URL is "
                                f"unix:///path/redis.sock or redis://host:port/db") from None
        return self._redis

    def _connect(self, url: SplitResult) -> redis.Redis:
        common: dict[str, Any] = {"password": self.password(), "decode_responses": True,
                                  "socket_timeout": _TIMEOUT_S,
                                  "socket_connect_timeout": _TIMEOUT_S,
                                  # one quick retry, not the client's 3 with backoff up to 10 s
                                  "retry": Retry(ExponentialBackoff(cap=0.5, base=0.1), 1)}
        if url.password is not None:
            raise LiveError(f"{self._where()}: the URL holds a password; put it in a secret "
                            f"file (0600) and give that file instead")
        if url.scheme == "unix":
            if not url.path.startswith("/"):
                raise LiveError(f"{self.connection.url}: a unix:// URL needs an absolute path "
                                f"(unix:///path/to/redis.sock)")
            db = int(parse_qs(url.query).get("db", ["0"])[0])
            pool = redis.ConnectionPool(connection_class=_UnixConnection, path=unquote(url.path),
                                        db=db, username=url.username, **common)
            return redis.Redis(connection_pool=pool)
        if url.scheme in ("redis", "rediss"):
            path = url.path.strip("/")
            if path and not path.isdigit():
                raise LiveError(f"{self.connection.url}: the path must be a database number "
                                f"(redis://host:port/0)")
            return redis.Redis(host=url.hostname or "127.0.0.1", port=url.port or 6379,
                               db=int(path or 0), username=url.username,
                               ssl=url.scheme == "rediss", **common)
        raise LiveError(f"{self.connection.url}: a Redis URL is unix:///path/redis.sock or "
                        f"redis://host:port/db")

    def _where(self) -> str:
        url = self.connection.url
        with contextlib.suppress(ValueError):
            secret = urlsplit(url).password
            if secret is not None:  # never say it, even when it was put in the URL
                url = url.replace(f":{secret}@", ":***@", 1)
        return f"Redis at {url}"

    def _do(self, call: Callable[[redis.Redis], T]) -> T:
        """``call`` on the client; the client's failures as one clear ``LiveError`` line."""
        try:
            return call(self._client())
        except redis.AuthenticationError as exc:
            secret = self.connection.secret_file
            if secret is None:
                raise LiveError(f"{self._where()} asks for a password: give the instance a "
                                f"secret file (0600) holding it") from None
            raise LiveError(f"{self._where()} refused the password in {secret} ({exc}): check "
                            f"it") from None
        except redis.exceptions.NoPermissionError as exc:
            raise LiveError(f"{self._where()}: the user may not do this ({exc}): grant it "
                            f"+config +info +latency +command +dbsize +randomkey +strlen "
                            f"+ping") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LiveError(f"{self._where()} cannot be reached ({exc}): is it running, and is "
                            f"the URL right?") from None
        except redis.ResponseError as exc:
            raise LiveError(f"{self._where()} answered an error: {exc}") from None

    def ping(self) -> str:
        info = self._do(lambda c: (c.ping(), c.info("server"))[1])
        version = str(info.get("redis_version", "?"))
        if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 7:
            raise LiveError(f"{self._where()} is Redis {version}; knobflow's Redis driver needs "
                            f"Redis 7.0 or later (its knob names and multi-argument CONFIG SET)")
        return f"Redis {version}"

    # -- config -------------------------------------------------------------------------------
    def _config(self) -> dict[str, str]:
        return dict(self._do(lambda c: c.config_get("*")))

    def read_config(self) -> dict[str, Any]:
        got = self._config()
        return {k.name: from_redis(self._kind(k.name), got[directive(k.name)])
                for k in self.spec if directive(k.name) in got}

    def _kind(self, name: str) -> str:
        kind = {"bool": "bool", "int": "int"}.get(self.spec[name].type, "str")
        return KNOB_KINDS.get(name, kind)

    def _config_file(self) -> str:
        return str(self._do(lambda c: c.info("server")).get("config_file") or "")

    def runtime_refusals(self, changes: Mapping[str, Any]) -> dict[str, str]:
        reasons: dict[str, str] = {}
        known = self._config() if changes else {}
        for name, raw in changes.items():
            if name not in self.spec:
                reasons[name] = f"not a Redis knob{did_you_mean(name, self.spec.names)}"
                continue
            knob = self.spec[name]
            problem = knob.problem_with(knob.coerce(raw))
            if problem:
                reasons[name] = problem
            elif directive(name) not in known:
                reasons[name] = f"this Redis has no setting {directive(name)}"
            elif knob.restart and not self.connection.restart_command:
                reasons[name] = (f"Redis reads {directive(name)} only when it starts, and the "
                                 f"instance has no restart command (instance add --restart)")
            elif knob.restart and not os.access(self._config_file() or "/", os.W_OK):
                reasons[name] = (f"Redis reads {directive(name)} only when it starts, and its "
                                 f"config file is not one knobflow can write here")
        return reasons

    def apply(self, changes: Mapping[str, Any]) -> None:
        """One atomic CONFIG SET of the runtime knobs, CONFIG REWRITE when the server has a
        config file (``persisted`` says whether it had; a failed rewrite undoes the change), and
        for knobs Redis reads only at start: their lines in the file and a restart."""
        reasons = self.runtime_refusals(changes)
        if reasons:
            raise ActuationRefused(self.connection.url, reasons)
        if not changes:
            return
        clean = {n: self.spec[n].coerce(v) for n, v in changes.items()}
        runtime = {n: v for n, v in clean.items() if not self.spec[n].restart}
        at_start = {n: v for n, v in clean.items() if self.spec[n].restart}
        before = self.read_config()
        if runtime:
            self._config_set(runtime)
        self.persisted = self._rewrite({n: before[n] for n in runtime})
        if at_start:
            self._write_start_knobs(at_start)
            self.restart()
            got = self.read_config()
            wrong = {n: got.get(n) for n, v in at_start.items() if got.get(n) != v}
            if wrong:
                raise LiveError(f"{self._where()}: after the restart Redis has {wrong}, not "
                                f"what was written to its config file")

    def _config_set(self, values: Mapping[str, Any]) -> None:
        """One CONFIG SET of every knob of ``values``: Redis 7 sets all of them or none."""
        args = [x for name, value in values.items() for x in (directive(name), _arg(value))]

        def config_set(client: redis.Redis) -> None:
            try:
                client.execute_command("CONFIG", "SET", *args)
            except redis.ResponseError as exc:
                if isinstance(exc, redis.exceptions.NoPermissionError):
                    raise
                match = re.search(r"argument '([^']+)'", str(exc))
                name = match.group(1).replace("-", "_") if match else ", ".join(values)
                raise ActuationRefused(self.connection.url, {name: f"Redis refused it: {exc}"}
                                       ) from None

        self._do(config_set)

    def _rewrite(self, undo: Mapping[str, Any]) -> bool:
        """CONFIG REWRITE if the server has a config file (False if it has none)."""
        path = self._config_file()
        if not path:
            log.warning("%s has no config file: the change holds until Redis restarts",
                        self._where())
            return False
        try:
            self._client().execute_command("CONFIG", "REWRITE")
        except redis.RedisError as exc:
            if undo:
                self._config_set(undo)
            raise LiveError(f"{self._where()}: CONFIG REWRITE of {path} failed ({exc}); the "
                            f"change was undone: let Redis write its config file") from None
        return True

    def _write_start_knobs(self, values: Mapping[str, Any]) -> None:
        """Put the directives of ``values`` into the config file (Redis just rewrote it)."""
        path = Path(self._config_file())
        lines = path.read_text(encoding="utf-8").splitlines()
        for name, line in zip(values, conf_lines(values), strict=True):
            head = directive(name) + " "
            lines = [ln for ln in lines if not ln.startswith(head)] + [line]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # -- counters -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        def read(c: redis.Redis) -> tuple[list[Any], Any, dict[str, Any]]:
            pipe = c.pipeline(transaction=False)
            for _ in range(_VALUE_SAMPLES):
                pipe.randomkey()
            keys = [k for k in pipe.execute() if k is not None]
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.strlen(key)
            sizes = pipe.execute(raise_on_error=False)
            hist = c.execute_command("LATENCY", "HISTOGRAM")
            return [keys, sizes], hist, c.info(*_SECTIONS)

        (keys, sizes), hist, info = self._do(read)
        t, wall = time.monotonic(), time.time()
        values = {key: float(info.get(_INFO.get(key, key), 0)) for key in (*_INFO, *_KEPT)}
        values["cpu_s"] = float(info.get("used_cpu_sys", 0)) + float(info.get("used_cpu_user", 0))
        values["keys"] = float(sum(v.get("keys", 0) for k, v in info.items()
                                   if re.fullmatch(r"db\d+", k) and isinstance(v, dict)))
        # the commands this snapshot sent before its INFO (the window takes them out)
        values.update({"own:randomkey": float(_VALUE_SAMPLES), "own:strlen": float(len(keys)),
                       "own_total": float(_VALUE_SAMPLES + len(keys) + 1)})
        strings = [s for s in sizes if isinstance(s, int) and not isinstance(s, bool)]
        values["value_bytes"], values["value_samples"] = float(sum(strings)), float(len(strings))
        values["own_errors"] = float(len(sizes) - len(strings))  # STRLEN of a list: WRONGTYPE
        for key, stat in info.items():
            if key.startswith("cmdstat_") and isinstance(stat, dict):
                values[f"calls:{key[8:]}"] = float(stat.get("calls", 0))
                values[f"usec:{key[8:]}"] = float(stat.get("usec", 0))
        values.update(histogram_values(hist))
        return Snapshot(t=t, wall=wall, values=values)

    def window(self, first: Snapshot, last: Snapshot) -> Window:
        a, b = first.values, last.values
        if a.get("process_id") != b.get("process_id") or b.get("uptime", 0) < a.get("uptime", 0):
            raise LiveError(f"{self._where()} restarted between two snapshots (its counters "
                            f"began again): observe again")
        seconds = max(last.t - first.t, 1e-9)

        def delta(key: str) -> float:
            return max(0.0, b.get(key, 0.0) - a.get(key, 0.0))

        # between the two INFOs: the first's INFO itself and the last's commands before its INFO
        commands = max(0.0, delta("total_commands_processed") - b.get("own_total", 0.0) - 1)
        kinds = self._command_kinds({k[6:] for k in b if k.startswith("calls:")})
        calls = {n: max(0.0, delta(f"calls:{n}") - b.get(f"own:{n}", 0.0)) for n in kinds}
        total = sum(calls.values())
        metrics = {"rps": commands / seconds}
        server_latency: dict[str, float] = {}
        clients = max(a.get("connected_clients", 0.0), b.get("connected_clients", 0.0))
        fingerprint = {"clients": max(0.0, clients - 1),
                       "keys": b.get("keys", 0.0)}
        if total > 0:
            reads = sum(c for n, c in calls.items() if kinds[n] == "read")
            fingerprint["read_ratio"] = reads / total
            fingerprint["commands"] = float(sum(1 for c in calls.values() if c >= total / 100))
            fingerprint["pipeline"] = commands / max(1.0, delta("total_reads_processed"))
            server_latency = latencies(a, b, list(kinds))
        samples = a.get("value_samples", 0.0) + b.get("value_samples", 0.0)
        if samples:
            fingerprint["value_size"] = (a.get("value_bytes", 0.0) + b["value_bytes"]) / samples
        counters = {
            "server_cpu_s_per_s": delta("cpu_s") / seconds,
            "used_memory_bytes": b.get("used_memory", 0.0),
            "instantaneous_ops_per_sec": b.get("instantaneous_ops_per_sec", 0.0),
            "connected_clients": b.get("connected_clients", 0.0),
            "aof_enabled": b.get("aof_enabled", 0.0),
            **{f"server_{k}": v for k, v in server_latency.items()},
            **{f"{k}_per_s": delta(k) / seconds for k in _RATES},
            "error_replies_per_s": max(0.0, delta("error_replies") - b.get("own_errors", 0.0))
            / seconds,
        }
        return Window(start=first.wall, seconds=seconds, metrics=metrics,
                      fingerprint=fingerprint, counters=counters)

    def _command_kinds(self, names: set[str]) -> dict[str, str]:
        """The data commands among ``names``: "read" (read-only, and PING) or "write".
        Subcommands (``config|get``) and commands that are neither are left out."""
        unknown = sorted(n for n in names if n not in self._flags and "|" not in n)
        if unknown:
            info = self._do(lambda c: c.execute_command("COMMAND", "INFO", *unknown))
            for name in unknown:
                self._flags[name] = frozenset((info.get(name) or {}).get("flags", ()))
        kinds = {}
        for name in names:
            flags = self._flags.get(name, frozenset())
            if "write" in flags:
                kinds[name] = "write"
            elif "readonly" in flags or name == "ping":
                kinds[name] = "read"
        return kinds

    # -- launched instances -------------------------------------------------------------------
    @classmethod
    def launch_target(cls, data_dir: Path, workload: Mapping[str, Any]) -> Target:
        """The trial target's server at its defaults: no TCP port, a socket in a 0700 directory,
        a config file (``redis.conf``) that CONFIG REWRITE keeps."""
        target = RedisTarget(data_dir, RedisTarget.parse_workload(workload))
        target.start({})
        return target

    @classmethod
    def connection_for(cls, target: Target, data_dir: Path) -> Connection:
        return Connection(target=cls.target, url=f"unix://{Path(data_dir).resolve() / SOCKET}")

    @classmethod
    def load_command(cls, target: Target, workload: Mapping[str, Any]
                     ) -> tuple[list[str], dict[str, str] | None]:
        """``redis-benchmark -l``: the workload's tests in a loop, as the trial target runs them
        (its output goes nowhere: the daemon sends it to /dev/null)."""
        w = {**RedisTarget.workload_defaults, **RedisTarget.parse_workload(workload)}
        sock = target.data_dir / SOCKET
        if len(os.fsencode(sock)) > 107:  # sun_path: relative to the daemon's directory, its cwd
            sock = Path(os.path.relpath(sock, target.data_dir.parent))
        return (["redis-benchmark", "-s", str(sock), "-l", "-q", "-t", str(w["tests"]),
                 "-n", str(w["requests"]), "-c", str(w["clients"]), "-P", str(w["pipeline"]),
                 "-d", str(w["data_size"]), "-r", str(w["keyspace"])], None)
