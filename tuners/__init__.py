"""Candidate generation: search spaces as Optuna distributions, samplers, studies on disk, and
the trial record and trial table (``tuners.trials``, its own layer above the rule engine).

Every name below is imported when first used (the CLI reads ``TUNERS`` and must start fast).
"""

from targets.common.exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "samplers": ("TUNERS", "make_sampler"),
    "space": ("SearchSpace", "load_space", "parse_space"),
    "study": ("JOURNAL", "journal_path", "metric_name", "name_metric", "open_job_study",
              "open_study", "storage_of", "study_names"),
    "trials": ("TrialOutcome", "TrialStatus", "best_trial", "finished_trials",
               "training_rows"),
})
