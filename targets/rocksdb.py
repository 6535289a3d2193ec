"""The rocksdb target: RocksDB's options, tuned on a fill-then-read workload, with two drivers.

It owns the target's description (workload parameters, metrics, the knob spec
``specs/rocksdb.yaml`` in RocksDB's own option names), the lifecycle (a fresh DB directory
``<data_dir>/db`` per trial, every knob applied, the effective config read back from what RocksDB
wrote there), the clean-up after a killed trial, the config as an OPTIONS file (``.ini``), and
the contract examples of each driver:

- ``rocksdict`` (default): RocksDB in the trial process, from the PyPI wheel
  (``targets/rocksdb_rocksdict.py``);
- ``db_bench``: RocksDB's benchmark tool from Debian's rocksdb-tools, as a child process in the
  trial's process group (``targets/rocksdb_dbbench.py``).

The workload and the metrics are defined in ``targets/rocksdb_workload.py``; options, read-back
and the OPTIONS format in ``targets/rocksdb_options.py``. RocksDB clamps bad values silently
(write_buffer_size 0 -> 65536, max_write_buffer_number 1 -> 2, ...): only the read-back values
are reported, so a clamp shows as a changed knob.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from targets.base import (
    MAXIMIZE,
    MINIMIZE,
    BenchmarkError,
    ContractExamples,
    Measurement,
    Target,
)
from targets.process import last_lines
from targets.rocksdb_dbbench import DbBenchDriver
from targets.rocksdb_options import (
    db_files,
    full_config,
    read_effective,
    read_log,
    render_options_file,
    silent_changes,
    version,
)
from targets.rocksdb_rocksdict import RocksdictDriver
from targets.rocksdb_workload import (
    WORKLOAD_DEFAULTS,
    WORKLOAD_LIMITS,
    check_workload,
    phase_log,
    run_metrics,
    workload_problem,
)

DB_DIR = "db"
#: What a trial leaves in the data directory besides the DB: db_bench's output.
OUTPUT_GLOB = "db_bench-*"
#: Workload parameters that set how long a run is measured, not what the workload is.
MEASUREMENT_SETTINGS = ("ops",)
#: A config that makes writes stop for good: no L0 compaction ever, so L0 fills up to
#: level0_stop_writes_trigger (36) files of 256 KiB and every write waits (TARGETS.md).
HANG = {"level0_file_num_compaction_trigger": -1, "write_buffer_size": 262144}


class RocksdbTarget(Target):
    """RocksDB through rocksdict (in-process) or db_bench, one DB directory per instance."""

    name: ClassVar[str] = "rocksdb"
    native_suffix: ClassVar[str | None] = ".ini"
    workload_defaults: ClassVar[Mapping[str, Any]] = WORKLOAD_DEFAULTS
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = WORKLOAD_LIMITS
    metrics: ClassVar[Mapping[str, str]] = {
        "ops_per_s": MAXIMIZE,  # (load + run operations) / (load + run seconds)
        "read_ops_per_s": MAXIMIZE,  # run-phase reads / time spent in them (per thread)
        "write_ops_per_s": MAXIMIZE,  # load and run writes / time spent in them (per thread)
        "read_p50_us": MINIMIZE,  # run-phase read latency percentiles
        "read_p99_us": MINIMIZE,
    }
    default_objective: ClassVar[str] = "ops_per_s"
    trial_timeout_s: ClassVar[float] = 60.0

    def __init__(self, data_dir: Path, workload: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__(data_dir, {**WORKLOAD_DEFAULTS, **workload}, seed)
        self._driver: DbBenchDriver | RocksdictDriver | None = None
        self._requested: dict[str, Any] = {}

    @property
    def db_dir(self) -> Path:
        return self.data_dir / DB_DIR

    @classmethod
    def parse_workload(cls, values: Mapping[str, Any], source: str = "workload") -> dict[str, Any]:
        """Defaults overlaid with ``values``, checked, including the driver and its benchmark."""
        workload = super().parse_workload(values, source)
        check_workload(workload, source)
        return workload

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any]) -> None:
        """A fresh DB directory; every knob (defaults for those not given) handed to the driver."""
        problem = workload_problem(self.workload)
        if problem:
            raise BenchmarkError(problem)
        full = full_config(config)
        self.stop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._remove_files(self.data_dir)
        self._requested = dict(config)
        if self.workload["driver"] == "db_bench":
            self._driver = DbBenchDriver(self.db_dir, self.data_dir, self.workload, self.seed)
        else:
            self._driver = RocksdictDriver(self.db_dir, self.workload, self.seed)
        self._driver.start(full)

    def run(self) -> Measurement:
        """Run both phases, then read what RocksDB applied from the DB directory."""
        if self._driver is None:
            raise BenchmarkError("run() was called before start()")
        started = time.monotonic()
        result = self._driver.run()
        effective = read_effective(self.db_dir)
        if not effective:
            raise BenchmarkError(f"RocksDB wrote no OPTIONS file in {self.db_dir}")
        phases = {p.name: p for p in result.phases}
        counters = dict(result.counters) | db_files(self.db_dir)
        counters |= {f"{name}_seconds": p.seconds for name, p in phases.items()}
        if phases.get("run") and phases["run"].found is not None:
            counters["reads_found"] = float(phases["run"].found or 0)
        log = [
            f"RocksDB {version(self.db_dir)} via {self.workload['driver']}: "
            + " ".join(f"{k}={v}" for k, v in effective.items()),
            *silent_changes(self._requested, effective),
            *(phase_log(p) for p in result.phases),
            *result.log,
        ]
        warnings = last_lines(read_log(self.db_dir), lambda ln: "[WARN]" in ln or "[ERROR]" in ln,
                              n=3)
        if warnings:
            log.append(f"RocksDB LOG: {warnings}")
        return Measurement(
            metrics=run_metrics(result.phases),
            effective_config=effective,
            samples=result.samples,
            counters=counters,
            log=log,
            duration_s=time.monotonic() - started,
        )

    def stop(self) -> None:
        """Close an in-process DB; a db_bench has exited by the time run() returns."""
        if isinstance(self._driver, RocksdictDriver):
            self._driver.close()
        self._driver = None

    @classmethod
    def cleanup(cls, data_dir: Path) -> None:
        """After a killed trial: end a db_bench left on the instance, remove the half-written DB.

        The next trial starts on a fresh directory anyway; removing it here also drops a stale
        LOCK file and the space a hung trial filled.
        """
        DbBenchDriver.kill_leftovers(Path(data_dir) / DB_DIR)
        cls._remove_files(Path(data_dir))

    @classmethod
    def _remove_files(cls, data_dir: Path) -> None:
        shutil.rmtree(data_dir / DB_DIR, ignore_errors=True)
        for path in data_dir.glob(OUTPUT_GLOB):
            path.unlink(missing_ok=True)

    # -- description ----------------------------------------------------------------------------
    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        """Key count, value size, compressibility, read ratio, threads: not the run's length."""
        features = super().workload_features(workload)
        for name in MEASUREMENT_SETTINGS:
            features.pop(name, None)
        return features

    @classmethod
    def normalize_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """RocksDB's own option sanitizing (SanitizeOptions): a memtable merge needs a spare
        memtable, and writes cannot slow down before compaction would start."""
        out = dict(config)
        number = out.get("max_write_buffer_number")
        merge = out.get("min_write_buffer_number_to_merge")
        if isinstance(number, int) and isinstance(merge, int) and merge >= number:
            out["min_write_buffer_number_to_merge"] = max(1, number - 1)
        trigger = out.get("level0_file_num_compaction_trigger")
        slowdown = out.get("level0_slowdown_writes_trigger")
        if isinstance(trigger, int) and isinstance(slowdown, int) and 0 < slowdown < trigger:
            out["level0_slowdown_writes_trigger"] = trigger
        return out

    @classmethod
    def render_native(cls, config: Mapping[str, Any]) -> str:
        """The config as a RocksDB OPTIONS file (knobs not given at their spec defaults)."""
        return render_options_file(config)

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        return {
            "rocksdict": ContractExamples(
                workload={"driver": "rocksdict", "num_keys": 100_000, "ops": 100_000},
                # RocksDB refuses it at open: "block size exceeds maximum number (4GiB) allowed"
                refused={"block_size": 8 * 2**30},
                hang=HANG,
                timeout_s=12.0,
            ),
            "db_bench": ContractExamples(
                workload={"driver": "db_bench", "num_keys": 200_000, "ops": 200_000},
                # db_bench exits 1 at once: "Cannot parse compression type 'bogus'"
                refused={"compression": "bogus"},
                hang=HANG,
                timeout_s=12.0,
                requires=("db_bench",),
            ),
        }
