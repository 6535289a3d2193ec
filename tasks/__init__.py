"""Tasks of the tuning plane (running trials, cleaning measurements, verifying, tracking,
training) and of the inference plane (live-instance records, the actuation log, the keep/rollback
decision, the watch's reference and drift evidence).

Kept import-light: the trial process imports ``tasks.trial_process`` and must not pay for Prefect,
MLflow or pandas; every name below is imported when first used.
"""

from targets.common.exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "actlog": ("Actuation", "ActuationLog", "Outcome", "Phase", "history_table"),
    "clean": ("Cleaned", "clean_measurement", "measurement_row"),
    "decide": ("ChangeTest", "Decision", "DecisionError", "decide", "test_change"),
    "drift": ("DriftConfig", "DriftReport", "Evidence", "compare", "observed_workload"),
    "expert": ("check_rows", "merge_expert_rows"),
    "explore": ("ExploreStats", "Exploration", "explore"),
    "guard": ("CandidateGuard", "RuleLearner"),
    "instances": ("Instance", "InstanceStore", "instance_lock", "lock_holder", "split_secret"),
    "noise": ("NoiseCheck", "RepeatPolicy", "check_noise", "t_interval"),
    "probe": ("probe_noise",),
    "reference": ("Reference", "load_reference", "read_drift", "save_reference"),
    "runner": ("TrialRunner", "run_trial"),
    "services": ("ServiceSettings", "service_settings", "set_service_settings"),
    "model_runs": ("KindResult", "log_model_run"),
    "track": ("JobTracker", "start_tracking", "tag_flow_run"),
    "train": ("TrainReport", "train_models", "train_service_models"),
    "trial_process": ("TrialProcesses",),
    "verify": ("Verification", "verify_best"),
})
