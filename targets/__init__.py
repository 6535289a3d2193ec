"""Control interfaces: one class per target system, its knob spec, and finding targets by name."""

from targets.base import (
    MAXIMIZE,
    MINIMIZE,
    BenchmarkError,
    ConfigRefused,
    ContractExamples,
    FailureClass,
    Measurement,
    Target,
    TrialFailed,
)
from targets.common.errors import KnobflowError

__all__ = [
    "MAXIMIZE",
    "MINIMIZE",
    "BenchmarkError",
    "ConfigRefused",
    "ContractExamples",
    "FailureClass",
    "KnobflowError",
    "Measurement",
    "Target",
    "TrialFailed",
]
