"""The sampler factory: a tuner name becomes an Optuna sampler."""

from __future__ import annotations

import warnings

import optuna
from optuna.samplers import BaseSampler

from targets.common.errors import KnobflowError, did_you_mean

TUNERS = ("tpe", "random", "cmaes")


def make_sampler(name: str, seed: int | None = None) -> BaseSampler:
    """A new sampler for tuner ``name`` (one of ``TUNERS``), seeded for reproducibility."""
    if name == "tpe":
        # multivariate TPE models interacting knobs; constant_liar spreads parallel trials apart
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
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
