"""The rocksdict driver of the rocksdb target: RocksDB inside the trial process (PyPI rocksdict).

It owns turning a config into rocksdict ``Options``/``BlockBasedOptions`` (refusing what the
binding or RocksDB refuses, with their message), the two phases of the workload as timed Python
loops over raw byte keys and values (see ``rocksdb_workload``), and the counters of a run: the
trial process is the engine, so its CPU time and peak memory (``getrusage``) are ``server_*``.

The wheel bundles its own RocksDB (9.x for rocksdict 0.3.29), built without zlib: RocksDB would
record ``compression=zlib`` and store the blocks uncompressed, so zlib is refused here. rocksdict
is imported only when this driver starts.
"""

from __future__ import annotations

import contextlib
import random
import resource
import struct
import time
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from targets.base import BenchmarkError, ConfigRefused, FailureClass, TrialFailed
from targets.rocksdb_options import parse_statistics
from targets.rocksdb_workload import DriverRun, Phase

#: Knob -> rocksdict ``Options`` setter (the block-based table knobs are set apart).
OPTION_SETTERS = {
    "write_buffer_size": "set_write_buffer_size",
    "max_write_buffer_number": "set_max_write_buffer_number",
    "min_write_buffer_number_to_merge": "set_min_write_buffer_number_to_merge",
    "level0_file_num_compaction_trigger": "set_level_zero_file_num_compaction_trigger",
    "level0_slowdown_writes_trigger": "set_level_zero_slowdown_writes_trigger",
    "max_bytes_for_level_base": "set_max_bytes_for_level_base",
    "target_file_size_base": "set_target_file_size_base",
    "max_background_jobs": "set_max_background_jobs",
    "max_open_files": "set_max_open_files",
    "bytes_per_sync": "set_bytes_per_sync",
}
#: Compression name -> rocksdict ``DBCompressionType`` constructor (zlib: see the docstring).
COMPRESSIONS = {"none": "none", "snappy": "snappy", "lz4": "lz4", "lz4hc": "lz4hc",
                "zstd": "zstd", "bzip2": "bz2"}
_PAD = b"00000000"  # keys are 8 big-endian bytes padded to 16, as db_bench's
_CHUNK = 20_000  # operations drawn at a time, outside the timed loops
_SAMPLE_S = 0.5


def _binding_refusal(knob: str, value: Any, exc: Exception) -> ConfigRefused:
    return ConfigRefused(f"rocksdict refused {knob}={value!r}: {type(exc).__name__}: {exc}")


def build_options(config: Mapping[str, Any]) -> tuple[Any, Any]:
    """rocksdict ``Options`` for ``config`` and the block cache they use (kept alive with them)."""
    import rocksdict

    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.enable_statistics()
    table = rocksdict.BlockBasedOptions()
    cache = None
    for knob, value in config.items():
        try:
            if knob in OPTION_SETTERS:
                getattr(opts, OPTION_SETTERS[knob])(value)
            elif knob == "compression":
                if value not in COMPRESSIONS:
                    raise ConfigRefused(
                        f"compression={value!r}: the rocksdict wheel compresses with "
                        f"{', '.join(COMPRESSIONS)} (its RocksDB is built without zlib)"
                    )
                kind = getattr(rocksdict.DBCompressionType, COMPRESSIONS[value])()
                opts.set_compression_type(kind)
            elif knob == "block_size":
                table.set_block_size(value)
            elif knob == "block_cache_size":
                cache = rocksdict.Cache(value)
                table.set_block_cache(cache)
            elif knob == "bloom_bits":
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TypeError(f"bits per key must be a number, got {type(value).__name__}")
                if value > 0:
                    table.set_bloom_filter(value, False)
            elif knob == "cache_index_and_filter_blocks":
                table.set_cache_index_and_filter_blocks(value)
        except (OverflowError, TypeError, ValueError) as exc:
            raise _binding_refusal(knob, value, exc) from None
    opts.set_block_based_table_factory(table)
    return opts, cache


