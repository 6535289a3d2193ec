"""Actuation: apply a config to a live instance, verify it, keep it or roll it back.

One actuation, every step a line in the instance's append-only log (``tasks.actlog``) before the
next one starts, so a crash at any point leaves a record the next command finishes
(``tasks.recover``):

1. ``check``: the changes against the rules (``RuleSet.check`` on the whole config that would
   result), the policy's limit on knobs per actuation, and what the system can take at runtime
   (``LiveSystem.runtime_refusals``). Refused: nothing is changed. ``--dry-run`` stops here.
2. ``begin``: the effective config as read back now (what a rollback restores), the changes.
3. ``observed_before``: N windows of the instance as it is (they must pass the measurement gate
   and show load: a change cannot be verified against nothing).
4. ``applying`` -> ``applied``: the system's runtime mechanism, then the changed knobs read back.
5. ``observed_after``: the same number of windows.
6. ``decided``: a one-sided test over the windows (``tasks.decide``) and the ``trigger`` rules on
   the windows' means (``RuleSet.fired_triggers``); the time from the apply to the decision.
7. Keep; or ``rolling_back`` -> ``rolled_back`` (the recorded values applied again and read back)
   -> ``learned`` (the config becomes a proposed forbid rule of the service, with the actuation as
   its provenance; only when the config was found worse, never for a failed measurement).
8. ``done``: the outcome; the actuation's MLflow run is written from the log; the watch's
   reference of the instance (``tasks.reference``) becomes the windows of the config it is on.

The steps are plain functions; ``STEPS`` (plain) and ``TASKS`` (Prefect tasks) hold them so the
apply flow and a recovery outside any flow run the same sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from prefect import task
from prefect.cache_policies import NO_CACHE

from rules.learn import LearnedRules
from rules.ruleset import RuleSet
from targets.common.errors import KnobflowError
from targets.live import ActuationRefused, LiveSystem
from targets.registry import load_target
from tasks.actlog import ActuationLog, Outcome, Phase
from tasks.decide import decide, test_change
from tasks.instances import ACTUATION_POLICY, Instance
from tasks.observe import Observation, observe, summarize

__all__ = ["STEPS", "TASKS", "Actuation", "Policy", "Steps", "actuate", "check", "rules_for"]

#: How many times the windows after a change are observed again while the decision is open.
EXTEND = 2
#: Defaults of an actuation's policy: the instance's record (``Instance.policy``, defaults in
#: ``tasks.instances.ACTUATION_POLICY``) and the command's options override them.
POLICY_DEFAULTS: dict[str, Any] = {**ACTUATION_POLICY, "objective": None, "policies": []}


@dataclass(frozen=True)
class Policy:
    """How an instance is actuated: windows before and after, the test's level and the smallest
    change that counts, the most knobs one actuation may change, the rule policies on."""

    windows: int = 5
    window_s: float = 5.0
    alpha: float = 0.01
    min_effect: float = 0.05
    max_knobs: int | None = 3
    objective: str | None = None
    policies: tuple[str, ...] = ()

    @classmethod
    def of(cls, instance: Instance, **overrides: Any) -> Policy:
        given = {**POLICY_DEFAULTS, **(instance.policy or {}),
                 **{k: v for k, v in overrides.items() if v is not None}}
        given["policies"] = tuple(given.get("policies") or ())
        return cls(**{k: given[k] for k in POLICY_DEFAULTS})

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class Actuation:
    """One actuation in progress: the instance, its driver, its log, its rules and policy."""

    home: Path
    instance: Instance
    live: LiveSystem
    log: ActuationLog
    rules: RuleSet
    policy: Policy
    id: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    on_progress: Callable[[str], None] = lambda line: None

    @property
    def objective(self) -> str:
        return self.policy.objective or self.live.target_cls.default_objective

    def record(self, phase: Phase, **fields: Any) -> None:
        self.log.append(self.id, phase, **fields)

    def say(self, line: str) -> None:
        self.on_progress(f"{self.instance.name}: {line}")


def rules_for(home: Path, instance: Instance, policy: Policy) -> RuleSet:
    """The shipped rules of the instance's target, its service's learned ones, the policies."""
    target_cls = load_target(instance.target)
    learned = LearnedRules.of(home, instance.service, target_cls.knob_spec()).rules()
    return RuleSet.for_target(target_cls, policies=policy.policies, learned=learned,
                              workload=instance.workload or None)


def check(act: Actuation, changes: Mapping[str, Any], where: str = "the config") -> dict[str, Any]:
    """What the changes would do: current and new value per knob, the rules' verdict. A knob
    or value the spec does not know is a ``ConfigError`` naming ``where``; ``ActuationRefused``
    (nothing changed) when a rule blocks the result, the policy's knob limit is passed or the
    system cannot take a knob at runtime."""
    given = act.live.spec.validate_config(changes, where)
    current = act.live.read_config()
    wanted = {k: v for k, v in given.items() if current.get(k) != v}
    verdict = act.rules.check({**current, **wanted})
    reasons = {f.rule: f.message for f in verdict.errors}
    limit = act.policy.max_knobs
    if limit is not None and len(wanted) > limit:
        reasons["policy max_knobs"] = (f"{len(wanted)} knobs would change, the policy allows "
                                       f"{limit} per actuation ({', '.join(sorted(wanted))})")
    reasons.update(act.live.runtime_refusals(wanted))
    if reasons:
        raise ActuationRefused(act.instance.name, reasons)
    return {"current": current, "changes": wanted,
            "diff": {k: {"from": current.get(k), "to": v} for k, v in sorted(wanted.items())},
            "warnings": [str(f) for f in verdict.warnings]}


# -- the steps -------------------------------------------------------------------------------
def observe_step(act: Actuation, phase: Phase) -> Observation:
    """N windows of the instance, recorded under ``phase``."""
    windows = act.policy.windows
    act.say(f"observing {windows} windows of {act.policy.window_s:g} s "
            f"({'before' if phase == Phase.OBSERVED_BEFORE else 'after'} the change)")
    seen = observe(act.live, windows=windows, window_s=act.policy.window_s,
                   objective=act.objective)
    act.record(phase, values=seen.values(), metric=seen.objective, direction=seen.direction,
               observation=seen.to_dict())
    return seen


def apply_step(act: Actuation) -> dict[str, Any]:
    """Apply the changes; the changed knobs as read back afterwards, and when."""
    act.record(Phase.APPLYING, started=time.time())
    act.say("applying " + ", ".join(f"{k}={v!r}" for k, v in act.changes.items()))
    act.live.apply(act.changes)
    read = act.live.read_config()
    applied = {k: read.get(k) for k in act.changes}
    differ = [f"{k}: asked {v!r}, the system has {read.get(k)!r}"
              for k, v in act.changes.items() if read.get(k) != v]
    fields = {"applied": applied, "differences": differ, "applied_at": time.time()}
    act.record(Phase.APPLIED, **fields)
    return fields


def evaluate_step(act: Actuation, before: Observation, after: Observation,
                  applied_at: float) -> dict[str, Any]:
    """The decision: the test over the windows, the trigger rules, the gate on the after windows."""
    reasons: list[str] = []
    if not after.valid:
        verdict = {"keep": False, "learn": False, "test": None, "fired": [],
                   "reasons": ["the windows after the change failed the measurement gate: "
                               + "; ".join(after.reasons)]}
    else:
        test = test_change(before.values(), after.values(), before.direction,
                           alpha=act.policy.alpha, min_effect=act.policy.min_effect,
                           metric=before.objective)
        fired = act.rules.fired_triggers(before.metrics, after.metrics)
        decision = decide(test, fired)
        reasons = list(decision.reasons)
        verdict = {"keep": decision.keep, "learn": not decision.keep,
                   "test": test_fields(test),
                   "fired": [str(f) for f in fired], "reasons": reasons}
    verdict["seconds_to_decision"] = round(time.time() - applied_at, 3)
    act.record(Phase.DECIDED, **verdict)
    act.say(("keep: " if verdict["keep"] else "roll back: ") + "; ".join(verdict["reasons"]))
    return verdict


def test_fields(test: Any) -> dict[str, Any]:
    """The test's figures as JSON-safe fields for the log and MLflow."""
    fields = test.to_dict() if hasattr(test, "to_dict") else dict(vars(test))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}


