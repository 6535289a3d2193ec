"""What the postgres target reads from PostgreSQL and pgbench: settings, statistics, results.

Owns the knob table (each knob's unit as the spec gives it and how its value is written on the
server's command line), the one read-back query (pg_settings plus the WAL, background-writer and
database statistics), the conversion of pg_settings values to the spec's units, and the parsing
of pgbench's summary and of its per-second progress lines (``-P 1``), also read while it runs
(``ProgressReader``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Knob -> its unit in the spec (PostgreSQL's own suffix), "" for a unit-less value.
KNOB_UNITS: dict[str, str] = {
    "shared_buffers": "MB",
    "effective_cache_size": "MB",
    "work_mem": "kB",
    "maintenance_work_mem": "MB",
    "wal_buffers": "kB",
    "max_wal_size": "MB",
    "min_wal_size": "MB",
    "checkpoint_timeout": "s",
    "checkpoint_completion_target": "",
    "synchronous_commit": "",
    "wal_compression": "",
    "wal_writer_delay": "ms",
    "random_page_cost": "",
    "effective_io_concurrency": "",
    "bgwriter_delay": "ms",
    "bgwriter_lru_maxpages": "",
    "commit_delay": "us",  # microseconds, but PostgreSQL takes it without a unit suffix
    "commit_siblings": "",
    "max_connections": "",
    "autovacuum": "",
}
KNOBS = tuple(KNOB_UNITS)
_NO_SUFFIX = {"commit_delay"}

_MEMORY = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 2**20, "16MB": 16 * 2**20, "GB": 2**30}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

#: Statistics read before and after a run; counters report their difference.
STATS: dict[str, tuple[str, str]] = {
    "pg_stat_wal": ("", "wal_records wal_fpi wal_bytes wal_buffers_full wal_write wal_sync"),
    "pg_stat_bgwriter": ("", "checkpoints_timed checkpoints_req buffers_checkpoint buffers_clean "
                             "buffers_backend buffers_alloc"),
    "pg_stat_database": ("datname = 'postgres'",
                         "xact_commit xact_rollback blks_read blks_hit temp_bytes deadlocks"),
}


def setting_text(name: str, value: Any) -> str:
    """A knob value as PostgreSQL takes it: ``128MB``, ``on``, ``0.9``; text passes as it is."""
    if isinstance(value, bool):
        return "on" if value else "off"
    unit = "" if name in _NO_SUFFIX else KNOB_UNITS.get(name, "")
    if isinstance(value, int):
        return f"{value}{unit}"
    if isinstance(value, float):
        number = str(int(value)) if value.is_integer() and unit else repr(value)
        return f"{number}{unit}"
    return str(value)


def read_back_sql() -> str:
    """One query of (name, setting, unit, type) rows: every knob, the version, the statistics."""
    names = ", ".join(f"'{name}'" for name in KNOBS)
    parts = [
        f"SELECT name, setting, coalesce(unit, ''), vartype FROM pg_settings "
        f"WHERE name IN ({names})",
        "SELECT 'server_version', current_setting('server_version'), '', 'string'",
    ]
    for view, (where, columns) in STATS.items():
        values = ", ".join(f"('{col}', v.{col}::text)" for col in columns.split())
        cond = f" WHERE {where}" if where else ""
        parts.append(
            f"SELECT 'stat.' || s.k, s.val, '', 'integer' FROM {view} v, LATERAL (VALUES {values}) "
            f"AS s(k, val){cond}"
        )
    return " UNION ALL ".join(parts)


Rows = Mapping[str, tuple[str, str, str]]


def parse_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """psql's unaligned, tab-separated rows as name -> (setting, unit, type)."""
    rows = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) == 4:
            rows[cols[0]] = (cols[1], cols[2], cols[3])
    return rows


