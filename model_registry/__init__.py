"""Model repository: the MLflow registry of surrogate models per service and objective (issue 6)."""