def rollback_step(act: Actuation, reason: str) -> dict[str, Any]:
    """Apply the recorded values of the changed knobs again; read them back."""
    restore = {k: act.before[k] for k in act.changes if k in act.before}
    act.record(Phase.ROLLING_BACK, reason=reason, restore=restore)
    act.say("rolling back to " + ", ".join(f"{k}={v!r}" for k, v in restore.items()))
    act.live.apply(restore)
    read = act.live.read_config()
    back = {k: read.get(k) for k in restore}
    ok = all(read.get(k) == v for k, v in restore.items())
    act.record(Phase.ROLLED_BACK, restored=back, ok=ok)
    if not ok:
        raise KnobflowError(f"{act.instance.name}: the rollback did not take: asked {restore}, "
                            f"the system has {back}; restore these values by hand")
    return back


def learn_step(act: Actuation, reason: str) -> str:
    """The rolled-back config as a proposed forbid rule of the service."""
    store = LearnedRules.of(act.home, act.instance.service, act.live.spec)
    rule = store.add_actuation(act.changes, rules=act.rules, instance=act.instance.name,
                               actuation=act.id, reason=reason)
    act.record(Phase.LEARNED, rule=rule.id, when=rule.to_dict().get("when", ""))
    act.say(f"learned rule {rule.id}: the service's tuning jobs will not try this config")
    return str(rule.id)


