"""The rule engine inside the trial manager: no candidate runs before the rules have checked it.

A candidate an error rule blocks never runs: it is told to Optuna as infeasible (a constraint
above zero, so the sampler learns to keep away), counted per rule, and reported. Warnings travel
with the trial. When a trial crashes, hangs or runs out of memory, a forbid rule for the region
that caused it is proposed and applies to every later candidate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from rules.language import RuleError
from rules.ruleset import Rule, RuleSet, Verdict
from tuners.trials import ATTR, blocked_record

#: Consecutive blocked candidates after which the job stops: the rules leave (almost) nothing.
MAX_BLOCKED_IN_A_ROW = 200

Learner = Callable[[int, Any], Rule | None]
BlockListener = Callable[[int, Mapping[str, Any], Verdict], None]


class CandidateGuard:
    """Checks candidates against a rule set, and grows it from failures."""

    def __init__(self, rules: RuleSet, learn: Learner | None = None,
                 on_blocked: BlockListener | None = None) -> None:
        self.rules = rules
        self.learn = learn
        self.on_blocked = on_blocked
        self.learned: list[Rule] = []
        self._in_a_row = 0
        self._lock = threading.Lock()

    def check(self, config: Mapping[str, Any]) -> Verdict:
        return self.rules.check(config)

    def block(self, study: optuna.Study, trial: optuna.trial.Trial, config: Mapping[str, Any],
              verdict: Verdict, placeholder: float) -> None:
        """Tell a blocked candidate to Optuna as infeasible; nothing runs."""
        errors = verdict.errors
        trial.set_user_attr(ATTR, blocked_record(config, [f.rule for f in errors],
                                                 "; ".join(str(f) for f in errors)))
        trial.set_constraint("rules", float(len(errors)))
        study.tell(trial, placeholder)
        with self._lock:
            self._in_a_row += 1
            in_a_row = self._in_a_row
        if self.on_blocked is not None:
            self.on_blocked(trial.number, config, verdict)
        if in_a_row >= MAX_BLOCKED_IN_A_ROW:
            raise RuleError(
                f"the rules blocked {in_a_row} candidates in a row (last: "
                f"{', '.join(f.rule for f in errors)}): they leave (almost) no config to try; "
                "narrow the search space to where the rules allow, or review the rules"
            )

    def ran(self) -> None:
        with self._lock:
            self._in_a_row = 0

    def failed(self, number: int, outcome: Any) -> Rule | None:
        """Learn from a failed trial, if a learner is set; the new rule applies from now on."""
        if self.learn is None:
            return None
        rule = self.learn(number, outcome)
        if rule is not None:
            with self._lock:
                self.rules.add(rule)
                known = [i for i, r in enumerate(self.learned) if r.id == rule.id]
                if known:  # the failure widened (or fell inside) a rule learned before
                    self.learned[known[0]] = rule
                else:
                    self.learned.append(rule)
        return rule
