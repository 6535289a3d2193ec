"""Candidate generation: search spaces as Optuna distributions, samplers, studies, warm starts."""
