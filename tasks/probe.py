"""The noise check at a job's start: the default config run a few times before the search.

One run of the default is one draw: on a loaded machine a lucky one steers the whole search (the
tuner chases a bar nothing can reach, or a config looks better than it is). ``probe_noise`` runs
the default ``runs`` times on the job's first instance, before any trial, and ``check_noise``
(``tasks/noise.py``) decides from their spread whether the job repeats its trials and
re-measures the default as it goes. These runs are not trials of the study: they do not count
against the budget, like the baselines and the verification's runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.noise import NoiseCheck, check_noise
from tasks.runner import TrialRunner, run_trial
from tuners.trials import TrialOutcome

__all__ = ["probe_noise"]

#: Seeds of the noise check's runs: apart from the trials', baselines' and verification's.
_SEED_BASE = 2 * 10**6


@task(name="probe-noise", cache_policy=NO_CACHE)
def probe_noise(
    runner: TrialRunner,
    default_config: Mapping[str, Any],
    instance: str,
    runs: int,
    threshold: float,
    *,
    repeats: int,
    baseline_every: int,
    free: Sequence[str],
    on_run: Callable[[str, TrialOutcome], None] | None = None,
) -> NoiseCheck:
    """Run the default ``runs`` times on ``instance`` (stopping at its first failure: a full
    disk, a default the system refuses); what the job does about their spread."""
    values: list[float] = []
    failures: list[str] = []
    for i in range(runs):
        key = f"noise-{i}"
        outcome = run_trial(runner, key, dict(default_config), instance,
                            runner.trial_seed(_SEED_BASE + i), single=True)
        if on_run is not None:
            on_run(key, outcome)
        if outcome.ok and outcome.value is not None:
            values.append(outcome.value)
        else:  # the search's trial 0 (the default) meets the failure too, and handles it
            failures.append(f"run {i}: {outcome.failure_class}: {outcome.message}")
            break
    return check_noise(values, runs, threshold, repeats=repeats, baseline_every=baseline_every,
                       free=free, failures=failures)
