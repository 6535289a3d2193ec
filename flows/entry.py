"""The ``knobflow`` console script: a ``tune`` command runs in the home's warm process when one
serves it (``flows.warm_client``), every other command (and ``tune`` without one) in this process
(``flows.cli``). Only the standard library and knobflow's settings are imported before that
choice, so a warm job does not pay for the cold command's imports."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    """Entry point of the console script; returns the exit code."""
    started = _process_start()
    from flows.warm_client import delegate

    code = delegate(sys.argv[1:], started)
    if code is not None:
        return code
    from flows.cli import main as here

    return here()


def _process_start() -> float:
    """When this process started (seconds since the epoch)."""
    import psutil

    return psutil.Process().create_time()
