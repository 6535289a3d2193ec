"""The bottom layer every package may use: errors, settings, reading and writing files, locks.

It imports nothing of knobflow's own beyond itself (``tests/test_architecture.py``)."""

from targets.common.errors import (
    ConfigError,
    DiskFull,
    EnvironmentFault,
    JobError,
    KnobflowError,
    SpecError,
    TargetNotFoundError,
    WorkloadError,
)

__all__ = [
    "ConfigError",
    "DiskFull",
    "EnvironmentFault",
    "JobError",
    "KnobflowError",
    "SpecError",
    "TargetNotFoundError",
    "WorkloadError",
]
