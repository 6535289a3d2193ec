"""Prefect flows that chain knobflow's tasks, and the ``knobflow`` command.

Every name below is imported when first used (``knobflow --help`` must not wait for Prefect).
"""

from targets.common.exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "cli": ("app", "main"),
    "job": ("Job", "prepare_job"),
    "regression": ("RegressionCheck", "check_regression", "regression_check"),
    "report": ("RunSummary", "TuneListener"),
    "spec": ("JobSpec",),
    "tune": ("tune",),
    "watch": ("watch_flow",),
})
