"""The db_bench driver of the rocksdb target: RocksDB's own benchmark tool as a child process.

It owns the command lines (every knob as the db_bench flag of the same option; ``--db`` inside
the instance's data directory), the two invocations of a trial (``fillrandom,flush`` on a new
DB, then the run-phase benchmark on it with ``--use_existing_db``), parsing db_bench's output
(per-benchmark summary lines, ``--histogram`` latency blocks, ``--stats_interval_seconds``
lines, the ``--statistics`` dump), classifying its failures from its own messages, and ending a
db_bench a killed trial left behind.

db_bench is the engine and the benchmark in one process: its CPU time and peak memory (from
``wait4``) are reported as ``server_*`` counters; ``client_*`` stay 0.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from targets.base import BenchmarkError, ConfigRefused, FailureClass, TrialFailed
from targets.process import ClientRun, Usage, kill_tree, last_lines, run_client
from targets.rocksdb_options import KNOBS, flag_text, parse_statistics
from targets.rocksdb_workload import DriverRun, Phase

DB_BENCH = "db_bench"
#: db_bench flag of each knob (the option's own name unless db_bench calls it otherwise).
FLAGS = {knob: knob for knob in KNOBS} | {
    "compression": "compression_type",
    "block_cache_size": "cache_size",
    "max_open_files": "open_files",
}
#: A hang is ended by the trial timeout (the tuner kills the trial's process group); this only
#: bounds a db_bench run outside the tuner.
RUN_LIMIT_S = 3600.0

_SUMMARY = re.compile(
    r"^(?P<name>\w+)\s*:\s*(?P<us>\S+) micros/op (?P<rate>\d+) ops/sec"
    r"(?: (?P<sec>[\d.]+) seconds (?P<ops>\d+) operations)?;(?P<rest>.*)$"
)
_HIST = re.compile(r"^Microseconds per (\w+):")
_COUNT = re.compile(r"^Count: (\d+) Average: (\S+)")
_PCT = re.compile(r"P50: (\S+) P75: \S+ P99: (\S+)")
_FOUND = re.compile(r"\((\d+) of (\d+) found\)")
_MIXED_FOUND = re.compile(r"found:(\d+)")
_MIXGRAPH_FOUND = re.compile(r"reads (\d+) in (\d+) found")
_INTERVAL = re.compile(
    r"\.\.\. thread (\d+): \((\d+),(\d+)\) ops and \(([\d.]+),([\d.]+)\) ops/second "
    r"in \(([\d.]+),([\d.]+)\) seconds"
)
_OOM = re.compile(r"bad_alloc|Cannot allocate memory|out of memory", re.I)
_IO = re.compile(r"IO error|Too many open files|No space left|Read-only file system|Corruption")
_REFUSED = re.compile(
    r"ERROR: (unknown command line flag|illegal value|failed validation)|Cannot parse|"
    r"Invalid argument|Not implemented|not linked with the binary|not supported",
    re.I,
)
_ERROR_LINE = re.compile(
    r"error|ERROR|Cannot|Invalid|Assertion|Aborted|terminate|Too many|No space|fault", re.I
)


def db_bench_path() -> str | None:
    return shutil.which(DB_BENCH) or (
        "/usr/bin/db_bench" if Path("/usr/bin/db_bench").exists() else None
    )


@dataclass
class Benchmark:
    """One benchmark of db_bench's output: its summary line and latency histograms."""

    name: str
    ops: int
    seconds: float
    micros_per_op: float
    rest: str
    histograms: dict[str, tuple[int, float, float | None, float | None]] = field(
        default_factory=dict
    )  # op type -> (count, mean us, p50 us, p99 us)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def parse_benchmarks(stdout: str) -> list[Benchmark]:
    """Summary lines and the histograms printed after each (``--histogram``), in order."""
    found: list[Benchmark] = []
    hist_op: str | None = None
    for raw in stdout.replace("\r", "\n").splitlines():
        line = raw.strip()
        summary = _SUMMARY.match(line)
        if summary:
            rate = int(summary["rate"])
            ops = int(summary["ops"]) if summary["ops"] else 0
            seconds = float(summary["sec"]) if summary["sec"] else (ops / rate if rate else 0.0)
            found.append(Benchmark(summary["name"], ops, seconds, _float(summary["us"]),
                                   summary["rest"]))
            hist_op = None
            continue
        hist = _HIST.match(line)
        if hist and found:
            hist_op = hist.group(1)
            continue
        count = _COUNT.match(line)
        if count and hist_op and found:
            found[-1].histograms[hist_op] = (int(count[1]), _float(count[2]), None, None)
            continue
        pct = _PCT.search(line)
        if pct and hist_op and found and hist_op in found[-1].histograms:
            n, mean, _, _ = found[-1].histograms[hist_op]
            found[-1].histograms[hist_op] = (n, mean, _float(pct[1]), _float(pct[2]))
            hist_op = None
    return found


