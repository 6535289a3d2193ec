"""The rocksdb target's workload: its parameters, their checks, and the metrics of a run.

Both drivers run the same two phases, shaped like db_bench's: *load* writes ``num_keys`` values
under keys drawn uniformly from ``num_keys`` 16-byte keys (as ``fillrandom``: about 63% of them
distinct), then RocksDB flushes the memtable; *run* does ``ops`` operations on keys drawn the
same way, reads with probability ``read_ratio`` and overwrites otherwise (``readrandom``, or
``readrandomwriterandom`` when ``read_ratio`` < 1). db_bench alone also runs ``readwhilewriting``
(``threads`` readers and one writer) and ``mixgraph`` (gets and puts by ``read_ratio``).

Metrics, from each phase's operation count, duration and per-operation latencies:
- ``ops_per_s``: (load operations + run operations) / (load seconds + run seconds), each phase
  timed by the driver (db_bench's own seconds per benchmark; rocksdict: the wall time of the
  phase's operation loop). The flush between the phases is in neither.
- ``read_ops_per_s``: run-phase reads / time spent in them (1e6 / mean read latency, per thread).
- ``write_ops_per_s``: all writes (load and run) / time spent in them, per thread.
- ``read_p50_us``, ``read_p99_us``: percentiles of the run phase's read latencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from targets.common.errors import WorkloadError

DRIVERS = ("rocksdict", "db_bench")
BENCHMARKS = {
    "readrandom": DRIVERS,
    "readwhilewriting": ("db_bench",),
    "mixgraph": ("db_bench",),
}

WORKLOAD_DEFAULTS: dict[str, Any] = {
    "driver": "rocksdict",  # rocksdict (in-process, pip only) or db_bench (rocksdb-tools)
    "num_keys": 300_000,  # load-phase writes, and the size of the key space
    "value_size": 100,  # bytes per value
    "compression_ratio": 0.5,  # share of a value's bytes that are random (db_bench's flag)
    "ops": 300_000,  # run-phase operations
    "read_ratio": 1.0,  # share of run-phase operations that are reads (the rest overwrite)
    "benchmark": "readrandom",  # run phase: readrandom | readwhilewriting | mixgraph (db_bench)
    "threads": 1,  # run-phase client threads (db_bench only; rocksdict runs one)
}
WORKLOAD_LIMITS: dict[str, tuple[float, float]] = {
    "num_keys": (1000, 100_000_000),
    "value_size": (1, 1_048_576),
    "compression_ratio": (0.01, 1.0),
    "ops": (100, 1_000_000_000),
    "read_ratio": (0.0, 1.0),
    "threads": (1, 64),
}


def workload_problem(workload: Mapping[str, Any]) -> str | None:
    """Why a combination of workload parameters cannot run, or None."""
    driver = workload.get("driver", WORKLOAD_DEFAULTS["driver"])
    if driver not in DRIVERS:
        return (
            f"workload parameter 'driver' = {driver!r} is not a driver of the rocksdb target; "
            f"drivers are {', '.join(map(repr, DRIVERS))} (rocksdict runs RocksDB in-process "
            "from the pip wheel; db_bench needs /usr/bin/db_bench from rocksdb-tools)"
        )
    benchmark = workload.get("benchmark", WORKLOAD_DEFAULTS["benchmark"])
    if benchmark not in BENCHMARKS:
        return (
            f"workload parameter 'benchmark' = {benchmark!r} is unknown; "
            f"use one of {', '.join(map(repr, BENCHMARKS))}"
        )
    if driver not in BENCHMARKS[benchmark]:
        return (
            f"benchmark {benchmark!r} needs the db_bench driver; the rocksdict driver runs "
            "'readrandom' (set read_ratio for a read/write mix)"
        )
    if driver == "rocksdict" and int(workload.get("threads", 1)) != 1:
        return "the rocksdict driver runs one thread; use driver 'db_bench' for threads > 1"
    return None


def check_workload(workload: Mapping[str, Any], source: str) -> None:
    problem = workload_problem(workload)
    if problem:
        raise WorkloadError(f"{source}: {problem}")


@dataclass
class Phase:
    """One phase of a run, as the driver measured it."""

    name: str  # "load" or "run"
    benchmark: str  # db_bench's name for what the phase did (fillrandom, readrandom, ...)
    ops: int
    seconds: float
    reads: int = 0
    read_mean_us: float = 0.0
    read_p50_us: float | None = None
    read_p99_us: float | None = None
    writes: int = 0
    write_mean_us: float = 0.0
    found: int | None = None  # reads that found their key

    def sample(self, t: float) -> dict[str, Any]:
        """The phase as one sample row (``kind`` phase; interval rows have ``kind`` interval)."""
        row: dict[str, Any] = {
            "t": round(t, 6),
            "phase": self.name,
            "kind": "phase",
            "benchmark": self.benchmark,
            "ops": self.ops,
            "seconds": round(self.seconds, 6),
            "ops_per_s": self.ops / self.seconds if self.seconds > 0 else 0.0,
        }
        if self.reads:
            row["read_mean_us"] = self.read_mean_us
        if self.writes:
            row["write_mean_us"] = self.write_mean_us
        return row


@dataclass
class DriverRun:
    """What a driver's run produced, before the target adds the effective config."""

    phases: list[Phase]
    samples: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


def run_metrics(phases: list[Phase]) -> dict[str, float]:
    """The target's metrics from the phases (see the module docstring for each definition)."""
    ops = sum(p.ops for p in phases)
    seconds = sum(p.seconds for p in phases)
    metrics = {"ops_per_s": ops / seconds if seconds > 0 else 0.0}
    reads = sum(p.reads for p in phases)
    read_us = sum(p.reads * p.read_mean_us for p in phases)
    if reads and read_us > 0:
        metrics["read_ops_per_s"] = reads * 1e6 / read_us
    writes = sum(p.writes for p in phases)
    write_us = sum(p.writes * p.write_mean_us for p in phases)
    if writes and write_us > 0:
        metrics["write_ops_per_s"] = writes * 1e6 / write_us
    run = [p for p in phases if p.name == "run" and p.read_p50_us is not None]
    if run:
        metrics["read_p50_us"] = float(run[-1].read_p50_us or 0.0)
        metrics["read_p99_us"] = float(run[-1].read_p99_us or 0.0)
    return metrics


def phase_log(phase: Phase) -> str:
    """One log line per phase."""
    text = (
        f"{phase.name} ({phase.benchmark}): {phase.ops} ops in {phase.seconds:.3f} s, "
        f"{phase.ops / phase.seconds if phase.seconds > 0 else 0.0:.0f} ops/s"
    )
    if phase.reads:
        text += f"; reads mean {phase.read_mean_us:.2f} us"
        if phase.read_p99_us is not None:
            text += f" p50 {phase.read_p50_us:.2f} p99 {phase.read_p99_us:.2f}"
        if phase.found is not None:
            text += f", {phase.found} of {phase.reads} found"
    if phase.writes:
        text += f"; writes mean {phase.write_mean_us:.2f} us"
    return text
