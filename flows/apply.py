"""The apply flow: a config to one live instance (apply, verify, keep or roll back), or to every
instance of a service as a canary rollout.

``apply_flow(instance=NAME, config=...)`` runs one actuation (``tasks.actuate``) with its steps as
Prefect tasks; without a config it applies the instance's recommendation (``flows.recommend``).
``apply_flow(service=S, ...)`` is the canary: the instances of S in the order they were added,
one at a time, the next only after the previous one kept the config; a rollback (or a refusal,
or a failure) stops the rollout and the instances not reached are listed. Before acting on an
instance, an actuation a killed knobflow left unfinished there is finished (``tasks.recover``).

When the service requires approval (``approval: required``, ``tasks.services``), the run pauses
after the plan is known and before anything changes, with the instance's lock released, until an
operator approves or rejects (``flows.approval``); a canary asks once, for its first instance's
plan. A rejection is recorded as ``rejected`` and changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.approval import approval_gate, approval_plan, ask_approval, settle
from targets.common.errors import KnobflowError
from targets.common.settings import knobflow_home
from targets.live import ActuationRefused, live_system
from tasks.actlog import ActuationLog, Outcome
from tasks.actuate import STEPS, TASKS, Actuation, Policy, actuate, check, rules_for
from tasks.instances import InstanceStore, instance_lock
from tasks.recover import recover
from tasks.services import ServiceSettings

__all__ = ["acting_on", "apply_flow", "apply_to", "log_path"]


def log_path(store: InstanceStore, name: str) -> Path:
    """The actuation log of instance ``name``."""
    return store.dir(name) / "actuations.jsonl"


@contextlib.contextmanager
def acting_on(home: Path, name: str, *, windows: int | None = None,
              window_s: float | None = None,
              on_progress: Callable[[str], None] | None = None) -> Iterator[Actuation]:
    """Instance ``name`` locked for this process, its unfinished actuation (if a killed knobflow
    left one) finished first: every command on an instance goes through here."""
    store = InstanceStore(home)
    instance = store.get(name)
    with instance_lock(store, name):
        policy = Policy.of(instance, windows=windows, window_s=window_s)
        act = Actuation(home=home, instance=instance, live=live_system(instance.connection()),
                        log=ActuationLog(log_path(store, name)),
                        rules=rules_for(home, instance, policy), policy=policy,
                        on_progress=on_progress or (lambda line: None))
        recovered = recover(act)
        if recovered is not None:
            act.say(f"actuation {recovered.get('id')}: {recovered['outcome']} "
                    f"({recovered['note']})")
        act.id, act.before, act.changes = "", {}, {}
        yield act


def apply_to(act: Actuation, changes: Mapping[str, Any], *, source: str,
             provenance: Mapping[str, Any] | None = None, dry_run: bool = False,
             tasks: bool = True) -> dict[str, Any]:
    """One actuation on an instance already opened with ``acting_on``; its result."""
    result: dict[str, Any] = {"instance": act.instance.name, "source": source}
    try:
        plan = check(act, changes, source)
    except ActuationRefused as refused:
        return {**result, "outcome": Outcome.REFUSED.value, "note": str(refused),
                "reasons": refused.reasons}
    result.update(diff=plan["diff"], warnings=plan["warnings"])
    if dry_run:
        return {**result, "outcome": Outcome.DRY_RUN.value,
                "note": "dry run: nothing was changed" if plan["changes"] else
                "dry run: the instance already has this config"}
    done = actuate(act, changes, source=source, provenance=provenance,
                   steps=TASKS if tasks else STEPS)
    return {**result, **done}


@flow(name="apply", log_prints=False)
def apply_flow(instance: str | None = None, service: str | None = None,
               config: dict[str, Any] | None = None, source: str = "config",
               dry_run: bool = False, home: str | None = None, windows: int | None = None,
               window_s: float | None = None) -> dict[str, Any]:
    """Apply ``config`` (knob: value; None: each instance's recommendation) to ``instance``, or
    as a canary to the instances of ``service``; the result of each instance reached. A service
    with ``approval: required`` pauses the run for an operator's answer before the change.

    Args:
        instance: The live instance to apply to (or give service).
        service: Canary: the service whose instances get the config one after another.
        config: The knobs to change (knob: value); none: the recommendation.
        source: What proposed the config, for the actuation's record.
        dry_run: Show the diff and the rules' verdict only; change nothing.
        home: State directory (default ./.knobflow, or $KNOBFLOW_HOME).
        windows: Windows before and after the change (default: the instance's policy).
        window_s: Seconds per window (default: the instance's policy).
    """
    logger = get_run_logger()
    root = knobflow_home(home)
    store = InstanceStore(root)
    if (instance is None) == (service is None):
        raise KnobflowError("apply needs an instance NAME or --service S (one of them)")
    names = [instance] if instance else [i.name for i in store.of_service(str(service))]
    if not names:
        raise KnobflowError(f"service '{service}' has no instances; add them with "
                            "`knobflow instance add` or `knobflow instance start`")
    gate = approval_gate(root, store.get(names[0]).service, dry_run)
    results: list[dict[str, Any]] = []
    for index, name in enumerate(names):
        opener = functools.partial(acting_on, root, name, windows=windows, window_s=window_s,
                                   on_progress=logger.info)
        result, changes = _apply_one(opener, config, source, dry_run=dry_run, gate=gate,
                                     rollout=names[index:] if service is not None else [name])
        if result.get("approval"):  # one approval for the whole rollout
            gate = None
        results.append(result)
        logger.info("%s: %s (%s)", name, result["outcome"], result.get("note", ""))
        if result["outcome"] not in (Outcome.KEPT.value, Outcome.DRY_RUN.value):
            break
        if config is None and service is not None:  # the canary's config goes to the rest
            config, source = dict(result.get("changes") or changes or {}), f"canary of {name}"
    reached = {r["instance"] for r in results}
    return {"service": service, "results": results,
            "not_reached": [n for n in names if n not in reached],
            "stopped": any(r["outcome"] not in (Outcome.KEPT.value, Outcome.DRY_RUN.value)
                           for r in results)}


def _apply_one(opener: Callable[[], contextlib.AbstractContextManager[Actuation]],
               config: Mapping[str, Any] | None, source: str, *, dry_run: bool,
               gate: ServiceSettings | None, rollout: list[str]
               ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One instance's actuation (asking for approval first when ``gate`` says so, with no lock
    held while the run waits); its result and the changes asked for."""
    with opener() as act:
        changes, why, provenance = _changes_for(act, config, source)
        if changes is None:  # the recommendation is to keep, or there is none
            return {"instance": act.instance.name, "source": why,
                    "outcome": Outcome.KEPT.value, "note": provenance["note"],
                    "changes": {}}, None
        if gate is None:
            return apply_to(act, changes, source=why, provenance=provenance,
                            dry_run=dry_run), changes
        preview = apply_to(act, changes, source=why, provenance=provenance, dry_run=True)
        if preview["outcome"] != Outcome.DRY_RUN.value or not preview["diff"]:
            return (preview if preview["outcome"] != Outcome.DRY_RUN.value else
                    apply_to(act, changes, source=why, provenance=provenance)), changes
        plan = approval_plan(act, preview, provenance, gate, rollout)
    answer = ask_approval(plan, act.say)
    with opener() as act:
        done = settle(act, plan, answer, provenance)
        if done is None:
            done = {**apply_to(act, changes, source=why,
                               provenance={**provenance, "approval": answer}),
                    "approval": answer}
    return done, changes


def _changes_for(act: Actuation, config: Mapping[str, Any] | None, source: str
                 ) -> tuple[dict[str, Any] | None, str, dict[str, Any]]:
    """The changes to apply: the given config, or the instance's recommendation (None with
    the recommendation's first line as ``note`` when it changes nothing)."""
    if config is not None:
        return dict(config), source, {}
    from flows.recommend import recommend_for
    from model_registry.recommend import recommend_task

    rec = recommend_for(act, compute=recommend_task)
    for line in rec.lines():
        act.say(line)
    if not rec.changes:
        return None, "recommendation", {"note": rec.lines()[0]}
    return ({k: v["to"] for k, v in rec.changes.items()}, "recommendation",
            {"recommendation": rec.to_dict()})