def parse_intervals(text: str, phase: str, offset: float) -> list[dict[str, Any]]:
    """``--stats_interval_seconds`` lines as interval samples, timed from the trial's start."""
    rows = []
    for match in _INTERVAL.finditer(text):
        rows.append({
            "t": round(offset + float(match[7]), 6),
            "phase": phase,
            "kind": "interval",
            "thread": int(match[1]),
            "ops": int(match[2]),
            "seconds": float(match[6]),
            "ops_per_s": float(match[4]),
        })
    return rows


def classify_failure(run: ClientRun, what: str) -> Exception:
    """The exception for a db_bench that failed, from its own messages and exit status."""
    text = run.stdout + "\n" + run.stderr
    errors = last_lines(text.replace("\r", "\n"), _ERROR_LINE.search, n=3)
    tail = errors or last_lines(text.replace("\r", "\n"), n=3)
    if run.timed_out:
        return TrialFailed(FailureClass.TIMEOUT, f"db_bench {what} ran past {RUN_LIMIT_S:g} s")
    if _OOM.search(text):
        return TrialFailed(FailureClass.OUT_OF_MEMORY, f"db_bench {what}: {tail}")
    if _IO.search(text):
        return TrialFailed(FailureClass.IO_ERROR, f"db_bench {what}: {tail}")
    if run.returncode > 0 and _REFUSED.search(text):
        return ConfigRefused(f"db_bench refused the config: {errors or tail}")
    if run.returncode < 0:
        name = signal.Signals(-run.returncode).name
        return TrialFailed(FailureClass.CRASH, f"db_bench {what} killed by {name}: {tail}")
    return BenchmarkError(f"db_bench {what} exited with code {run.returncode}: {tail}")