def _value_buffer(rng: random.Random, value_size: int, ratio: float) -> bytes:
    """1 MiB of values that compress to about ``ratio``: random runs repeated (as db_bench's)."""
    raw = max(1, round(value_size * ratio))
    pieces = []
    size = 0
    while size < (1 << 20) + value_size:
        run = rng.randbytes(raw)
        piece = (run * (value_size // raw + 1))[:value_size]
        pieces.append(piece)
        size += value_size
    return b"".join(pieces)


class RocksdictDriver:
    """Opens RocksDB in-process on ``db_dir`` with a config, and runs the workload on it."""

    def __init__(self, db_dir: Path, workload: Mapping[str, Any], seed: int) -> None:
        self.db_dir = db_dir
        self.workload = dict(workload)
        self.seed = seed
        self.db: Any = None
        self._opts: Any = None
        self._cache: Any = None
        self._rusage_start: resource.struct_rusage | None = None

    def start(self, config: Mapping[str, Any]) -> None:
        try:
            import rocksdict
        except ImportError:
            raise BenchmarkError(
                "rocksdict is not installed (pip install rocksdict), or use the db_bench driver"
            ) from None
        self._rusage_start = resource.getrusage(resource.RUSAGE_SELF)
        self._opts, self._cache = build_options(config)
        try:
            self.db = rocksdict.Rdict(str(self.db_dir), self._opts)
        except Exception as exc:  # rocksdict raises a plain Exception with RocksDB's status
            raise _open_failure(exc) from None

    def run(self) -> DriverRun:
        if self.db is None:
            raise BenchmarkError("run() was called before start()")
        w = self.workload
        rng = random.Random(self.seed)
        values = _value_buffer(rng, int(w["value_size"]), float(w["compression_ratio"]))
        samples: list[dict[str, Any]] = []
        clock = time.perf_counter_ns
        origin = clock()
        try:
            load = self._phase("load", int(w["num_keys"]), 0.0, rng, values, samples, origin)
            started = clock()
            self.db.flush(True)
            flush_s = (clock() - started) / 1e9
            run = self._phase("run", int(w["ops"]), float(w["read_ratio"]), rng, values,
                              samples, origin)
        except Exception as exc:
            # RocksDB's errors come as a plain Exception with its status text; others are bugs
            if type(exc) is Exception or isinstance(exc, (OSError, MemoryError)):
                raise _io_failure(exc) from None
            raise
        end = resource.getrusage(resource.RUSAGE_SELF)
        begin = self._rusage_start or end
        cpu = (end.ru_utime + end.ru_stime) - (begin.ru_utime + begin.ru_stime)
        counters = parse_statistics(self._opts.get_statistics() or "")
        counters |= {"server_cpu_s": round(cpu, 4),
                     "server_peak_rss_mb": round(end.ru_maxrss / 1024.0, 2),
                     "client_cpu_s": 0.0, "client_peak_rss_mb": 0.0,
                     "flush_s": round(flush_s, 6)}
        return DriverRun(phases=[load, run], samples=samples, counters=counters)

    def _phase(self, name: str, ops: int, read_ratio: float, rng: random.Random, values: bytes,
               samples: list[dict[str, Any]], origin: int) -> Phase:
        """``ops`` operations on random keys: reads with probability ``read_ratio``, else puts."""
        db, clock, pack = self.db, time.perf_counter_ns, struct.Struct(">Q").pack
        n_keys, value_size = int(self.workload["num_keys"]), int(self.workload["value_size"])
        span = len(values) - value_size
        read_ns = array("q")
        write_ns = reads = found = writes = 0
        phase_ns = win_ns = win_ops = 0
        offset = 0
        bench = "fillrandom" if name == "load" else (
            "readrandom" if read_ratio >= 1.0 else "readrandomwriterandom")
        done = 0
        while done < ops:
            n = min(_CHUNK, ops - done)
            keys = [pack(rng.randrange(n_keys)) + _PAD for _ in range(n)]
            is_read = [rng.random() < read_ratio for _ in range(n)]
            vals = []
            for _ in range(n):
                vals.append(values[offset:offset + value_size])
                offset = offset + value_size if offset + 2 * value_size <= span else 0
            t_chunk = clock()
            for key, read, value in zip(keys, is_read, vals, strict=True):
                t0 = clock()
                if read:
                    got = db.get(key)
                    t1 = clock()
                    read_ns.append(t1 - t0)
                    reads += 1
                    found += got is not None
                else:
                    db.put(key, value)
                    t1 = clock()
                    write_ns += t1 - t0
                    writes += 1
            chunk_ns = clock() - t_chunk
            phase_ns += chunk_ns
            win_ns += chunk_ns
            win_ops += n
            done += n
            if win_ns >= _SAMPLE_S * 1e9 or done == ops:
                samples.append({"t": round((clock() - origin) / 1e9, 6), "phase": name,
                                "kind": "interval", "ops": win_ops,
                                "seconds": round(win_ns / 1e9, 6),
                                "ops_per_s": win_ops * 1e9 / max(1, win_ns)})
                win_ns = win_ops = 0
        phase = Phase(name=name, benchmark=bench, ops=ops, seconds=phase_ns / 1e9,
                      reads=reads, writes=writes,
                      write_mean_us=write_ns / writes / 1000.0 if writes else 0.0)
        if reads:
            ordered = sorted(read_ns)
            phase.read_mean_us = sum(ordered) / reads / 1000.0
            phase.read_p50_us = _percentile(ordered, 0.50)
            phase.read_p99_us = _percentile(ordered, 0.99)
            phase.found = found
        samples.append(phase.sample((clock() - origin) / 1e9))
        return phase

    def close(self) -> None:
        """Close the DB (RocksDB's background work ends and the LOCK is released)."""
        db, self.db = self.db, None
        if db is not None:
            with contextlib.suppress(Exception):  # a failed close leaves nothing to undo
                db.close()
            del db
        self._opts = self._cache = None


def _percentile(sorted_ns: list[int] | array, q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond latencies, in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, min(len(sorted_ns), round(q * len(sorted_ns) + 0.5)))
    return sorted_ns[rank - 1] / 1000.0


def _open_failure(exc: Exception) -> Exception:
    """RocksDB's refusal at open (an invalid option), or another class from its status text."""
    text = str(exc)
    if "Invalid argument" in text or "Not implemented" in text or "not supported" in text:
        return ConfigRefused(f"RocksDB refused to open with this config: {text}")
    return _io_failure(exc)


def _io_failure(exc: Exception) -> Exception:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "Cannot allocate memory" in text:
        return TrialFailed(FailureClass.OUT_OF_MEMORY, text)
    if any(s in text for s in ("IO error", "Too many open files", "No space left", "Corruption")):
        return TrialFailed(FailureClass.IO_ERROR, text)
    return BenchmarkError(f"RocksDB failed during the workload: {text}")
