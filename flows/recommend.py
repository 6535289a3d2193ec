"""The recommend flow: observe a live instance, then ask the service's champion model and the
siblings' best measured configs for a better one (``model_registry.recommend``), rule-checked.

Nothing is changed on the instance: the recommendation (the knobs it changes, the predicted gain,
its provenance) is returned, printed by ``knobflow recommend`` and applied by ``knobflow apply``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger

from flows.apply import acting_on
from flows.trials import service_table
from model_registry.recommend import Recommendation, recommend, recommend_task
from targets.common.settings import knobflow_home, tracking_uri
from tasks.actuate import Actuation
from tasks.observe import Observation, observe, observe_task
from tuners.space import SearchSpace, space_for_knobs

__all__ = ["recommend_flow", "recommend_for", "runtime_space"]


def runtime_space(act: Actuation) -> SearchSpace:
    """The knobs a recommendation for ``act``'s instance may change: all of them with a restart
    command, otherwise those that need no restart (the rest keep their live values)."""
    spec = act.live.spec
    if act.live.connection.restart_command:
        return SearchSpace.full(spec)
    return space_for_knobs(spec, [k.name for k in spec if not k.restart],
                           source=f"instance {act.instance.name} (no restart command)")


def recommend_for(act: Actuation, seen: Observation | None = None, seed: int = 0,
                  compute: Callable[..., Recommendation] = recommend) -> Recommendation:
    """The recommendation for the instance ``act`` is open on (observed now unless ``seen``);
    ``compute``: ``recommend``, or ``recommend_task`` inside a flow."""
    if seen is None:
        act.say(f"observing {act.policy.windows} windows of {act.policy.window_s:g} s for the "
                "workload's fingerprint")
        seen = observe(act.live, windows=act.policy.windows, window_s=act.policy.window_s,
                       objective=act.objective)
    target_cls = act.live.target_cls
    features = target_cls.workload_features(target_cls.workload_defaults)
    return compute(
        target_cls=target_cls, service=act.instance.service, objective=act.objective,
        current=seen.config,
        # the features models know; a live driver may observe more (counted, not modelled)
        fingerprint={k: v for k, v in seen.fingerprint.items() if k in features},
        table=service_table(act.home, act.instance.service),
        tracking_uri=tracking_uri(act.home), space=runtime_space(act),
        rules=act.rules, instance=act.instance.name, max_knobs=act.policy.max_knobs, seed=seed)


@flow(name="recommend", log_prints=False)
def recommend_flow(instance: str, home: str | None = None, windows: int | None = None,
                   window_s: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Observe ``instance`` and recommend a config for its workload; nothing is applied.

    Args:
        instance: The live instance to observe and recommend for.
        home: State directory (default ./.knobflow, or $KNOBFLOW_HOME).
        windows: Windows to observe (default: the instance's policy).
        window_s: Seconds per window (default: the instance's policy).
        seed: Seed of the candidates the champion ranks.
    """
    logger = get_run_logger()
    with acting_on(knobflow_home(home), instance, windows=windows, window_s=window_s,
                   on_progress=logger.info) as act:
        seen = observe_task(act.live, windows=act.policy.windows,
                            window_s=act.policy.window_s, objective=act.objective)
        rec = recommend_for(act, seen, seed, compute=recommend_task)
    for line in rec.lines():
        logger.info("%s", line)
    return {"instance": instance, "observation": seen.to_dict(),
            "recommendation": rec.to_dict(), "lines": rec.lines()}
