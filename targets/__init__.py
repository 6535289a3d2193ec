"""Control interfaces: one class per target system, its knob spec, and finding targets by name.

What a plug-in needs (``targets.base``) is imported with the package: a trial process needs it
anyway. Knob specs and the registry are imported when first used.
"""

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
    TrialStatus,
)
from targets.common.errors import KnobflowError
from targets.common.exports import lazy_exports

_LAZY, __getattr__ = lazy_exports(__name__, {
    "registry": ("available_targets", "load_target"),
    "spec": ("Knob", "KnobSpec"),
})
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
    "TrialStatus",
    *_LAZY,
]