class Steps(NamedTuple):
    """The steps an actuation runs: plain functions, or the same as Prefect tasks."""

    observe: Callable[..., Observation]
    apply: Callable[..., dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]
    rollback: Callable[..., dict[str, Any]]
    learn: Callable[..., str]


STEPS = Steps(observe_step, apply_step, evaluate_step, rollback_step, learn_step)
TASKS = Steps(*(task(name=f"actuation-{name}", cache_policy=NO_CACHE)(fn)
                for name, fn in zip(Steps._fields, STEPS, strict=True)))


def actuate(act: Actuation, changes: Mapping[str, Any], *, source: str,
            provenance: Mapping[str, Any] | None = None, steps: Steps = STEPS) -> dict[str, Any]:
    """Run one actuation to its end; the ``done`` fields (outcome, ...)."""
    plan = check(act, changes)
    act.before, act.changes = plan["current"], plan["changes"]
    if not act.changes:
        return {"outcome": Outcome.KEPT.value, "note": "nothing to change: the instance "
                "already has this config", "changes": {}}
    act.id = act.log.new_id()
    act.record(Phase.BEGIN, before_config=act.before, changes=act.changes, diff=plan["diff"],
               source=source, provenance=dict(provenance or {}), policy=act.policy.to_dict(),
               objective=act.objective, warnings=plan["warnings"],
               instance=act.instance.name, service=act.instance.service)
    before = steps.observe(act, Phase.OBSERVED_BEFORE)
    problem = _unverifiable(before)
    if problem:
        return finish(act, Outcome.FAILED, f"nothing was changed: {problem}")
    return verify(act, before, steps)


def verify(act: Actuation, before: Observation, steps: Steps = STEPS) -> dict[str, Any]:
    """Apply, observe after (longer while undecided), decide, keep or roll back, finish."""
    applied = steps.apply(act)
    after = observe_after(act, before, steps)
    return decide_and_finish(act, before, after, float(applied["applied_at"]), steps)


