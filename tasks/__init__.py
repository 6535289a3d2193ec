"""Tasks of the tuning plane: trial execution (explore), measurement cleaning, tracking.

Kept import-light: the trial process imports ``tasks.trial_process`` and must not pay for Prefect,
MLflow or pandas.
"""