class DbBenchDriver:
    """Runs a trial's two db_bench invocations against ``db_dir``."""

    def __init__(self, db_dir: Path, log_dir: Path, workload: Mapping[str, Any], seed: int):
        self.db_dir = db_dir
        self.log_dir = log_dir
        self.workload = dict(workload)
        self.seed = seed
        self.flags: list[str] = []
        self.executable = db_bench_path()

    def start(self, config: Mapping[str, Any]) -> None:
        if self.executable is None:
            raise BenchmarkError(
                "db_bench is not installed (apt-get install rocksdb-tools), or use the "
                "rocksdict driver (workload driver=rocksdict)"
            )
        self.flags = [f"--{FLAGS[knob]}={flag_text(value)}" for knob, value in config.items()]

    def command(self, phase: str) -> list[str]:
        w = self.workload
        threads = int(w["threads"]) if phase == "run" else 1
        cmd = [
            str(self.executable),
            f"--db={self.db_dir}",
            f"--num={int(w['num_keys'])}",
            f"--value_size={int(w['value_size'])}",
            f"--compression_ratio={float(w['compression_ratio'])}",
            f"--threads={threads}",
            # db_bench derives its seed from the clock when given 0
            f"--seed={2 * self.seed + (1 if phase == 'load' else 2)}",
            "--statistics",
            "--histogram",
            "--stats_interval_seconds=1",
        ]
        if phase == "load":
            cmd += ["--benchmarks=fillrandom,flush", "--use_existing_db=0"]
        else:
            cmd += ["--use_existing_db=1", *self._run_benchmark(threads)]
        return cmd + self.flags

    def _run_benchmark(self, threads: int) -> list[str]:
        w = self.workload
        reads = max(1, int(w["ops"]) // threads)  # db_bench's --reads is per thread
        ratio = float(w["read_ratio"])
        benchmark = str(w["benchmark"])
        if benchmark == "mixgraph":
            return ["--benchmarks=mixgraph", f"--reads={reads}", f"--mix_get_ratio={ratio}",
                    f"--mix_put_ratio={1 - ratio}", "--mix_seek_ratio=0"]
        if benchmark == "readrandom" and ratio < 1.0:
            return ["--benchmarks=readrandomwriterandom", f"--reads={reads}",
                    f"--readwritepercent={round(100 * ratio)}"]
        return [f"--benchmarks={benchmark}", f"--reads={reads}"]

    def run(self) -> DriverRun:
        phases: list[Phase] = []
        samples: list[dict[str, Any]] = []
        usage = Usage()
        counters: dict[str, float] = {}
        log: list[str] = []
        t = 0.0
        for name in ("load", "run"):
            run = run_client(self.command(name), timeout=RUN_LIMIT_S, log_dir=self.log_dir,
                             name=f"db_bench-{name}")
            usage.cpu_s += run.usage.cpu_s
            usage.peak_rss_mb = max(usage.peak_rss_mb, run.usage.peak_rss_mb)
            if run.returncode != 0 or run.timed_out:
                raise classify_failure(run, name)
            benchmarks = [b for b in parse_benchmarks(run.stdout) if b.ops > 0]
            if not benchmarks:
                raise BenchmarkError(
                    f"db_bench {name} printed no benchmark result: "
                    f"{last_lines(run.stdout + run.stderr, n=3)}"
                )
            phase = _phase(name, benchmarks[-1])
            samples += parse_intervals(run.stdout + "\n" + run.stderr, name, t)
            t += phase.seconds
            samples.append(phase.sample(t))
            phases.append(phase)
            for key, value in parse_statistics(run.stdout).items():
                counters[key] = counters.get(key, 0.0) + value
            log += [ln.strip() for ln in run.stdout.splitlines() if _SUMMARY.match(ln.strip())]
        counters |= usage.counters("server") | Usage().counters("client")
        return DriverRun(phases=phases, samples=samples, counters=counters, log=log)

    @staticmethod
    def kill_leftovers(db_dir: Path) -> int:
        """End every db_bench still running on ``db_dir`` (matched by its ``--db`` flag)."""
        marker = f"--db={db_dir}"
        killed = 0
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmd = proc.info["cmdline"] or []
                if cmd and Path(cmd[0]).name == DB_BENCH and marker in cmd:
                    kill_tree(proc.pid)
                    killed += 1
        return killed


def _phase(name: str, bench: Benchmark) -> Phase:
    """A phase from a benchmark's summary and its read/write histograms."""
    phase = Phase(name=name, benchmark=bench.name, ops=bench.ops, seconds=bench.seconds)
    if "read" in bench.histograms:
        count, mean, p50, p99 = bench.histograms["read"]
        phase.reads, phase.read_mean_us = count, mean
        phase.read_p50_us, phase.read_p99_us = p50, p99
    if "write" in bench.histograms:
        phase.writes, phase.write_mean_us = bench.histograms["write"][:2]
    elif bench.name.startswith("fill"):
        phase.writes, phase.write_mean_us = bench.ops, bench.micros_per_op
    for pattern in (_FOUND, _MIXED_FOUND, _MIXGRAPH_FOUND):
        match = pattern.search(bench.rest)
        if match:
            # readwhilewriting prints one reader's count: keep only counts of all the reads
            of = int(match.group(2)) if pattern.groups > 1 else phase.reads
            phase.found = int(match.group(1)) if of == phase.reads else None
            break
    return phase
