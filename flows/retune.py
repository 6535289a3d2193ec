"""The re-tune flow: what a drift event on a live instance starts (``prefect.yaml``, the
``<target>-on-drift`` deployments, whose trigger matches ``knobflow.drift.detected``).

``retune_flow(instance=NAME, workload={...})`` tunes the instance's service on a test instance of
its target set to the observed workload (a tune job: transfer from the service's models and
siblings' configs shortens it; the job trains the service's models, so the champion learns the
new workload), then applies the recommendation to the service's instances as a canary
(``flows.apply``): recommend, apply, verify, keep or roll back, one instance after another. The
routing (event to run) is Prefect's: an automation made from the deployment's trigger.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.apply import apply_flow
from flows.tune import tune
from targets.common.settings import knobflow_home
from tasks.instances import InstanceStore

__all__ = ["retune_flow", "test_instance_name"]


def test_instance_name(instance: str) -> str:
    """The test instance a re-tune of live instance ``instance`` runs its trials on."""
    return f"retune-{instance}"[:64]


test_instance_name.__test__ = False  # type: ignore[attr-defined] - not a pytest test


@flow(name="retune", log_prints=False)
def retune_flow(instance: str, workload: dict[str, Any] | None = None,
                home: str | None = None, budget: int = 15, canary: bool = True,
                windows: int | None = None, window_s: float | None = None) -> dict[str, Any]:
    """Re-tune the service of live ``instance`` for its observed ``workload``, then apply the
    result to the service's instances (a canary) or to ``instance`` alone.

    Args:
        instance: The live instance whose drift started this run.
        workload: The observed workload (the drift event's); default: the instance's record.
        home: State directory (default ./.knobflow, or $KNOBFLOW_HOME).
        budget: Trials of the re-tune job (transfer from the service shortens the search).
        canary: Apply to every instance of the service, one after another (or only to instance).
        windows: Windows before and after each change (default: each instance's policy).
        window_s: Seconds per window (default: each instance's policy).
    """
    logger = get_run_logger()
    root = knobflow_home(home)
    live = InstanceStore(root).get(instance)
    observed = {**live.workload, **(workload or {})}
    logger.info("re-tuning service %s (%s) for instance %s's workload %s", live.service,
                live.target, instance, observed)
    summary = tune(target=live.target, service=live.service,
                   instance=test_instance_name(instance), workload=observed or None,
                   budget=budget, home=str(root))
    logger.info("re-tune job %s: %s", summary.study_name, summary.verdict)
    applied = apply_flow(instance=None if canary else instance,
                         service=live.service if canary else None, home=str(root),
                         windows=windows, window_s=window_s)
    return {"instance": instance, "service": live.service, "workload": observed,
            "job": summary.study_name, "verdict": summary.verdict, "apply": applied}
