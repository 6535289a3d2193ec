"""The sqlite target: SQLite's PRAGMA knobs, tuned on a seeded key-value workload (stdlib sqlite3).

It owns applying a config to a fresh database file in the instance's data directory (page_size
first, then the other PRAGMAs, in ``targets/sqlite_pragmas.py``'s order), reading every PRAGMA back
as the effective config, the workload (a load phase of batched inserts, then a mix of point
lookups, inserts and updates), the metrics built from per-operation timings, the config as PRAGMA
lines (``.sql``), and the clean-up of the files a killed trial leaves behind.

SQLite never rejects a bad PRAGMA value: it ignores or maps it (page_size 1000 stays 4096,
journal_mode=bogus stays delete, synchronous=9 becomes normal, cache_size='abc' becomes 0). Only
the read-back values are reported. Imports the standard library only: it runs in every trial.

``heap_peak_kb`` is the most memory SQLite itself allocated during a trial (its page cache,
schema, statements; ``targets/sqlite_heap.py``), a cost to weigh against speed
(``--objective read_ops_per_s --objective heap_peak_kb:min``). Pages read through ``mmap_size``
are the OS's page cache and are not counted.
"""

from __future__ import annotations

import random
import sqlite3
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from targets.base import (
    MAXIMIZE,
    MINIMIZE,
    BenchmarkError,
    ConfigRefused,
    ContractExamples,
    Measurement,
    Target,
)
from targets.sqlite_heap import HEAP
from targets.sqlite_pragmas import ordered, pragma_value, read_back

DB_NAME = "knobflow.db"
#: Files SQLite keeps beside a database; a killed trial can leave any of them behind.
SIDE_SUFFIXES = ("-journal", "-wal", "-shm")

_READ, _INSERT, _UPDATE = 0, 1, 2
_KEY_MASK = (1 << 62) - 1
_KEY_MULT = 0x1E3779B97F4A7C15  # odd, so key(j) is a bijection of j modulo 2**62
_VALUE_POOL = 64

_SCHEMA = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL)"
_SELECT = "SELECT v FROM kv WHERE k = ?"
_INSERT_SQL = "INSERT INTO kv (k, v) VALUES (?, ?)"
_UPDATE_SQL = "UPDATE kv SET v = ? WHERE k = ?"


def _key(j: int, salt: int) -> int:
    """The j-th key of a run: distinct for distinct j, spread over the key space."""
    return ((j + salt) * _KEY_MULT) & _KEY_MASK


def _percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond latencies, in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, min(len(sorted_ns), round(q * len(sorted_ns) + 0.5)))
    return sorted_ns[rank - 1] / 1000.0


@dataclass
class _Plan:
    """The operations of one run, drawn before the clock starts."""

    load_keys: array = field(default_factory=lambda: array("q"))
    kinds: bytearray = field(default_factory=bytearray)
    keys: array = field(default_factory=lambda: array("q"))
    values: list[bytes] = field(default_factory=list)


@dataclass
class _PhaseStats:
    """Timings of one phase."""

    seconds: float = 0.0
    reads: int = 0
    inserts: int = 0
    updates: int = 0
    commits: int = 0
    misses: int = 0
    read_ns: int = 0
    write_ns: int = 0
    latencies: array = field(default_factory=lambda: array("q"))

    @property
    def ops(self) -> int:
        return self.reads + self.inserts + self.updates


