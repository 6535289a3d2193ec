"""Candidate generation: search spaces as Optuna distributions, samplers, studies on disk, and
the trial record and trial table (``tuners.trials``, its own layer above the rule engine).

Every name below is imported when first used (the CLI reads ``TUNERS`` and must start fast).
"""

from targets.common.exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "samplers": ("TUNERS", "make_sampler"),
    "space": ("SearchSpace", "load_space", "parse_space"),
    "study": ("journal_path", "open_job_study", "open_study"),
    "trials": ("TrialOutcome", "TrialStatus", "best_trial", "finished_trials",
               "training_rows"),
})
