"""Model repository: the MLflow registry of surrogate models per service and objective, the
model inputs they share, transfer to a new instance of a service, and the config recommended for
a live instance.

Every name below is imported when first used (MLflow is slow to import).
"""

from targets.common.exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "features": ("feature_frame",),
    "fingerprint": ("distance", "fingerprint_hash"),
    "priors": ("prior_trials",),
    "recommend": ("recommend_task",),  # not "recommend": that name is the submodule
    "recommendation": ("Recommendation",),
    "references": ("JobReference", "find_reference"),
    "registry": ("Champion", "Decision", "champion_table", "load_champion", "load_version",
                 "model_name", "promote", "refusal", "register"),
    "store": ("client_for", "experiment_id", "process_tracking_uri"),
    "transfer": ("TransferPlan", "TransferRequest", "plan_transfer", "transfer_from_siblings"),
})
