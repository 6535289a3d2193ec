"""The sampler factory: a tuner name becomes an Optuna sampler.

Optuna is imported when a sampler is made, not with this module: the CLI reads ``TUNERS`` to
build its options and must start fast."""

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
