"""Important knobs first (``--knobs auto``): tune the knobs a model ranks highest, then all.

``KnobFocus`` holds the top knobs and when to widen. Before each ask of the focused phase it
queues a partial trial (Optuna's ``enqueue_trial`` with only the other knobs' values), so the
sampler draws the top knobs and every other knob keeps its value in the best config measured so
far (the default, or a transferred config that measured better). Every trial still holds every
knob: the sampler's search space never changes (multivariate TPE models one fixed space), and
after widening it samples all knobs, having seen the others at their kept values.

The focus widens once, for good: when half the job's budget of trials has started, or earlier
when the best value has not improved for ``patience`` finished trials (the top knobs are worked
out). The widening is kept in the study's user attributes, so ``--resume`` continues widened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuners.space import SearchSpace
from tuners.trials import finished_trials, is_blocked, is_prior, ranked_trials

__all__ = ["FOCUS_ATTR", "WIDENED_ATTR", "KnobFocus", "top_knobs"]

#: The user attribute of a focused trial: the knobs it let the sampler draw, comma-separated.
FOCUS_ATTR = "knobflow.focus"
#: The study's user attribute once the focus widened: ``{"trial": n, "why": "..."}``.
WIDENED_ATTR = "knobflow.focus.widened"
#: Finished trials without a new best that widen the focus early: this share of the budget,
#: at least PATIENCE_MIN.
PATIENCE_SHARE = 0.25
PATIENCE_MIN = 5


def top_knobs(importance: Mapping[str, float], space: SearchSpace, k: int,
              ties: Mapping[str, float] | None = None) -> list[str]:
    """The ``k`` tuned knobs of ``space`` with the highest ``importance`` (knob name to
    importance; a knob it lacks counts 0), in order; ties go to the higher ``ties``, then keep
    the space's order."""
    order = {name: i for i, name in enumerate(space.names)}
    ties = ties or {}
    ranked = sorted(space.names, key=lambda n: (-float(importance.get(n, 0.0)),
                                                -float(ties.get(n, 0.0)), order[n]))
    return ranked[:k]


@dataclass(frozen=True)
class KnobFocus:
    """Tune ``top`` first; widen to every knob after ``widen_after`` trials have started, or
    after ``patience`` finished trials in a row without a new best."""

    top: tuple[str, ...]
    widen_after: int
    patience: int

    @classmethod
    def for_budget(cls, top: Sequence[str], budget: int) -> KnobFocus:
        """The focus of a job of ``budget`` trials: widen after half of them, or after a
        quarter (at least ``PATIENCE_MIN``) without a new best."""
        return cls(tuple(top), widen_after=max(1, budget // 2),
                   patience=max(PATIENCE_MIN, round(budget * PATIENCE_SHARE)))

    def widened(self, study: optuna.Study) -> dict[str, Any] | None:
        """When and why the focus widened (``{"trial": n, "why": ...}``), or None."""
        found = study.user_attrs.get(WIDENED_ATTR)
        return dict(found) if isinstance(found, Mapping) else None

    def before_ask(self, study: optuna.Study, space: SearchSpace) -> None:
        """Queue the next trial of the focused phase (the knobs outside ``top`` fixed), or widen;
        nothing while configs are already queued (the default, transferred configs, retries
        run as they are). The caller asks right after, under the same lock."""
        if self.widened(study) is not None:
            return
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        why = self._why_widen(study, trials)
        if why:
            study.set_user_attr(WIDENED_ATTR, {"trial": len(trials), "why": why})
            return
        kept = {k: v for k, v in self.base_params(study, space).items() if k not in self.top}
        study.enqueue_trial(kept, user_attrs={FOCUS_ATTR: ",".join(self.top)})

    def base_params(self, study: optuna.Study, space: SearchSpace) -> dict[str, Any]:
        """The best config measured so far as params of ``space`` (the defaults before any
        trial completed, and for a knob the best trial lacks)."""
        defaults = space.config({})
        params = {k: defaults[k] for k in space.names}
        if len(study.directions) > 1:  # several objectives: no one best config to keep
            return params
        best = next((t for t in ranked_trials(study) if not is_prior(t)), None)
        if best is not None:
            params.update({k: v for k, v in best.params.items() if k in params})
        return params

    def _why_widen(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
        """Why the focus widens before the next ask ("" while it holds)."""
        started = [t for t in trials if t.state != TrialState.WAITING
                   and not is_blocked(t) and not is_prior(t)]
        if len(started) >= self.widen_after:
            return f"{len(started)} trials started (half the budget)"
        stale = _since_best(study, finished_trials(study, trials))
        if stale >= self.patience:
            return f"no new best in the last {stale} finished trials"
        return ""

    def record(self, study: optuna.Study) -> dict[str, Any]:
        """What the focus did, for the job's summary and MLflow run."""
        widened = self.widened(study) or {}
        return {"top": list(self.top), "widen_after": self.widen_after,
                "patience": self.patience, "widened_at_trial": widened.get("trial"),
                "widened_why": widened.get("why", "")}


def _since_best(study: optuna.Study, finished: Sequence[FrozenTrial]) -> int:
    """Finished trials since the last one that set a new best value (all of them if none did;
    none with several objectives: a Pareto front has no one best to stall)."""
    if len(study.directions) > 1:
        return 0
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best: float | None = None
    since = 0
    for trial in sorted(finished, key=lambda t: t.number):
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best, since = value, 0
        else:
            since += 1
    return since
