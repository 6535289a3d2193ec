"""The rule engine inside the trial manager: no candidate runs before the rules have checked it.

A candidate an error rule blocks never runs: it is told to Optuna as infeasible, the way Optuna
marks one (``blocked_trial``): pruned with no value, and a ``rules`` constraint above zero, which
TPE learns from (``tuners/samplers.py`` says what each sampler does with it). It is counted once
under the rules it broke (``blocked_as``) and reported. Warnings travel with the trial. When a
trial crashes, hangs or runs out of memory, a forbid rule for the region that caused it is
proposed (``RuleLearner``), stored for review, and applies to every later candidate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from rules.language import RuleError
from rules.learn import LEARN_FROM, LearnedRules, forbids, propose_forbid
from rules.rule import Rule, Verdict
from rules.ruleset import RuleSet
from targets.base import FailureClass, TrialStatus
from targets.spec import KnobSpec
from tuners.space import SearchSpace
from tuners.trials import (
    ATTR,
    RowStatus,
    TrialOutcome,
    blocked_record,
    blocked_trial,
    ranked_trials,
)

__all__ = [
    "MAX_BLOCKED_IN_A_ROW", "TIMEOUT_MARGIN", "CandidateGuard", "RuleFilter", "RuleLearner",
    "blocked_as",
]

#: Consecutive blocked candidates after which the job stops: the rules leave (almost) nothing.
MAX_BLOCKED_IN_A_ROW = 200

Learner = Callable[[int, Any], Rule | None]
BlockListener = Callable[[int, Mapping[str, Any], Verdict], None]


def blocked_as(rules: Sequence[str]) -> str:
    """What a blocked candidate is counted under: the rules it broke, in the rule set's order,
    joined by " + ". A candidate that breaks two rules is counted once, under both together, so
    the counts of a job add up to the number of candidates blocked."""
    return " + ".join(dict.fromkeys(rules)) or "(no rule)"


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
              verdict: Verdict) -> None:
        """Tell a blocked candidate to Optuna as infeasible; nothing runs."""
        errors = verdict.errors
        blocked_trial(study, trial, blocked_record(config, [f.rule for f in errors],
                                                   "; ".join(str(f) for f in errors)))
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


class RuleFilter:
    """The rules' say on a candidate as a sampler asks it (``make_sampler(accept=...)``):
    ``filter(params)`` is True when the config of ``params`` passes every error rule, and
    ``filter.many(candidates)`` judges thousands at once (``RuleSet.check_frame``, vectorised:
    one ``check`` costs ~0.5 ms). Rules the guard learns during the job are added to the same
    ``RuleSet``, so they apply here from then on."""

    def __init__(self, rules: RuleSet, space: SearchSpace) -> None:
        self.rules, self.space = rules, space

    def __call__(self, params: Mapping[str, Any]) -> bool:
        return not self.rules.check(self.space.config(params)).blocked

    def many(self, candidates: Sequence[Mapping[str, Any]]) -> list[bool]:
        if not candidates:
            return []
        frame = pd.DataFrame([self.space.config(p) for p in candidates])
        return [not b for b in self.rules.check_frame(frame)["blocked"].tolist()]


#: A timeout teaches a rule only when the trial timeout is at least this many times the default
#: config's own trial time: a shorter timeout says more about itself than about the config.
TIMEOUT_MARGIN = 1.5


class RuleLearner:
    """Proposes a forbid rule for a failed trial's region (``rules.learn.propose_forbid``): it
    must spare every config that ran well (in this job and, from ``table``, in earlier jobs of
    the service) and the default config, and is widened to hold earlier failures of the same
    kind where it can. Only a failure the config caused teaches a rule (``why_not``). The rule is
    stored in ``store`` with its provenance and logged."""

    def __init__(self, store: LearnedRules, study: optuna.Study, space: SearchSpace,
                 rules: RuleSet, table: pd.DataFrame, logger: logging.Logger | Any,
                 trial_timeout: float) -> None:
        self.store, self.study, self.space, self.rules, self.logger = (
            store, study, space, rules, logger)
        self.trial_timeout = trial_timeout
        self.prior_good = _good_configs(table, space.spec)
        params = space.default_params()
        self.default = space.config(params) if params is not None else None

    def __call__(self, number: int, outcome: TrialOutcome) -> Rule | None:
        why = self.why_not(outcome)
        if why is not None:
            self.logger.info("trial %d %s: no rule learned: %s", number, outcome.failure_class,
                             why)
            return None
        goods = self.prior_good + [t.user_attrs[ATTR]["config"]
                                   for t in ranked_trials(self.study)]
        failures = [t.user_attrs[ATTR]["config"]
                    for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if t.user_attrs.get(ATTR, {}).get("failure_class") == outcome.failure_class]
        expression = propose_forbid(outcome.config, goods, self.space, self.rules, failures)
        if expression is None:
            return None
        if self.default is not None and forbids(expression, self.default, self.rules):
            self.logger.warning("trial %d %s: rule %r refused: it would block the default "
                                "config", number, outcome.failure_class, expression)
            return None
        rule = self.store.add(expression, rules=self.rules, study=self.study.study_name,
                              trial=number, failure_class=str(outcome.failure_class),
                              message=outcome.message)
        self.logger.warning("trial %d %s: learned rule %s: forbid %s", number,
                            outcome.failure_class, rule.id,
                            rule.expression.text)  # a widened rule keeps its id
        return rule

    def why_not(self, outcome: TrialOutcome) -> str | None:
        """Why a failure says nothing about its config, or None when it may teach a rule: the
        machine's faults (an I/O error, a full disk), a failure the default config shares, a
        timeout not well beyond the default config's own trial time."""
        if outcome.failure_class not in LEARN_FROM or outcome.disk_full:
            return f"{outcome.failure_class} is a fault of the machine, not of the config"
        ran = self._default_runs()
        if any(r.get("failure_class") == outcome.failure_class for r in ran):
            return f"the default config failed the same way ({outcome.failure_class})"
        if outcome.failure_class != FailureClass.TIMEOUT:
            return None
        times = [r["elapsed_s"] / max(1, len(r.get("repeat_values") or [])) for r in ran
                 if r.get("status") == TrialStatus.OK and r.get("elapsed_s")]
        if not times:
            return "the default config has not run to give a trial time to compare with"
        if self.trial_timeout < TIMEOUT_MARGIN * max(times):
            return (f"the {self.trial_timeout:g} s trial timeout is short: the default config's "
                    f"own trial took {max(times):.1f} s")
        return None

    def _default_runs(self) -> list[dict[str, Any]]:
        """The records of this job's finished trials of the default config."""
        if self.default is None:
            return []
        trials = self.study.get_trials(deepcopy=False,
                                       states=(TrialState.COMPLETE, TrialState.FAIL))
        return [t.user_attrs[ATTR] for t in trials
                if t.user_attrs.get(ATTR, {}).get("config") == self.default]


def _good_configs(table: pd.DataFrame, spec: KnobSpec) -> list[dict[str, Any]]:
    """The configs of the clean rows of a trial table (knobs it lacks at their defaults)."""
    if table.empty:
        return []
    rows = table[table["status"] == RowStatus.OK].to_dict(orient="records")
    return [{k.name: row.get(f"knob.{k.name}", k.default) for k in spec} for row in rows]
