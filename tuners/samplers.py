"""The sampler factory: a tuner name becomes an Optuna sampler.

Optuna is imported when a sampler is made, not with this module: the CLI reads ``TUNERS`` to
build its options and must start fast.

What each sampler does with a candidate the rules blocked (told as a pruned trial with a
``rules`` constraint above zero and no value, ``tuners.trials.blocked_trial``):

* ``tpe`` reads the constraints of complete and pruned trials and ranks infeasible ones among
  the bad: it learns to keep away from blocked regions (as it did from the stand-in value it was
  told before, which it never read: constraints come first);
* ``cmaes`` learns only from complete trials and ignores constraints: knobflow's CMA-ES
  (``_cmaes_class``) sees each blocked candidate of its generation as a complete draw with the
  worst value measured so far (only in what the sampler reads; the storage keeps no value), so
  its distribution moves away as it did when that value was stored. Without it a blocked draw is
  only drawn again (resampling) and half as many candidates again are blocked. Its fallback for
  categorical and bool knobs is TPE, which reads the constraints;
* ``random`` learns from nothing; ``nsga2`` learns from complete trials only and draws a
  blocked candidate again (it reads the SLA bounds' constraints of complete trials);
* ``surrogate`` (``tuners/surrogate.py``) counts a blocked candidate as the worst value seen,
  and drops candidates ``accept`` refuses before it chooses one: the rules are asked first.

``accept(params)`` (optional, built by the flow from the rule guard) says whether the rules let
a candidate run; samplers that cannot filter their candidates ignore it.

``benchmarks/blocked.py`` measures the search before and after (``benchmarks/RESULTS.md``)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from targets.common.errors import KnobflowError, did_you_mean

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = ["TUNERS", "make_sampler", "takes_pending"]

TUNERS = ("tpe", "random", "cmaes", "nsga2", "surrogate")
#: NSGA-II's generation: a job runs tens of trials, not the hundreds its default 50 is made for
NSGA2_POPULATION = 16


def make_sampler(name: str, seed: int | None = None, *,
                 accept: Callable[[dict[str, Any]], bool] | None = None) -> BaseSampler:
    """A new sampler for tuner ``name`` (one of ``TUNERS``), seeded for reproducibility;
    ``accept(params)`` is the rule engine's say on a candidate (used by ``surrogate``)."""
    import optuna

    if name == "surrogate":
        from tuners.surrogate import SurrogateSampler

        return SurrogateSampler(seed=seed, accept=accept)
    if name == "tpe":
        # multivariate TPE models interacting knobs; constant_liar spreads parallel trials apart
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        # a genetic search made for several objectives; it reads the SLA bounds' constraints
        # (constrained domination), and draws a blocked candidate again, as random does
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
    if name == "cmaes":
        # it warns on every blocked candidate that it does not read constraints: it sees them
        # as its worst draws instead (_cmaes_class)
        warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler",
                                category=UserWarning)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # CMA-ES handles the numeric knobs; categorical and bool knobs fall back to TPE
            return _cmaes_class()(
                seed=seed,
                independent_sampler=optuna.samplers.TPESampler(seed=seed),
                warn_independent_sampling=False,
            )
    raise KnobflowError(
        f"The 'tuner' option must be one of {', '.join(TUNERS)}. "
        f"Got '{name}' instead{did_you_mean(name, TUNERS)}."
    )


@functools.cache
def _cmaes_class() -> type[BaseSampler]:
    """CMA-ES that learns from blocked candidates: it reads a pruned trial with a constraint
    above zero as a complete one with the worst value measured so far (a stand-in the storage
    never holds). Made when first asked for: Optuna is not imported with this module."""
    import copy

    import optuna
    from optuna.study import StudyDirection
    from optuna.trial import FrozenTrial, TrialState

    class KnobflowCmaEs(optuna.samplers.CmaEsSampler):
        def _get_trials(self, study: optuna.Study) -> list[FrozenTrial]:
            trials = super()._get_trials(study)
            blocked = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                       if any(v > 0 for v in t.constraints.values())]
            values = [t.value for t in trials if t.value is not None]
            if not blocked or not values:
                return trials
            worst = min(values) if study.direction == StudyDirection.MAXIMIZE else max(values)
            seen = []
            for trial in blocked:
                stand_in = copy.copy(trial)  # a shallow copy: the stored trial stays as it is
                stand_in.state, stand_in.value = TrialState.COMPLETE, worst
                seen.append(stand_in)
            return sorted(trials + seen, key=lambda t: t.number)

    return KnobflowCmaEs


def takes_pending(sampler: BaseSampler) -> bool:
    """Whether ``sampler`` may be asked for a candidate while a finished trial is still untold
    (its cleaning runs beside the next trial): a sampler that ignores history (random, QMC) or
    one that sees running trials (TPE with ``constant_liar``, which counts them among the bad)
    loses little by it. Any other sampler (CMA-ES, a surrogate) is told every result before it
    is asked again (``tasks/explore.py``)."""
    import optuna

    if isinstance(sampler, optuna.samplers.RandomSampler | optuna.samplers.QMCSampler):
        return True
    return isinstance(sampler, optuna.samplers.TPESampler) and bool(
        getattr(sampler, "_constant_liar", False))
