"""Rule engine: constraints, dependencies, known-bad configs and actuation triggers (issue 5)."""
