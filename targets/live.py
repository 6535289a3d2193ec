"""Live systems: running instances of a service that knobflow did not start for a trial.

A trial owns its system from start to stop; a live instance is someone else's (a production
PostgreSQL or Redis, or a demo instance ``knobflow instance start`` launched): knobflow may only
read its counters and settings, and change a setting through the system's own runtime mechanism
(PostgreSQL ``ALTER SYSTEM`` + ``pg_reload_conf()``, Redis ``CONFIG SET`` + ``CONFIG REWRITE``).

This module owns the contract every live driver implements (``LiveSystem``) and what it deals in:

* ``Connection``: which system and where, never the password itself (that stays in a 0600 file);
* ``Snapshot``: the system's cumulative counters at one moment;
* ``Window``: what happened between two snapshots — the target's metrics (throughput, latency where
  the system reports it), the workload's fingerprint (read/write mix, sizes, ...) and resource use;
* ``LiveError`` (the system cannot be reached or answered wrongly: the machine's fault, exit 1) and
  ``ActuationRefused`` (a change the system cannot take at runtime, with the reason per knob).

Drivers: ``targets.live_redis``, ``targets.live_postgres``, ``targets.live_synthetic``
(``live_class(target)``). Launching a demo instance with a background load is
``targets.live_daemon``; the drivers provide its hooks (``launch_target``, ``connection_for``,
``load_command``).
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from targets.base import Target
from targets.common.errors import EnvironmentFault, KnobflowError, did_you_mean
from targets.registry import load_target
from targets.spec import KnobSpec

__all__ = [
    "ActuationRefused", "Connection", "LiveError", "LiveSystem", "Snapshot", "Window",
    "live_class", "live_system", "live_targets",
]

#: The live driver of each target that has one (module:class, imported when first used).
LIVE_DRIVERS: dict[str, str] = {
    "redis": "targets.live_redis:RedisLive",
    "postgres": "targets.live_postgres:PostgresLive",
    "synthetic": "targets.live_synthetic:SyntheticLive",
}
#: How long a restart command may take before the actuation counts as failed.
RESTART_TIMEOUT_S = 120.0


class LiveError(EnvironmentFault):
    """A live system could not be reached, refused knobflow, or answered what cannot be read."""


class ActuationRefused(KnobflowError):
    """Changes the system cannot take at runtime: ``reasons`` maps each knob to why."""

    def __init__(self, instance: str, reasons: Mapping[str, str]) -> None:
        self.reasons = dict(reasons)
        said = "; ".join(f"{k}: {why}" for k, why in sorted(self.reasons.items()))
        super().__init__(f"{instance}: refused, nothing was changed: {said}")


@dataclass(frozen=True)
class Connection:
    """Where a live system is: ``url`` carries no password; ``secret_file`` (0600) holds it.
    ``restart_command`` (run without a shell) restarts the system for knobs that need it."""

    target: str
    url: str
    secret_file: Path | None = None
    restart_command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["secret_file"] = str(self.secret_file) if self.secret_file else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Connection:
        secret = data.get("secret_file")
        return cls(target=str(data["target"]), url=str(data["url"]),
                   secret_file=Path(secret) if secret else None,
                   restart_command=data.get("restart_command") or None)


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters at one moment: ``t`` monotonic seconds, ``wall`` epoch seconds."""

    t: float
    wall: float
    values: dict[str, float]


@dataclass
class Window:
    """What a live system did between two snapshots.

    ``metrics``: the target's metric names (``rps``, ``tps``, ``latency_p99_ms``...), those the
    system's counters give; ``fingerprint``: workload features, named as the target's
    ``workload_features`` where they mean the same; ``counters``: resource use and raw rates,
    every value finite and >= 0."""

    start: float
    seconds: float
    metrics: dict[str, float]
    fingerprint: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(start=float(data["start"]), seconds=float(data["seconds"]),
                   metrics=dict(data.get("metrics", {})),
                   fingerprint=dict(data.get("fingerprint", {})),
                   counters=dict(data.get("counters", {})))


