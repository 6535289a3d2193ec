"""The postgres target: PostgreSQL 15 server settings, tuned on a pgbench workload.

It owns one trial's lifecycle against the instance's private cluster (``postgres_cluster.py``):
start the server in the foreground with the config on its command line (each trial restarts it,
so a restart is the apply), read every setting back from pg_settings, initialise pgbench's tables
when the scale changes, run pgbench, turn its report into metrics, samples and counters
(``postgres_pgbench.py``; its per-second progress is reported as it comes, for a pruner), stop
the server with a fast shutdown, and sort what went wrong into failure classes from
PostgreSQL's and pgbench's own lines.

The server listens on 127.0.0.1 at a port chosen at each start and on a socket directory of its
own (0700); clients connect through the socket. It admits only knobflow: every connection gives
the instance's password, which psql and pgbench read from the instance's 0600 pgpass file
(``PGPASSFILE``), never from their command line (see ``postgres_cluster.py``). Only the spec's
knobs are accepted: a config cannot slip in fsync=off or a shell command such as
archive_command.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from targets import postgres_cluster as pgc
from targets import postgres_leftovers as pgl
from targets import postgres_log as pglog
from targets import postgres_pgbench as pgb
from targets.base import (
    MAXIMIZE,
    MINIMIZE,
    BenchmarkError,
    ConfigRefused,
    ContractExamples,
    FailureClass,
    Measurement,
    Target,
)
from targets.common.errors import WorkloadError, fmt_value
from targets.process import (
    ClientRun,
    Server,
    ServerExited,
    free_port,
    kill_from_pid_file,
    last_lines,
    run_client,
)

BUILTINS = {  # pgbench script -> (read-only share of transactions, writes per transaction)
    "tpcb-like": (0.0, 4.0),
    "simple-update": (0.0, 2.0),
    "select-only": (1.0, 0.0),
}
QUERY_MODES = ("simple", "extended", "prepared")
PID_FILE = "postgres.pid"
_START_TIMEOUT_S = 120.0  # crash recovery after a killed trial replays WAL first
_STOP_TIMEOUT_S = 60.0  # a fast shutdown writes a checkpoint of every dirty buffer
_PORT_TRIES = 3
_LOG_LINES = 5


class PostgresTarget(Target):
    """PostgreSQL through its own programs (postgres, initdb, psql, pgbench), one cluster each."""

    name: ClassVar[str] = "postgres"
    native_suffix: ClassVar[str | None] = ".conf"
    workload_defaults: ClassVar[Mapping[str, Any]] = {
        "scale": 5,  # pgbench scale factor: 100,000 accounts (about 15 MB) per unit
        "clients": 4,  # concurrent database sessions
        "threads": 2,  # pgbench worker threads (at most clients)
        "duration": 10,  # seconds of the timed run
        "builtin": "tpcb-like",  # tpcb-like | simple-update | select-only
        "query_mode": "simple",  # simple | extended | prepared
    }
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {
        "scale": (1, 1000),
        "clients": (1, 256),
        "threads": (1, 64),
        "duration": (1, 3600),
    }
    metrics: ClassVar[Mapping[str, str]] = {
        "tps": MAXIMIZE,  # transactions per second, connection time excluded
        "latency_avg_ms": MINIMIZE,
        "latency_stddev_ms": MINIMIZE,
    }
    default_objective: ClassVar[str] = "tps"
    trial_timeout_s: ClassVar[float] = 90.0
    #: pgbench's first second: connections being made, caches still cold
    warmup_s: ClassVar[float] = 1.0
    reports_progress: ClassVar[bool] = True  # pgbench's per-second progress, as it comes

    def __init__(self, data_dir: Path, workload: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(data_dir, workload, seed)
        self._server: Server | None = None
        self._cluster: pgc.Cluster | None = None
        self._bindir: Path | None = None
        self._port = 0
        self._requested: dict[str, Any] = {}
        self._effective: dict[str, Any] = {}
        self._before: dict[str, float] = {}
        self._version = ""
        self._timings: dict[str, float] = {}

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any]) -> None:
        """Start the server with ``config``, load pgbench's tables if needed, read settings back."""
        unknown = [k for k in config if k not in pgb.KNOB_UNITS]
        if unknown:
            raise ConfigRefused(
                f"the postgres target has no knob {', '.join(map(repr, unknown))}; "
                f"knobs are {', '.join(pgb.KNOBS)}"
            )
        self.stop()
        self._requested = {k: config[k] for k in pgb.KNOBS if k in config}
        self._bindir = pgc.find_bindir()
        if self._bindir is None:
            raise BenchmarkError(
                "PostgreSQL's programs (postgres, initdb, psql, pgbench) were not found: install "
                "the postgresql package or set KNOBFLOW_PG_BINDIR to their directory"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        cluster = pgc.locate(self.data_dir, create=True)
        assert cluster is not None
        self._cluster = cluster
        self._timings = {"initdb_s": pgc.prepare(cluster, self._bindir, self.log_dir)}
        pgl.end_leftovers(cluster)  # a killed trial's postmaster.pid, segment, backends
        started = time.monotonic()
        self._start_server()
        self._timings["server_start_s"] = time.monotonic() - started
        self._timings["pgbench_init_s"] = self._ensure_tables()
        rows = self._query()
        self._effective = pgb.effective_config(rows)
        self._version = rows.get("server_version", ("?", "", ""))[0]
        self._before = pgb.stat_counters(rows)

    def run(self) -> Measurement:
        """Run pgbench once for ``duration`` seconds; tps, latency and per-second samples."""
        if self._server is None:
            raise BenchmarkError("run() was called before start()")
        w = {**self.workload_defaults, **self.workload}
        clients = int(w["clients"])
        cmd = [
            *self._client("pgbench"),
            "-T", str(int(w["duration"])), "-c", str(clients),
            "-j", str(min(int(w["threads"]), clients)), "-P", "1",
            f"--builtin={w['builtin']}", f"--protocol={w['query_mode']}",
            f"--random-seed={self.seed}", "--vacuum-all", "postgres",
        ]
        log_start = self._log_size()
        cpu_before = self._server.usage().cpu_s
        started = time.monotonic()
        progress = pgb.ProgressReader(self.log_dir / "pgbench.err")

        def report_progress() -> bool:  # polled by run_client while pgbench runs
            for step, so_far in progress.read():
                self.report(step, so_far)
            return False  # never a reason to stop pgbench

        client = run_client(cmd, timeout=int(w["duration"]) + 120.0, log_dir=self.log_dir,
                            name="pgbench", env=self._client_env(),
                            abort=report_progress if self.progress_path is not None else None)
        server_usage = self._server.usage()
        self._check_run(client, log_start)
        summary = pgb.parse_summary(client.stdout)
        if "tps" not in summary or "latency_avg_ms" not in summary:
            raise BenchmarkError(f"pgbench printed no result: {self._client_tail(client)}")
        self._settle()
        after = pgb.stat_counters(self._query())
        counters = {
            **{k: v - self._before.get(k, 0.0) for k, v in after.items()},
            "server_cpu_s": round(server_usage.cpu_s - cpu_before, 4),
            "server_peak_rss_mb": round(server_usage.peak_rss_mb, 2),
            **client.usage.counters("client"),
            "transactions": summary.get("transactions", 0.0),
            "failed_transactions": summary.get("failed_transactions", 0.0),
            "initial_connection_ms": summary.get("initial_connection_ms", 0.0),
            **{k: round(v, 4) for k, v in self._timings.items()},
        }
        metrics = {
            "tps": summary["tps"],
            "latency_avg_ms": summary["latency_avg_ms"],
            "latency_stddev_ms": summary.get("latency_stddev_ms", 0.0),
        }
        return Measurement(
            metrics=metrics,
            effective_config=dict(self._effective),
            samples=pgb.parse_progress(client.stderr),
            counters=counters,
            log=self._log_lines(client, summary),
            duration_s=time.monotonic() - started,
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT): a checkpoint, then a consistent cluster and no process."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(timeout=_STOP_TIMEOUT_S, sig=signal.SIGINT)
        if self._cluster is not None and pgl.cluster_processes(self._cluster):
            pgl.end_leftovers(self._cluster)  # the shutdown timed out and was killed

    @classmethod
    def cleanup(cls, data_dir: Path) -> None:
        """After a killed trial: end the postmaster and its backends; remove postmaster.pid, the
        shared memory segments, the socket and its lock file."""
        cluster = pgc.locate(Path(data_dir))
        if cluster is None:
            (Path(data_dir) / PID_FILE).unlink(missing_ok=True)
            return
        kill_from_pid_file(Path(data_dir) / PID_FILE, must_contain=str(cluster.pgdata))
        pgl.end_leftovers(cluster)
        for stale in cluster.sockdir.glob(".s.PGSQL.*"):  # a killed server leaves its socket
            stale.unlink(missing_ok=True)  # and the socket's lock file behind

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        bindir = pgc.find_bindir()
        progs = ("postgres", "initdb", "psql", "pgbench")
        requires = tuple(str(bindir / p) for p in progs) if bindir else progs
        return {
            "postgres": ContractExamples(
                workload={"scale": 1, "duration": 2, "clients": 2, "threads": 1},
                refused={"max_connections": 3},  # not above superuser_reserved_connections (3)
                refused_class=str(FailureClass.REFUSED),
                hang=None,  # PostgreSQL has no known hanging setting here
                timeout_s=30.0,
                requires=requires,
            )
        }

    @classmethod
    def normalize_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """PostgreSQL keeps wal_buffers in 8 kB pages: a value is rounded to the nearest page."""
        out = dict(config)
        if isinstance(out.get("wal_buffers"), int) and out["wal_buffers"] > 0:
            # rint() like PostgreSQL: halves round to even pages
            out["wal_buffers"] = max(8, round(out["wal_buffers"] / 8) * 8)
        return out

    @classmethod
    def render_native(cls, config: Mapping[str, Any]) -> str:
        """The config as postgresql.conf lines (restart the server to apply every one)."""
        lines = ["# knobflow postgres config: append to postgresql.conf, then restart the server."]
        for name in pgb.KNOBS:
            if name in config:
                value = pgb.setting_text(name, config[name]).replace("'", "''")
                lines.append(f"{name} = '{value}'")
        return "\n".join(lines) + "\n"

    # -- workload -------------------------------------------------------------------------------
    @classmethod
    def parse_workload(cls, values: Mapping[str, Any], source: str = "workload") -> dict[str, Any]:
        workload = super().parse_workload(values, source)
        for key, allowed in (("builtin", tuple(BUILTINS)), ("query_mode", QUERY_MODES)):
            if workload[key] not in allowed:
                raise WorkloadError(
                    f"{source}: workload parameter '{key}' = {fmt_value(workload[key])} is not "
                    f"one of {', '.join(allowed)}"
                )
        return workload

    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        """Scale, clients, read share, writes per transaction, protocol; not how it is measured."""
        w = {**cls.workload_defaults, **workload}
        read_ratio, writes = BUILTINS.get(str(w["builtin"]), (0.0, 0.0))
        mode = str(w["query_mode"])
        return {
            "scale": float(w["scale"]),
            "clients": float(w["clients"]),
            "read_ratio": read_ratio,
            "writes_per_txn": writes,
            "query_mode": float(QUERY_MODES.index(mode)) if mode in QUERY_MODES else 0.0,
        }

    # -- the server -----------------------------------------------------------------------------
    def _start_server(self) -> None:
        assert self._cluster is not None and self._bindir is not None
        cluster = self._cluster
        log_path = self.log_dir / "server.log"
        for attempt in range(1, _PORT_TRIES + 1):
            if log_path.exists():
                log_path.replace(log_path.with_name("server.log.prev"))
            port = free_port()
            cmd = [
                str(self._bindir / "postgres"), "-D", str(cluster.pgdata),
                "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                "-c", f"unix_socket_directories={cluster.sockdir}",
                "-c", f"cluster_name={cluster.name()}",
            ]
            for name, value in self._requested.items():
                cmd += ["-c", f"{name}={pgb.setting_text(name, value)}"]
            server = Server(cmd, log_path=log_path, pid_file=self.data_dir / PID_FILE,
                            env=pgc.clean_env(), cwd=cluster.root, user=pgc.server_user())
            pid_path = cluster.pgdata / "postmaster.pid"
            try:
                server.start(lambda s=server, f=pid_path: _ready(f, s), timeout=_START_TIMEOUT_S)
            except ServerExited as exc:
                pgl.end_leftovers(cluster)
                if "Address already in use" in exc.log and attempt < _PORT_TRIES:
                    continue  # another process took the free port first
                raise pglog.startup_failure(exc) from None
            self._server, self._port = server, port
            return

    def _client(self, program: str) -> list[str]:
        """A client's command line: the socket, the port, the superuser; never the password."""
        assert self._cluster is not None and self._bindir is not None
        return [str(self._bindir / program), "-h", str(self._cluster.sockdir),
                "-p", str(self._port), "-U", pgc.SUPERUSER]

    def _client_env(self) -> dict[str, str]:
        assert self._cluster is not None
        return pgc.client_env(self._cluster)

    def _query(self) -> pgb.Rows:
        done = run_client(
            [*self._client("psql"), "-w", "-d", "postgres", "-AtX", "-F", "\t",
             "-v", "ON_ERROR_STOP=1", "-c", pgb.read_back_sql()],
            timeout=60.0, log_dir=self.log_dir, name="psql", env=self._client_env(),
        )
        if done.returncode != 0:
            self._raise_server_failure(0)
            raise BenchmarkError(f"reading the settings back failed: {self._client_tail(done)}")
        return pgb.parse_rows(done.stdout)

    def _settle(self, timeout: float = 2.0) -> None:
        """Wait until pgbench's backends have exited: they flush their statistics on the way."""
        assert self._server is not None and self._server.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                children = psutil.Process(self._server.proc.pid).children()
            except psutil.Error:
                return
            if not any(_client_backend(p) for p in children):
                return
            time.sleep(0.02)

    def _ensure_tables(self) -> float:
        """Run ``pgbench -i`` when the database does not hold the workload's scale; its seconds."""
        assert self._cluster is not None
        scale = str(int(self.workload.get("scale", self.workload_defaults["scale"])))
        record = self._cluster.scale_file
        if record.exists() and record.read_text().strip() == scale:
            return 0.0
        record.unlink(missing_ok=True)  # a killed initialisation leaves no record behind
        log_start = self._log_size()
        started = time.monotonic()
        done = run_client([*self._client("pgbench"), "-i", "-s", scale, "-q", "postgres"],
                          timeout=3600.0, log_dir=self.log_dir, name="pgbench-init",
                          env=self._client_env())
        if done.returncode != 0:
            self._raise_server_failure(log_start, done.stderr)
            raise BenchmarkError(f"pgbench -i -s {scale} failed: {self._client_tail(done)}")
        record.write_text(f"{scale}\n")
        return time.monotonic() - started

    def _check_run(self, client: ClientRun, log_start: int) -> None:
        """Classify a failed pgbench run: refused connections, OOM, I/O, a crash, or pgbench."""
        if client.timed_out:
            raise BenchmarkError(f"pgbench did not finish in time: {self._client_tail(client)}")
        if client.returncode == 0:
            return
        too_many = [ln for ln in pgb.other_lines(client.stderr)
                    if "too many clients" in ln or "connection slots are reserved" in ln]
        if too_many:
            raise ConfigRefused(f"{too_many[-1]} (the workload's clients need max_connections)")
        self._raise_server_failure(log_start, client.stderr)
        raise BenchmarkError(
            f"pgbench exited with code {client.returncode}: {self._client_tail(client)}"
        )

    def _raise_server_failure(self, log_start: int, client_text: str = "") -> None:
        """Raise TrialFailed when the server's log (or the client) shows why it failed."""
        gone = self._server is not None and not self._server.running
        failure = pglog.run_failure(self._log_text(log_start), client_text, gone)
        if failure is not None:
            raise failure

    def _log_size(self) -> int:
        try:
            return (self.log_dir / "server.log").stat().st_size
        except OSError:
            return 0

    def _log_text(self, start: int = 0) -> str:
        try:
            with open(self.log_dir / "server.log", "rb") as fh:
                fh.seek(start)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _client_tail(self, run: ClientRun) -> str:
        return " | ".join(pgb.other_lines(run.stderr)[-_LOG_LINES:]) or last_lines(run.stdout)

    def _log_lines(self, client: ClientRun, summary: Mapping[str, float]) -> list[str]:
        """What was applied (and changed), what pgbench did, the tails of both logs."""
        lines = [f"PostgreSQL {self._version} on 127.0.0.1:{self._port}, cluster "
                 f"{self._cluster.root if self._cluster else '?'}"]
        for name, value in self._requested.items():
            got = self._effective.get(name)
            if pgb.setting_text(name, value) != pgb.setting_text(name, got):
                lines.append(f"requested {name}={value!r}, PostgreSQL applied {got!r}")
        lines.append(
            f"pgbench: {summary.get('transactions', 0):.0f} transactions, "
            f"tps={summary['tps']:.1f}, latency {summary['latency_avg_ms']:.3f} ms "
            f"(stddev {summary.get('latency_stddev_ms', 0.0):.3f}), "
            f"{summary.get('failed_transactions', 0):.0f} failed"
        )
        lines += [f"server: {pglog.message(ln)}"
                  for ln in self._log_text().splitlines()[-_LOG_LINES:] if ln.strip()]
        lines += [f"pgbench: {ln}" for ln in pgb.other_lines(client.stderr)[-_LOG_LINES:]]
        return lines


def _client_backend(proc: psutil.Process) -> bool:
    """A backend serving a client over the socket (its title shows ``[local]``)."""
    try:
        return "[local]" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _ready(pid_path: Path, server: Server) -> bool:
    """The postmaster wrote its own pid file and marked itself ready to accept connections."""
    try:
        lines = pid_path.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return (server.proc is not None and len(lines) >= 8 and lines[0].strip() == str(
        server.proc.pid) and lines[7].strip() == "ready")
