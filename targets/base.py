"""The control interface: the base class every target system implements.

A ``Target`` object lives inside one trial process and drives one *instance* of a system (its
own data directory): ``start(config)`` starts the system or applies the config, ``run()`` runs the
workload and returns a ``Measurement`` (raw samples, counters, log lines, and the config the
system really applied), ``stop()`` stops it and leaves the instance healthy. The trial manager
(``tasks/explore.py``) runs this lifecycle in a child process with a hard timeout and calls the
class method ``cleanup(data_dir)`` after it had to kill one.

Targets are found by name through the ``knobflow.targets`` entry-point group (see
``targets/registry.py``), so a user's package can add its own.

Contract:
- a refused config raises ``ConfigRefused`` with the system's own message;
- a workload or benchmark that breaks raises ``BenchmarkError``;
- any other classified failure (out of memory, I/O error, a crash of the system) raises
  ``TrialFailed(FailureClass.X, message)``;
- ``Measurement.effective_config`` holds what the system reports after applying the config
  (read back, never echoed from the request), for every knob of the spec the system exposes;
- nothing outlives ``stop()`` or ``cleanup()``: no process, no lock on the data directory.
"""

from __future__ import annotations

import enum
import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from targets.common.errors import WorkloadError, did_you_mean, fmt_value

if TYPE_CHECKING:
    from targets.spec import KnobSpec

MAXIMIZE = "maximize"
MINIMIZE = "minimize"


class TrialStatus(enum.StrEnum):
    """How a trial ended, from the trial process to the tuner and MLflow."""

    OK = "ok"
    FAILED = "failed"  # with a FailureClass
    BLOCKED = "blocked"  # the rules kept it from running (nothing ran)
    PRUNED = "pruned"  # stopped early by the pruner: its intermediate values were clearly bad


class FailureClass(enum.StrEnum):
    """Why a trial produced no usable measurement."""

    REFUSED = "refused_config"  # the system rejected the config (start-up error, FATAL line)
    CRASH = "crash"  # the trial process or the system died (signal, abort)
    TIMEOUT = "timeout"  # the trial exceeded its hard timeout (a hang)
    OUT_OF_MEMORY = "out_of_memory"
    IO_ERROR = "io_error"
    BENCHMARK_ERROR = "benchmark_error"  # the workload driver failed or printed nothing usable
    TARGET_ERROR = "target_error"  # an unexpected exception in the target's own code
    INVALID = "invalid_measurement"  # the measurement did not pass cleaning
    INTERRUPTED = "interrupted"  # the tuning job was stopped while the trial ran
    BLOCKED = "blocked"  # an error rule kept the config from running (nothing ran)
    PRUNED = "pruned"  # the pruner stopped it early (clearly bad so far): not the config's fault


class ConfigRefused(Exception):
    """Raised by a target when the system refuses a config; the message is the system's own."""


class BenchmarkError(Exception):
    """Raised by a target when the workload driver fails or reports nothing usable."""


class TrialFailed(Exception):
    """Raised by a target for a failure of another class (out of memory, I/O error, crash)."""

    def __init__(self, failure_class: FailureClass, message: str) -> None:
        super().__init__(message)
        self.failure_class = FailureClass(failure_class)


@dataclass
class Measurement:
    """What one run of a workload on one config produced, before cleaning.

    ``metrics`` are the target's per-run figures (e.g. ``ops_per_s``); ``samples`` are
    per-interval rows (``t``, ``phase``, ``ops``, latency figures) that cleaning can re-aggregate;
    ``counters`` are system counters; ``log`` holds the tail of the system's and driver's output.
    """

    metrics: dict[str, float]
    effective_config: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ContractExamples:
    """Small inputs the contract test suite (``tests/targets/test_contract.py``) runs a target with.

    Every target, built-in or a user's, declares them so the same suite proves it behaves: the
    default config runs, a refused config fails with its class, a hanging config hits the timeout
    and leaves the instance usable, the effective config is read back, two instances run side by
    side, and nothing outlives a trial.
    """

    #: A short workload: a default-config trial of a few seconds.
    workload: Mapping[str, Any]
    #: A (partial) config the system refuses, and the failure class that must result.
    refused: Mapping[str, Any] | None = None
    refused_class: str = "refused_config"
    #: A (partial) config that makes the system hang; the trial must end by its timeout.
    hang: Mapping[str, Any] | None = None
    #: Hard timeout of the hang case, seconds (longer than a normal trial of ``workload`` on an
    #: idle machine). The checks' other trials run under the target's ``trial_timeout_s``.
    timeout_s: float = 20.0
    #: Executables that must be on PATH (the suite skips, or fails in CI, without them).
    requires: tuple[str, ...] = ()


