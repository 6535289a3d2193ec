"""Rule files and rule sets: what may run, what must be reported, and what to do after a change.

A rule file (YAML) holds ``rules:``, each with an ``id`` and a ``kind``:

- ``constraint``: ``expr`` must hold for a config (``shared_buffers <= 0.4 * machine.memory_mb``);
- ``forbid``: a config matching ``when`` is known to be bad (a hang, a refusal, a policy);
- ``trigger``: ``when`` over ``before.*``/``after.*`` measurements of an actuation fires an
  ``action`` (``rollback``, ``retune``, ``alert``).

``severity: error`` (default) blocks a config, ``warn`` reports it. A rule with a ``policy`` (e.g.
``durability``) applies only to jobs that turn that policy on. Every error in a file names the
file, line, column and rule, and suggests a fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rules.parse import load_rule_file
from rules.rule import Failure, Rule, Verdict, machine_facts
from targets.base import Target
from targets.spec import KnobSpec

__all__ = ["SETS_DIR", "RuleSet", "shipped_rules_path"]

SETS_DIR = Path(__file__).resolve().parent / "sets"


def shipped_rules_path(target_cls: type[Target]) -> Path | None:
    """The rule set knobflow ships for a target, if any (``rules/sets/<target>.yaml``)."""
    path = SETS_DIR / f"{target_cls.name}.yaml"
    return path if path.exists() else None


@dataclass
class RuleSet:
    """The rules of a job: shipped for the target, the operator's files, and learned ones."""

    spec: KnobSpec
    rules: list[Rule]
    facts: dict[str, float] = field(default_factory=machine_facts)
    workload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_target(
        cls,
        target_cls: type[Target],
        files: Sequence[str] = (),
        policies: Iterable[str] = (),
        learned: Sequence[Rule] = (),
        workload: Mapping[str, Any] | None = None,
        shipped: bool = True,
        all_policies: bool = False,
    ) -> RuleSet:
        """The rules for a job on ``target_cls``: rules with a policy apply only when the job
        turns the policy on (``all_policies``: every one, e.g. to list them)."""
        spec = target_cls.knob_spec()
        workload = {**target_cls.workload_defaults, **(workload or {})}
        paths = ([shipped_rules_path(target_cls)] if shipped else []) + [Path(f) for f in files]
        rules: list[Rule] = []
        for path in paths:
            if path is not None:
                rules += load_rule_file(path, spec, target_cls, workload)
        wanted = set(policies)
        rules = [r for r in rules if all_policies or r.policy is None or r.policy in wanted]
        rules += [r for r in learned if r.status != "dropped"]
        return cls(spec=spec, rules=rules, workload=workload)

    @classmethod
    def given_up(
        cls,
        target_cls: type[Target],
        config: Mapping[str, Any],
        files: Sequence[str] = (),
        policies: Iterable[str] = (),
        workload: Mapping[str, Any] | None = None,
    ) -> dict[str, list[Failure]]:
        """What ``config`` gives up of the policies not turned on (``policies``): the rules of
        each other policy of the rule files (e.g. durability) that it breaks, by policy."""
        every = cls.for_target(target_cls, files, workload=workload, all_policies=True)
        wanted = set(policies)
        off = [r for r in every.rules if r.policy and r.policy not in wanted]
        policy = {r.id: str(r.policy) for r in off}
        found: dict[str, list[Failure]] = {}
        for failure in cls(spec=every.spec, rules=off, workload=every.workload).check(
                config).failures:
            found.setdefault(policy[failure.rule], []).append(failure)
        return found

    @property
    def config_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.kind != "trigger"]

    @property
    def triggers(self) -> list[Rule]:
        return [r for r in self.rules if r.kind == "trigger"]

    def add(self, rule: Rule) -> None:
        """Apply ``rule`` from now on; it replaces a rule with its id (a widened learned rule)."""
        # a new list: checks running now keep theirs
        self.rules = [*(r for r in self.rules if r.id != rule.id), rule]

    def columns(self, frame: pd.DataFrame) -> dict[str, Any]:
        columns: dict[str, Any] = dict(self.facts)
        columns.update({f"workload.{k}": v for k, v in self.workload.items()})
        defaults = self.spec.defaults()
        for knob in self.spec:
            values = (
                frame[knob.name]
                if knob.name in frame
                else pd.Series([defaults[knob.name]] * len(frame))
            )
            dtype = (
                bool
                if knob.type == "bool"
                else (
                    object
                    if knob.type == "categorical" and any(isinstance(v, str) for v in knob.values)
                    else float
                )
            )
            columns[knob.name] = values.to_numpy(dtype=dtype)
        return columns

    def check_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Vectorised: one bool column per config rule (True: the row fails it), and
        ``blocked`` (an error rule failed) — for many candidates at once."""
        columns = self.columns(frame)
        out = {r.id: r.matches(columns, len(frame)) for r in self.config_rules}
        errors = [out[r.id] for r in self.config_rules if r.severity == "error"]
        out["blocked"] = np.logical_or.reduce(errors) if errors else np.zeros(len(frame), bool)
        return pd.DataFrame(out, index=frame.index)

    def check(self, config: Mapping[str, Any]) -> Verdict:
        """Every config rule ``config`` fails, with the values involved."""
        full = self.spec.full_config(config)
        columns = self.columns(pd.DataFrame([full]))
        verdict = Verdict()
        for rule in self.config_rules:
            if rule.matches(columns, 1)[0]:
                values = {n: full.get(n, columns.get(n)) for n in sorted(rule.expression.names)}
                verdict.failures.append(Failure(rule.id, rule.severity, rule.message, values))
        return verdict

    def fired_triggers(
        self, before: Mapping[str, float], after: Mapping[str, float]
    ) -> list[Failure]:
        """Triggers whose condition holds for measurements before and after an actuation."""
        columns: dict[str, Any] = dict(self.facts)
        columns.update({f"before.{k}": float(v) for k, v in before.items()})
        columns.update({f"after.{k}": float(v) for k, v in after.items()})
        fired = []
        for rule in self.triggers:
            if any(n not in columns for n in rule.expression.names):
                continue  # a metric this actuation did not measure
            if rule.matches(columns, 1)[0]:
                values = {n: columns[n] for n in sorted(rule.expression.names)}
                fired.append(
                    Failure(rule.id, rule.severity, f"{rule.action}: {rule.message}", values)
                )
        return fired
