"""What a live PostgreSQL's counters say: one query for a snapshot, and a window between two.

Owns the snapshot query (psql script, one call): pg_stat_database of the connection's database
(transactions, tuples, blocks), the next transaction id (write transactions, counted at once),
client sessions, database size, checkpoints, WAL bytes, pg_stat_statements when it is loaded,
pgbench's scale when its tables are there (none while pgbench re-makes them); the CPU and
memory of the postmaster's process tree when the server runs on this machine (psutil); and
turning two snapshots into a ``Window``.

PostgreSQL publishes a busy backend's pg_stat_database counts about once a second, so ``tps``
over windows much shorter than 2 s is noisy; ``write_tps`` (from transaction ids) is not.
The latency a client sees is not on the server (pg_stat_statements times statements, without
the commit's WAL flush), so a window's metric is ``tps`` alone; statement times are counters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import psutil

from targets.live import Snapshot, Window

__all__ = ["SNAPSHOT_SQL", "snapshot_values", "window_between"]

_DB_COUNTERS = ("tup_returned", "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted",
                "blks_read", "blks_hit", "temp_bytes", "deadlocks")
SNAPSHOT_SQL = """SELECT :SERVER_VERSION_NUM >= 140000 AS v14,
  to_regclass('pg_stat_statements') IS NOT NULL
    AND current_setting('shared_preload_libraries') ~ 'pg_stat_statements' AS pgss,
  coalesce(has_table_privilege(to_regclass('pgbench_branches'), 'SELECT'), false) AS pgbench
\\gset
SELECT s.k, s.v FROM pg_stat_database d, LATERAL (VALUES
  ('xacts', (d.xact_commit + d.xact_rollback)::float8), {db}) AS s(k, v)
  WHERE d.datname = current_database()
UNION ALL SELECT 'next_xid', pg_snapshot_xmax(pg_current_snapshot())::text::float8
UNION ALL SELECT 'db_bytes', pg_database_size(current_database())::float8
UNION ALL SELECT 'clients', count(*)::float8 FROM pg_stat_activity WHERE datname =
  current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
UNION ALL SELECT 'checkpointer_pid', pid::float8 FROM pg_stat_activity
  WHERE backend_type = 'checkpointer'
UNION ALL SELECT 'started', extract(epoch FROM pg_postmaster_start_time())::float8
UNION ALL SELECT 'checkpoints', (checkpoints_timed + checkpoints_req)::float8
  FROM pg_stat_bgwriter;
\\if :v14
SELECT 'wal_bytes', wal_bytes::float8 FROM pg_stat_wal;
\\endif
\\if :pgss
SELECT 'stmt_calls', coalesce(sum(calls), 0)::float8 FROM pg_stat_statements
  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION ALL SELECT 'stmt_ms', coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements
  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database());
\\endif
\\if :pgbench
\\set ON_ERROR_STOP off
SELECT 'scale', count(*)::float8 FROM pgbench_branches;
\\set ON_ERROR_STOP on
\\endif
""".replace("{db}", ", ".join(f"('{c}', d.{c}::float8)" for c in _DB_COUNTERS))


def snapshot_values(rows: Sequence[Sequence[str]], local: bool) -> dict[str, float]:
    """The snapshot query's (name, value) rows as numbers; the server's CPU and memory when
    ``local`` (found through the checkpointer, whose parent is the postmaster)."""
    values = {}
    for row in rows:
        with contextlib.suppress(ValueError, IndexError):
            number = float(row[1])
            if math.isfinite(number):
                values[row[0]] = number
    checkpointer = values.pop("checkpointer_pid", None)
    if local and checkpointer is not None:
        values.update(_server_usage(int(checkpointer)))
    return values


def window_between(first: Snapshot, last: Snapshot) -> Window:
    """What happened between two snapshots: tps, the workload's fingerprint (named as the
    postgres target's workload features where they mean the same), resource use."""
    seconds = max(last.t - first.t, 1e-9)
    a, b = first.values, last.values

    def delta(key: str) -> float:
        return max(0.0, b.get(key, 0.0) - a.get(key, 0.0))

    xacts, xids = delta("xacts"), delta("next_xid")
    writes = sum(delta(f"tup_{k}") for k in ("inserted", "updated", "deleted"))
    fetched = delta("tup_fetched")
    fingerprint = {
        "clients": (a.get("clients", 0.0) + b.get("clients", 0.0)) / 2,
        # the share of transactions without a transaction id: they wrote nothing
        "read_ratio": 1.0 - min(1.0, xids / xacts) if xacts else 0.0,
        "writes_per_txn": writes / xacts if xacts else 0.0,
        "row_read_share": fetched / (fetched + writes) if fetched + writes else 0.0,
        "db_size_mb": b.get("db_bytes", 0.0) / 2**20,
    }
    if "scale" in b:
        fingerprint["scale"] = b["scale"]
    hits, reads = delta("blks_hit"), delta("blks_read")
    counters = {
        "transactions": xacts,
        "write_tps": xids / seconds,
        "cache_hit_ratio": hits / (hits + reads) if hits + reads else 1.0,
        "blks_read_per_s": reads / seconds,
        "tup_fetched_per_s": fetched / seconds,
        "tup_written_per_s": writes / seconds,
        "temp_bytes_per_s": delta("temp_bytes") / seconds,
        "deadlocks": delta("deadlocks"),
        "checkpoints": delta("checkpoints"),
        "server_restarted": float(a.get("started") != b.get("started")),
    }
    if "wal_bytes" in b:
        counters["wal_mb_per_s"] = delta("wal_bytes") / 2**20 / seconds
    if "stmt_calls" in a and "stmt_calls" in b:
        calls = delta("stmt_calls")
        counters["statements_per_s"] = calls / seconds
        counters["statement_mean_ms"] = delta("stmt_ms") / calls if calls else 0.0
        counters["statement_ms_per_txn"] = delta("stmt_ms") / xacts if xacts else 0.0
    if "server_cpu_s" in a and "server_cpu_s" in b:
        counters["server_cpu_s_per_s"] = delta("server_cpu_s") / seconds
        counters["server_mem_mb"] = b.get("server_mem_mb", 0.0)
    return Window(start=first.wall, seconds=seconds, metrics={"tps": xacts / seconds},
                  fingerprint=_clean(fingerprint), counters=_clean(counters))


def _server_usage(checkpointer: int) -> dict[str, float]:
    """CPU seconds (reaped backends included) and memory (PSS) of the postmaster's tree."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(psutil.Process(checkpointer).ppid())
        if root.name() not in ("postgres", "postmaster"):
            return {}
        t = root.cpu_times()
        cpu = t.user + t.system + t.children_user + t.children_system
        mem = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                if proc is not root:
                    c = proc.cpu_times()
                    cpu += c.user + c.system
                full = proc.memory_full_info()
                mem += getattr(full, "pss", full.rss)
        return {"server_cpu_s": cpu, "server_mem_mb": mem / 2**20}
    return {}


def _clean(values: Mapping[str, float]) -> dict[str, float]:
    """Finite, non-negative, rounded."""
    return {k: round(max(0.0, v), 6) if math.isfinite(v) else 0.0 for k, v in values.items()}
