"""Prefect flows that chain knobflow's tasks, and the ``knobflow`` command."""

from flows.settings import quiet_environment

quiet_environment()
