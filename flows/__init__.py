"""Prefect flows that chain knobflow's tasks, and the ``knobflow`` command."""