def undecided(act: Actuation, before: Observation, after: Observation) -> bool:
    """Whether the windows so far neither show the change worse (or a rollback trigger) nor
    rule out a loss beyond the policy's smallest change (the 95 % interval's worse end)."""
    if not after.valid or not before.valid:
        return False
    test = test_change(before.values(), after.values(), before.direction,
                       alpha=act.policy.alpha, min_effect=act.policy.min_effect,
                       metric=before.objective)
    if not decide(test, act.rules.fired_triggers(before.metrics, after.metrics)).keep:
        return False
    low, high = test.interval
    if before.direction == "maximize":
        return low < 1 - act.policy.min_effect
    return high > 1 + act.policy.min_effect


def observe_after(act: Actuation, before: Observation, steps: Steps = STEPS) -> Observation:
    """The windows after the change: as many as before, then as many again while the decision
    is open (a noisy system), up to ``EXTEND`` times more."""
    after = steps.observe(act, Phase.OBSERVED_AFTER)
    rounds = 0
    while rounds < EXTEND and undecided(act, before, after):
        rounds += 1
        act.say(f"undecided after {len(after.windows)} windows (the interval still includes a "
                f"loss beyond {act.policy.min_effect:.0%}): observing {act.policy.windows} more")
        more = steps.observe(act, Phase.OBSERVED_AFTER)
        after = summarize(act.live, [*after.windows, *more.windows], more.config,
                          act.objective)
    return after


def decide_and_finish(act: Actuation, before: Observation, after: Observation,
                      applied_at: float, steps: Steps = STEPS) -> dict[str, Any]:
    """Steps 6 to 8 for windows already observed."""
    verdict = steps.evaluate(act, before, after, applied_at)
    if verdict["keep"]:
        return finish(act, Outcome.KEPT, "; ".join(verdict["reasons"]))
    reason = "; ".join(verdict["reasons"])
    steps.rollback(act, reason)
    if verdict.get("learn"):
        steps.learn(act, reason)
    return finish(act, Outcome.ROLLED_BACK, reason)


def finish(act: Actuation, outcome: Outcome, note: str) -> dict[str, Any]:
    """The ``done`` line, and the actuation's MLflow run written from the log."""
    act.record(Phase.DONE, outcome=outcome.value, note=note)
    if outcome in (Outcome.KEPT, Outcome.ROLLED_BACK):
        new_reference(act)
    from tasks.actuation_run import log_actuation_run

    run_id = log_actuation_run(act.home, act.instance, act.log, act.id)
    return {"outcome": outcome.value, "note": note, "id": act.id, "run_id": run_id,
            "changes": act.changes}


def new_reference(act: Actuation) -> None:
    """The watch's reference of the instance becomes the windows of the config it is on now:
    after the change when kept, before it when rolled back (``tasks.reference``)."""
    from tasks.reference import instance_host, reference_from_actuation, save_reference

    try:
        reference = reference_from_actuation(act.log.actuation(act.id),
                                              instance_host(act.instance))
        if reference is not None:
            save_reference(act.home, act.instance.name, reference)
    except (OSError, KnobflowError) as exc:  # the actuation itself is done and recorded
        act.say(f"the watch's reference was not updated ({exc}); record it with "
                f"`knobflow watch {act.instance.name} --reset`")


def _unverifiable(seen: Observation) -> str:
    """Why windows cannot serve as the reference of a change ('' when they can)."""
    if not seen.valid:
        return "the windows before the change failed the measurement gate: " + \
            "; ".join(seen.reasons)
    values = seen.values()
    if len(values) < 2 or min(values) <= 0:
        return (f"the instance shows no {seen.objective} in some windows "
                f"({', '.join(f'{v:g}' for v in values)}): there is no load to verify a change "
                "against")
    return ""