class SqliteTarget(Target):
    """SQLite through the stdlib ``sqlite3`` module, one database file per instance."""

    name: ClassVar[str] = "sqlite"
    native_suffix: ClassVar[str | None] = ".sql"
    workload_defaults: ClassVar[Mapping[str, Any]] = {
        "rows": 50000,  # rows inserted by the load phase
        "ops": 100000,  # operations of the run phase
        "read_ratio": 0.8,  # share of run-phase operations that are point lookups of existing keys
        "update_ratio": 0.5,  # share of run-phase writes that update an existing row (rest insert)
        "value_size": 100,  # bytes per value
        "batch_size": 100,  # writes per transaction, in both phases
        "sample_interval_s": 0.25,  # length of one per-interval sample
    }
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {
        "rows": (1, 5_000_000),
        "ops": (1, 20_000_000),
        "read_ratio": (0.0, 1.0),
        "update_ratio": (0.0, 1.0),
        "value_size": (1, 65536),
        "batch_size": (1, 1_000_000),
        "sample_interval_s": (0.01, 60.0),
    }
    metrics: ClassVar[Mapping[str, str]] = {
        "ops_per_s": MAXIMIZE,  # all operations / wall time of load + run
        "insert_ops_per_s": MAXIMIZE,  # load-phase rows / load-phase wall time (commits included)
        "read_ops_per_s": MAXIMIZE,  # run-phase lookups / time spent in them
        "write_ops_per_s": MAXIMIZE,  # run-phase writes / time spent in them (commits included)
        "run_ops_per_s": MAXIMIZE,  # run-phase operations / run-phase wall time
        "latency_p50_us": MINIMIZE,  # run-phase operations; a committing write includes its commit
        "latency_p99_us": MINIMIZE,
        # the most memory SQLite allocated in the trial (module docstring), where it can be read
        **({"heap_peak_kb": MINIMIZE} if HEAP.available else {}),
    }
    default_objective: ClassVar[str] = "ops_per_s"
    trial_timeout_s: ClassVar[float] = 60.0

    def __init__(self, data_dir: Path, workload: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(data_dir, workload, seed)
        self._conn: sqlite3.Connection | None = None
        self._requested: dict[str, Any] = {}
        self._effective: dict[str, Any] = {}

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any]) -> None:
        """Create a fresh database with ``config`` applied, and read every PRAGMA back."""
        names = ordered(config)
        self.stop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._remove_files(self.data_dir)
        self._requested = {name: config[name] for name in names}
        HEAP.reset()
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open {self.db_path}: {exc}") from exc
        self._conn = conn
        for name in names:
            statement = f"PRAGMA {name} = {pragma_value(config[name])}"
            try:
                conn.execute(statement).fetchall()
            except (sqlite3.Error, ValueError) as exc:  # ValueError: a NUL byte in the value
                raise ConfigRefused(f"{statement}: {exc}") from exc
        try:
            conn.execute(_SCHEMA)  # fixes page_size in the file: read it back after this
        except sqlite3.Error as exc:
            raise ConfigRefused(f"creating the table under this config: {exc}") from exc
        self._effective = read_back(conn)

    def run(self) -> Measurement:
        """Load ``rows`` rows, then run ``ops`` mixed operations; time each one."""
        if self._conn is None:
            raise BenchmarkError("run() was called before start()")
        started = time.monotonic()
        w = {**self.workload_defaults, **self.workload}
        plan = self._plan(w)
        samples: list[dict[str, Any]] = []
        origin = time.perf_counter_ns()
        load_kinds = bytearray([_INSERT]) * len(plan.load_keys)
        load = self._execute("load", load_kinds, plan.load_keys, plan.values, w, origin, samples,
                             keep=False)
        run = self._execute("run", plan.kinds, plan.keys, plan.values, w, origin, samples,
                            keep=True)
        if load.misses or run.misses:
            raise BenchmarkError(
                f"{load.misses + run.misses} lookups or updates of existing keys found no row: "
                "the database lost committed rows"
            )
        metrics = self._metrics(load, run)
        heap = HEAP.peak_kb()
        if heap is not None:
            metrics["heap_peak_kb"] = heap
        counters = self._counters(load, run)
        return Measurement(
            metrics=metrics,
            effective_config=dict(self._effective),
            samples=samples,
            counters=counters,
            log=self._log_lines(load, run, metrics),
            duration_s=time.monotonic() - started,
        )

    def stop(self) -> None:
        """Close the connection (checkpointing and removing a WAL); the database file stays."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    @classmethod
    def cleanup(cls, data_dir: Path) -> None:
        """After a killed trial: remove the database and its journal, WAL and shm files.

        A rollback journal left by a killed writer is "hot": without it the database may be
        corrupt, and every trial starts from a fresh file anyway, so both go.
        """
        cls._remove_files(Path(data_dir))

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        # SQLite refuses no PRAGMA value and has no known hang: those contract cases do not apply
        return {"sqlite": ContractExamples(workload={"rows": 2000, "ops": 4000}, timeout_s=30.0)}

    @classmethod
    def render_native(cls, config: Mapping[str, Any]) -> str:
        """The config as PRAGMA statements, page_size first, for a fresh connection."""
        lines = [
            "-- knobflow sqlite config: run on a fresh connection, in this order.",
            "-- page_size applies only to a new database (before its first table) or after VACUUM,",
            "-- and cannot change while the database is in WAL mode.",
        ]
        lines += [f"PRAGMA {name} = {pragma_value(config[name])};" for name in ordered(config)]
        return "\n".join(lines) + "\n"

    # -- workload -------------------------------------------------------------------------------
    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        """Numeric features of the workload; the sampling interval describes the measurement."""
        features = super().workload_features(workload)
        features.pop("sample_interval_s", None)
        return features

    def _plan(self, w: Mapping[str, Any]) -> _Plan:
        """Draw every operation from the seed: the same workload for every config of a job."""
        rng = random.Random(self.seed)
        salt = rng.getrandbits(62)
        rows, ops = int(w["rows"]), int(w["ops"])
        read_ratio, update_ratio = float(w["read_ratio"]), float(w["update_ratio"])
        plan = _Plan(values=[rng.randbytes(int(w["value_size"])) for _ in range(_VALUE_POOL)])
        plan.load_keys = array("q", (_key(j, salt) for j in range(rows)))
        existing = rows
        kinds, keys = plan.kinds, plan.keys
        for _ in range(ops):
            if rng.random() < read_ratio:
                kinds.append(_READ)
                keys.append(_key(rng.randrange(existing), salt))
            elif rng.random() < update_ratio:
                kinds.append(_UPDATE)
                keys.append(_key(rng.randrange(existing), salt))
            else:
                kinds.append(_INSERT)
                keys.append(_key(existing, salt))
                existing += 1
        return plan

    def _execute(
        self,
        phase: str,
        kinds: bytearray,
        keys: array,
        values: list[bytes],
        w: Mapping[str, Any],
        origin: int,
        samples: list[dict[str, Any]],
        keep: bool,
    ) -> _PhaseStats:
        """Run one phase's operations; writes go in transactions of ``batch_size`` writes."""
        assert self._conn is not None
        cur = self._conn.cursor()
        clock = time.perf_counter_ns
        batch = int(w["batch_size"])
        interval_ns = int(float(w["sample_interval_s"]) * 1e9)
        stats = _PhaseStats()
        latencies = stats.latencies
        pending = 0
        last = len(kinds) - 1
        i = 0
        win_start = phase_start = clock()
        win_ops = win_ns = win_max = 0
        try:
            for i, kind in enumerate(kinds):
                key = keys[i]
                t0 = clock()
                if kind == _READ:
                    cur.execute(_SELECT, (key,))
                    if cur.fetchone() is None:
                        stats.misses += 1
                else:
                    if pending == 0:
                        cur.execute("BEGIN")
                    if kind == _INSERT:
                        cur.execute(_INSERT_SQL, (key, values[i & (_VALUE_POOL - 1)]))
                    else:
                        cur.execute(_UPDATE_SQL, (values[i & (_VALUE_POOL - 1)], key))
                        if cur.rowcount != 1:
                            stats.misses += 1
                    pending += 1
                    if pending >= batch or i == last:
                        cur.execute("COMMIT")
                        pending = 0
                        stats.commits += 1
                t1 = clock()
                ns = t1 - t0
                if kind == _READ:
                    stats.reads += 1
                    stats.read_ns += ns
                else:
                    stats.write_ns += ns
                    if kind == _INSERT:
                        stats.inserts += 1
                    else:
                        stats.updates += 1
                if keep:
                    latencies.append(ns)
                win_ops += 1
                win_ns += ns
                win_max = max(win_max, ns)
                if t1 - win_start >= interval_ns or i == last:
                    samples.append({
                        "t": round((t1 - origin) / 1e9, 6),
                        "phase": phase,
                        "ops": win_ops,
                        "ops_per_s": win_ops * 1e9 / max(1, t1 - win_start),
                        "latency_mean_us": win_ns / win_ops / 1000.0,
                        "latency_max_us": win_max / 1000.0,
                    })
                    win_start, win_ops, win_ns, win_max = t1, 0, 0, 0
            if pending:  # the last operation was a read after uncommitted writes
                cur.execute("COMMIT")
                stats.commits += 1
        except sqlite3.Error as exc:
            raise BenchmarkError(f"{phase} phase, operation {i}: SQLite error: {exc}") from exc
        finally:
            cur.close()
        stats.seconds = (clock() - phase_start) / 1e9
        return stats

    def _metrics(self, load: _PhaseStats, run: _PhaseStats) -> dict[str, float]:
        lat = sorted(run.latencies)
        total_s = load.seconds + run.seconds
        run_writes = run.inserts + run.updates
        return {
            "ops_per_s": (load.ops + run.ops) / total_s if total_s > 0 else 0.0,
            "insert_ops_per_s": load.ops / load.seconds if load.seconds > 0 else 0.0,
            "read_ops_per_s": run.reads * 1e9 / run.read_ns if run.read_ns > 0 else 0.0,
            "write_ops_per_s": run_writes * 1e9 / run.write_ns if run.write_ns > 0 else 0.0,
            "run_ops_per_s": run.ops / run.seconds if run.seconds > 0 else 0.0,
            "latency_p50_us": _percentile(lat, 0.50),
            "latency_p99_us": _percentile(lat, 0.99),
        }

    def _counters(self, load: _PhaseStats, run: _PhaseStats) -> dict[str, float]:
        assert self._conn is not None
        conn = self._conn
        wal = self.db_path.with_name(DB_NAME + "-wal")
        return {
            "page_count": float(conn.execute("PRAGMA page_count").fetchone()[0]),
            "freelist_count": float(conn.execute("PRAGMA freelist_count").fetchone()[0]),
            "db_bytes": float(self.db_path.stat().st_size),
            "wal_bytes": float(wal.stat().st_size) if wal.exists() else 0.0,
            "load_seconds": load.seconds,
            "run_seconds": run.seconds,
            "commits": float(load.commits + run.commits),
            "rows": float(load.inserts + run.inserts),
            "run_reads": float(run.reads),
            "run_inserts": float(run.inserts),
            "run_updates": float(run.updates),
        }

    def _log_lines(
        self, load: _PhaseStats, run: _PhaseStats, metrics: Mapping[str, float]
    ) -> list[str]:
        """What was applied (and what SQLite changed silently), and what each phase did."""
        lines = [
            f"sqlite {sqlite3.sqlite_version}: "
            + " ".join(f"{k}={v}" for k, v in self._effective.items())
        ]
        for name, value in self._requested.items():
            got = self._effective[name]
            if pragma_value(value).strip("'").lower() != pragma_value(got).lower():
                lines.append(f"requested {name}={value!r}, SQLite applied {got!r}")
        lines += [
            f"load: {load.ops} inserts in {load.seconds:.3f} s, {load.commits} commits",
            f"run: {run.reads} lookups, {run.inserts} inserts, {run.updates} updates in "
            f"{run.seconds:.3f} s, {run.commits} commits",
            f"ops_per_s={metrics['ops_per_s']:.0f} latency_p99_us={metrics['latency_p99_us']:.1f}",
        ]
        return lines

    @classmethod
    def _remove_files(cls, data_dir: Path) -> None:
        db = data_dir / DB_NAME
        for path in (db, *(db.with_name(DB_NAME + s) for s in SIDE_SUFFIXES)):
            path.unlink(missing_ok=True)
