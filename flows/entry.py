"""The ``knobflow`` console script: a ``tune`` command runs in the home's warm process when one
serves it (``flows.warm_client``), every other command (and ``tune`` without one) in this process
(``flows.cli``). Only the standard library and knobflow's settings are imported before that
choice, so a warm job does not pay for the cold command's imports.

A ``tune`` command ends with ``end_process``: its threads joined and exit handlers run as at any
exit, then the process ends without the interpreter's teardown of every object it loaded (~3 s
after the result was printed, measured here; nothing of a job's is left to it: what must be
written is written before the result, and the exit handlers stop Prefect's server and flush its
logs).

Python's cyclic garbage collector is off while a cold command imports (``imports_done`` turns it
back on): every full collection walks every object the imports made so far, and a ``tune``
command's imports (~5,000 modules) ran ~1,500 collections that took 1.9 s of their 12 s on a
slow VM (``benchmarks/import_gc.py``; ``benchmarks/RESULTS.md``). What the imports made is then
frozen (``gc.freeze``): the collections of the job that follows walk only what the job makes."""

from __future__ import annotations

import gc
import sys

__all__ = ["end_process", "imports_done", "main"]


def main() -> int:
    """Entry point of the console script; returns the exit code."""
    gc.disable()  # until the command's imports are done (the module's docstring)
    from flows.timing import process_started
    from flows.warm_client import delegate

    started = process_started()
    code = delegate(sys.argv[1:], started)
    if code is not None:
        return code
    from flows.cli import main as here

    if sys.argv[1:2] != ["tune"]:  # tune imports more before its job (``flows.cli_tune``)
        imports_done()
    try:
        code = here()
    finally:
        imports_done()
    if sys.argv[1:2] == ["tune"]:
        end_process(code)
    return code


def imports_done() -> None:
    """The command's imports are done: what they made is frozen (later collections skip it) and
    the collector is on again. Does nothing if ``main`` did not turn it off (a command run
    in-process, by a test or a warm child) or it is on already."""
    if gc.isenabled():
        return
    gc.freeze()
    gc.enable()


def end_process(code: int) -> None:
    """End this process with ``code`` as the interpreter ends one (output flushed, its threads
    joined, then its exit handlers), without the teardown of every loaded object after."""
    import atexit
    import contextlib
    import os
    import threading

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