def effective_config(rows: Rows) -> dict[str, Any]:
    """Every knob PostgreSQL reports, in the spec's type and unit."""
    config: dict[str, Any] = {}
    for name in KNOBS:
        if name in rows:
            setting, unit, vartype = rows[name]
            config[name] = convert(setting, unit, vartype, KNOB_UNITS[name])
    return config


def convert(setting: str, unit: str, vartype: str, spec_unit: str) -> Any:
    """A pg_settings value (in the unit pg_settings gives) in the spec's type and unit.

    A memory value that is not a whole number of spec units (a size rounded to 8 kB pages
    read in MB) stays a float, so the change shows.
    """
    if vartype == "bool":
        return setting == "on"
    if vartype not in ("integer", "real"):
        return setting
    number = float(setting)
    if unit in _MEMORY and spec_unit in _MEMORY:
        number = number * _MEMORY[unit] / _MEMORY[spec_unit]
    elif unit in _TIME and spec_unit in _TIME:
        number = number * _TIME[unit] / _TIME[spec_unit]
    if vartype == "integer" and number.is_integer():
        return int(number)
    return number


def stat_counters(rows: Rows) -> dict[str, float]:
    """The statistics of the read-back query, as ``pg_<column>`` counters."""
    out = {}
    for name, (value, _, _) in rows.items():
        if name.startswith("stat."):
            with_number = _number(value)
            if with_number is not None:
                out["pg_" + name[5:]] = with_number
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_PROGRESS = re.compile(
    r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+|nan|NaN) ms stddev ([\d.]+|nan|NaN)"
    r"(?:, (\d+) failed)?"
)
_SUMMARY = {
    "transactions": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed_transactions": re.compile(r"number of failed transactions: (\d+)"),
    "latency_avg_ms": re.compile(r"latency average = ([\d.]+) ms"),
    "latency_stddev_ms": re.compile(r"latency stddev = ([\d.]+) ms"),
    "initial_connection_ms": re.compile(r"initial connection time = ([\d.]+) ms"),
    "tps": re.compile(r"tps = ([\d.]+) \(without initial connection time\)"),
}


def parse_summary(stdout: str) -> dict[str, float]:
    """The figures of pgbench's final report that are present."""
    found = {}
    for key, pattern in _SUMMARY.items():
        match = pattern.search(stdout)
        if match:
            found[key] = float(match.group(1))
    return found


def parse_progress(stderr: str) -> list[dict[str, Any]]:
    """pgbench's per-second lines as samples: t, tps, latency mean and stddev, failures."""
    samples = []
    for match in _PROGRESS.finditer(stderr):
        t, tps, lat, std, failed = match.groups()
        samples.append({
            "t": float(t),
            "phase": "run",
            "tps": float(tps),
            "latency_ms": _number(lat),
            "latency_stddev_ms": _number(std),
            "failed": int(failed or 0),
        })
    return samples


class ProgressReader:
    """Reads pgbench's progress lines from its stderr file while it runs: after each new
    second, the mean tps and latency of the run so far, as (step, metrics) with step 0 the
    first second."""

    def __init__(self, path: Path) -> None:
        from targets.common.files import GrowingFile  # the trial process imports little

        self.file = GrowingFile(path)
        self.samples: list[dict[str, Any]] = []

    def read(self) -> list[tuple[int, dict[str, float]]]:
        lines = self.file.new_lines()
        found = []
        for sample in parse_progress(lines.decode("utf-8", errors="replace")):
            self.samples.append(sample)
            tps = [s["tps"] for s in self.samples]
            lat = [s["latency_ms"] for s in self.samples if s["latency_ms"] is not None]
            so_far = {"tps": sum(tps) / len(tps)}
            if lat:
                so_far["latency_avg_ms"] = sum(lat) / len(lat)
            found.append((len(self.samples) - 1, so_far))
        return found


def other_lines(stderr: str) -> list[str]:
    """pgbench's stderr without the progress and vacuum chatter: its warnings and errors."""
    skip = ("progress:", "starting vacuum", "pgbench (", "pgbench: setting random seed")
    return [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(skip)]
