"""The sampler factory: a tuner name becomes an Optuna sampler.

Optuna is imported when a sampler is made, not with this module: the CLI reads ``TUNERS`` to
build its options and must start fast.

What each sampler does with a candidate the rules blocked (told as a pruned trial with a
``rules`` constraint above zero and no value, ``tuners.trials.blocked_trial``):

* ``tpe`` reads the constraints of complete and pruned trials and ranks infeasible ones among
  the bad: it learns to keep away from blocked regions (as it did from the stand-in value it was
  told before, which it never read: constraints come first);
* ``cmaes`` learns only from complete trials: a blocked draw is drawn again from the same
  distribution (resampling, a standard way for CMA-ES to keep inside constraints); its fallback
  for categorical and bool knobs is TPE, which reads the constraints;
* ``random`` learns from nothing.

``benchmarks/blocked.py`` measures the search before and after (``benchmarks/RESULTS.md``)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from targets.common.errors import KnobflowError, did_you_mean

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = ["TUNERS", "make_sampler"]

TUNERS = ("tpe", "random", "cmaes")


def make_sampler(name: str, seed: int | None = None) -> BaseSampler:
    """A new sampler for tuner ``name`` (one of ``TUNERS``), seeded for reproducibility."""
    import optuna

    if name == "tpe":
        # multivariate TPE models interacting knobs; constant_liar spreads parallel trials apart
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # it warns on every blocked candidate that it does not read constraints: it resamples
        warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler",
                                category=UserWarning)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # CMA-ES handles the numeric knobs; categorical and bool knobs fall back to TPE
            return optuna.samplers.CmaEsSampler(
                seed=seed,
                independent_sampler=optuna.samplers.TPESampler(seed=seed),
                warn_independent_sampling=False,
            )
    raise KnobflowError(
        f"The 'tuner' option must be one of {', '.join(TUNERS)}. "
        f"Got '{name}' instead{did_you_mean(name, TUNERS)}."
    )