class LiveSystem(ABC):
    """The driver of one kind of live system (one instance per connection).

    Every config a driver returns or takes is in the target's knob names and types
    (``targets/specs/<target>.yaml``), whatever the system calls them natively."""

    #: The target whose knob spec, metrics and rules apply.
    target: ClassVar[str]
    #: The target's metrics a window reports (the others cannot be read from this system's
    #: counters); the measurement gate expects exactly these.
    observed_metrics: ClassVar[tuple[str, ...]]
    #: The window values (counters or fingerprint) that measure the system's scale: its data
    #: size, the memory its data takes. The watch counts a change of these as a scale change
    #: (``tasks.drift``), with the host's cores and memory beside them.
    scale_features: ClassVar[tuple[str, ...]] = ()

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.target_cls: type[Target] = load_target(connection.target)
        self.spec: KnobSpec = self.target_cls.knob_spec()

    # -- what a driver implements ---------------------------------------------------------------
    @abstractmethod
    def ping(self) -> str:
        """Connect and authenticate; the system's version. ``LiveError`` saying what is wrong."""

    @abstractmethod
    def read_config(self) -> dict[str, Any]:
        """Every knob of the spec as the system applies it now (read back, in spec types)."""

    @abstractmethod
    def runtime_refusals(self, changes: Mapping[str, Any]) -> dict[str, str]:
        """The knobs of ``changes`` that cannot be applied to this system now, each with why
        (it needs a restart and there is no restart command; the system does not know it)."""

    @abstractmethod
    def apply(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` through the system's runtime mechanism and make them persist
        (restarting with the restart command when a knob needs it). Raises
        ``ActuationRefused`` before changing anything when ``runtime_refusals`` is not empty."""

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """The system's cumulative counters now."""

    @abstractmethod
    def window(self, first: Snapshot, last: Snapshot) -> Window:
        """What happened between two snapshots."""

    # -- shared behaviour ------------------------------------------------------------------------
    def password(self) -> str | None:
        """The password from the connection's secret file (its first line), if it has one."""
        path = self.connection.secret_file
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").splitlines()[0].strip() or None
        except (OSError, IndexError) as exc:
            raise LiveError(f"cannot read the secret file {path}: {exc}") from None

    def observe(self, windows: int, seconds: float,
                on_window: Callable[[int, Window], None] | None = None) -> list[Window]:
        """``windows`` consecutive windows of ``seconds`` each (no gap between them)."""
        if windows < 1 or seconds <= 0:
            raise KnobflowError(f"observe needs windows >= 1 and seconds > 0 (got {windows}, "
                                f"{seconds})")
        out: list[Window] = []
        first = self.snapshot()
        start = first.t
        for i in range(windows):
            time.sleep(max(0.0, start + (i + 1) * seconds - time.monotonic()))
            last = self.snapshot()
            out.append(self.window(first, last))
            if on_window is not None:
                on_window(i, out[-1])
            first = last
        return out

    def restart(self) -> None:
        """Run the connection's restart command (no shell), then wait until the system answers."""
        command = self.connection.restart_command
        if not command:
            raise LiveError("this instance has no restart command (instance add --restart)")
        try:
            done = subprocess.run(shlex.split(command), capture_output=True, text=True,
                                  timeout=RESTART_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LiveError(f"the restart command failed: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise LiveError(f"the restart command exited {done.returncode}: {' / '.join(tail)}")
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                self.ping()
                return
            except LiveError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # -- launching a demo/test instance (targets.live_daemon calls these in its process) --------
    @classmethod
    def launch_target(cls, data_dir: Path, workload: Mapping[str, Any]) -> Target:
        """Start the system in ``data_dir`` with its default config, ready for load."""
        raise KnobflowError(f"knobflow cannot launch a {cls.target} instance")

    @classmethod
    def connection_for(cls, target: Target, data_dir: Path) -> Connection:
        """How knobflow reaches the system ``launch_target`` started."""
        raise KnobflowError(f"knobflow cannot launch a {cls.target} instance")

    @classmethod
    def load_command(cls, target: Target, workload: Mapping[str, Any]
                     ) -> tuple[list[str], dict[str, str] | None]:
        """One run of the background load generator for ``workload`` (the daemon runs it again
        when it ends, and anew when the workload changes), and its environment (None: ours)."""
        raise KnobflowError(f"knobflow cannot launch a {cls.target} instance")

    @classmethod
    def remove_launched(cls, data_dir: Path) -> None:
        """End whatever a launched system left in ``data_dir`` (its daemon was killed)."""
        cls_target = load_target(cls.target)
        cls_target.cleanup(data_dir)


def live_targets() -> list[str]:
    """The targets that have a live driver."""
    return sorted(LIVE_DRIVERS)


def live_class(target: str) -> type[LiveSystem]:
    """The live driver of ``target``; a clear error for a target without one."""
    ref = LIVE_DRIVERS.get(target)
    if ref is None:
        raise KnobflowError(
            f"target '{target}' has no live driver{did_you_mean(target, LIVE_DRIVERS)}; live "
            f"instances can be {', '.join(live_targets())}")
    module, _, name = ref.partition(":")
    cls: type[LiveSystem] = getattr(importlib.import_module(module), name)
    return cls


def live_system(connection: Connection) -> LiveSystem:
    """A driver connected (lazily) to ``connection``'s system."""
    return live_class(connection.target)(connection)