class Target(ABC):
    """One kind of system knobflow can tune. Subclass it and register it as an entry point.

    Class attributes describe the target; an instance drives one system instance from inside a
    trial process.
    """

    #: Name under the ``knobflow.targets`` entry-point group.
    name: ClassVar[str]
    #: Knob spec file, relative to the module's folder (default: specs/<name>.yaml).
    spec_file: ClassVar[str | None] = None
    #: Workload parameters and their defaults; a value's type is the parameter's type.
    workload_defaults: ClassVar[Mapping[str, Any]] = {}
    #: Inclusive limits of numeric workload parameters.
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {}
    #: Metrics a run reports, each with the direction that is better.
    metrics: ClassVar[Mapping[str, str]] = {}
    default_objective: ClassVar[str]
    #: Hard timeout of one trial, seconds, unless the job sets one.
    trial_timeout_s: ClassVar[float] = 60.0
    #: File suffix of the system's own config format (e.g. ".sql"), if it has one.
    native_suffix: ClassVar[str | None] = None
    #: Seconds at the start of a run whose samples are warm-up (left out of the steady rate and
    #: the noise estimate that cleaning computes from the samples).
    warmup_s: ClassVar[float] = 0.0
    #: Whether ``run`` reports intermediate values (``report``), so a pruner can stop a trial
    #: whose values are clearly bad early (``--pruner``).
    reports_progress: ClassVar[bool] = False

    def __init__(self, data_dir: Path, workload: Mapping[str, Any], seed: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.workload = dict(workload)
        self.seed = seed
        #: Where ``report`` appends its lines; set by the trial process when the job prunes.
        self.progress_path: Path | None = None

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        """Report the metrics of the run so far (e.g. the mean rate up to interval ``step``;
        steps rise from 0) while ``run`` runs. The trial manager reads each report as it comes
        and may stop the trial there (a pruner: its process group is killed, as on a timeout,
        and ``cleanup`` tidies the instance). Does nothing when the job does not prune."""
        if self.progress_path is None:
            return
        import json

        line = json.dumps({"step": int(step), "metrics": {k: float(v) for k, v in
                                                        metrics.items()}}) + "\n"
        # one small append per report: a reader sees whole lines (or none of the last one)
        with open(self.progress_path, "a", encoding="utf-8") as fh:
            fh.write(line)

    # -- lifecycle, inside the trial process -------------------------------------------------
    @abstractmethod
    def start(self, config: Mapping[str, Any]) -> None:
        """Start the system on ``data_dir`` with ``config`` applied (or apply it if running)."""

    @abstractmethod
    def run(self) -> Measurement:
        """Run the workload once and return the raw measurement, effective config included."""

    def stop(self) -> None:  # noqa: B027 - optional hook, nothing to do for in-process targets
        """Stop what ``start`` started; leave the instance usable by the next trial."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod  # noqa: B027 - optional hook
    def cleanup(cls, data_dir: Path) -> None:
        """Called in the tuner after a trial process was killed: end leftovers of ``data_dir``."""

    # -- description, in the tuner --------------------------------------------------------------
    @classmethod
    def spec_path(cls) -> Path:
        import inspect

        module_dir = Path(inspect.getfile(cls)).resolve().parent
        rel = cls.spec_file or f"specs/{cls.name}.yaml"
        return module_dir / rel

    @classmethod
    def knob_spec(cls) -> KnobSpec:
        """The target's knob spec (parsed once per class)."""
        return _load_spec_cached(cls.spec_path())

    @classmethod
    def parse_workload(cls, values: Mapping[str, Any], source: str = "workload") -> dict[str, Any]:
        """Defaults overlaid with ``values``, coerced to the defaults' types and range-checked."""
        workload = dict(cls.workload_defaults)
        for key, raw in values.items():
            if key not in cls.workload_defaults:
                known = ", ".join(cls.workload_defaults) or "none"
                raise WorkloadError(
                    f"{source}: unknown workload parameter '{key}' for target '{cls.name}'"
                    f"{did_you_mean(str(key), cls.workload_defaults)}; known: {known}"
                )
            workload[key] = _coerce_workload(key, raw, cls.workload_defaults[key], source)
            if key in cls.workload_limits:
                low, high = cls.workload_limits[key]
                if not low <= workload[key] <= high:
                    raise WorkloadError(
                        f"{source}: workload parameter '{key}' = {fmt_value(workload[key])} is "
                        f"outside [{fmt_value(low)}, {fmt_value(high)}]"
                    )
        return workload

    @classmethod
    def normalize_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config as the system is documented to apply it (rounding to its granularity, its
        own documented sanitizing). Cleaning compares the effective config with this: any other
        difference makes the measurement misleading, and it is not learned from."""
        return dict(config)

    @classmethod
    def expectations_path(cls) -> Path:
        """The Great Expectations suite that gates this target's measurements (JSON, GE's format).

        Default: ``expectations/<name>.json`` next to the target's module; a target without one
        is gated by knobflow's generic suite (``tasks/expectations/default.json``).
        """
        import inspect

        return Path(inspect.getfile(cls)).resolve().parent / "expectations" / f"{cls.name}.json"

    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        """Numeric features of a workload (for transfer and drift detection)."""
        return {
            k: float(v)
            for k, v in workload.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        """Named variants (e.g. one per driver) the contract test suite runs; none by default."""
        return {}

    @classmethod
    def direction(cls, metric: str) -> str:
        return cls.metrics[metric]

    @classmethod
    def render_native(cls, config: Mapping[str, Any]) -> str | None:
        """The config in the system's own format (e.g. PRAGMA lines), or None if it has none."""
        return None


@functools.lru_cache(maxsize=64)
def _load_spec_cached(path: Path) -> KnobSpec:
    from targets.spec import load_spec  # YAML is not needed inside trial processes

    return load_spec(path)


def _coerce_workload(key: str, raw: Any, default: Any, source: str) -> Any:
    """Coerce a workload value given as YAML or ``KEY=VALUE`` text to the default's type."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                return int(raw)
            return int(str(raw).replace("_", ""))
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
        return str(raw)
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a finite number"}
        raise WorkloadError(
            f"{source}: workload parameter '{key}' must be "
            f"{expected.get(kind, kind.__name__)}, got {fmt_value(raw)}"
        ) from None
