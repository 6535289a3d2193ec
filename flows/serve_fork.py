"""Served flow runs started warm: ``knobflow serve`` forks each flow run from a process that has
loaded knobflow once, instead of a fresh interpreter that imports it all again.

Prefect's runner runs each flow run of an in-memory flow (``Runner.add_flow``) in a process of its
own, through ``prefect.flow_engine.run_flow_in_subprocess``: a ``multiprocessing`` "spawn" child,
which imports Prefect, MLflow, Great Expectations, scikit-learn and knobflow anew (seconds of CPU
per run, on every watch of every instance: ``benchmarks/serve_start.py``). ``fork_served_runs``
gives that function a ``multiprocessing`` forkserver in place of "spawn", in this process only:
the forkserver is started once, imports knobflow's packages and what a job imports
(``preload_modules``), and each flow run is a fork of it. The rest is Prefect's own: the run's
environment (this process's, as with "spawn"), its control channel, its payload, how the runner
watches, cancels and kills it. Once knobflow's code on disk or a library installed beside it
changes under a running serve (an upgrade), runs start in a new interpreter again (with the new
code) until serve is restarted. Each run ends with the fork server (``_ServedRunProcess``): the
runner hears of a run's end from the fork server, and would otherwise take a run for ended while
it ran on; ``multiprocessing`` starts a new fork server for the next run. Each run, forked or
spawned, holds the lifeline of serve's Prefect server (``flows.lifeline``).

A fork keeps no thread and no open database: the modules preloaded start neither when imported
(``flows.warm`` checks the same imports before its forks). A Prefect whose function does not ask
``multiprocessing`` for its context this way is left alone: its runs start cold, as before, and
``serve`` says so.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import multiprocessing.context
import os
import pkgutil
import signal
from collections.abc import Callable
from typing import Any

from flows.lifeline import LIFELINE_ENV, hold

__all__ = ["LOADED_BY_A_JOB", "fork_served_runs", "preload_modules"]

#: What a job imports inside functions (the new entries of a warm job's ``sys.modules``, 377
#: modules on 2026-12-03): Great Expectations, MLflow's SQLite stores and their migrations, its
#: sklearn flavour and git tags, LightGBM, skops, Parquet, pyplot. Loaded beside knobflow's
#: packages by the fork server here and by ``flows.warm``; a module missing here is imported by
#: the job itself.
LOADED_BY_A_JOB = (
    "great_expectations", "lightgbm.sklearn", "mlflow.sklearn", "mlflow.pyfunc",
    "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store", "mlflow.tracing.processor.otel",
    "mlflow.tracing.export.utils", "mlflow.genai.scorers", "alembic.command",
    "alembic.runtime.migration", "sqlalchemy.dialects.sqlite", "git", "graphviz", "skops.io",
    "matplotlib.pyplot", "matplotlib.backends.backend_agg", "pyarrow.parquet",
    "anyio._backends._asyncio", "pygments.formatters.html",
)


def preload_modules(packages: tuple[str, ...]) -> list[str]:
    """The modules a loaded process imports, in order: scipy.special first (as a command does,
    ``flows.cli_tune``), every module of ``packages``, then ``LOADED_BY_A_JOB``. Finding them
    imports ``packages`` here."""
    names = ["scipy.special"]
    for name in packages:
        package = importlib.import_module(name)
        names.append(name)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, f"{name}.")
                  if not info.name.endswith("__main__")]
    return [*names, *LOADED_BY_A_JOB]


#: The process that imported this module: in a fork server, the fork server itself (it preloads
#: knobflow), which is then the parent of every run forked from it.
_LOADED_IN = os.getpid()


class _ServedRunProcess(multiprocessing.context.ForkServerProcess):
    """A flow run forked by the fork server, which ends (SIGTERM: a job stops as interrupted)
    when the fork server does. The runner learns a run's end from the fork server; without it,
    the runner would take a run for ended (exit code 255, Crashed) while it ran on, orphaned
    and out of its reach (cancellation, serve's stop). What the fork server loaded is frozen
    for the collector first (``gc.freeze``, as ``flows.warm`` does before its forks): a full
    collection would otherwise walk all of it, ~0.5 s, and copy ~160 MB of its shared pages
    into each run (``benchmarks/RESULTS.md``)."""

    def run(self) -> None:
        from targets.process import die_with_parent

        gc.freeze()
        die_with_parent(signal.SIGTERM)
        if _LOADED_IN not in (os.getpid(), os.getppid()):  # it ended before the line above
            os.kill(os.getpid(), signal.SIGTERM)
        hold(os.environ.get(LIFELINE_ENV))
        super().run()


class _ServedRunContext(multiprocessing.context.ForkServerContext):
    """The fork server's context, its processes ``_ServedRunProcess``."""

    Process = _ServedRunProcess  # type: ignore[assignment]


class _ServedSpawnProcess(multiprocessing.context.SpawnProcess):
    """A flow run in a new interpreter (``--no-fork``, or knobflow changed under serve)."""

    def run(self) -> None:
        hold(os.environ.get(LIFELINE_ENV))
        super().run()


class _ServedSpawnContext(multiprocessing.context.SpawnContext):
    """The "spawn" context, its processes ``_ServedSpawnProcess``."""

    Process = _ServedSpawnProcess  # type: ignore[assignment]


class _ForkserverForSpawn:
    """Stands for the ``multiprocessing`` module inside ``prefect.flow_engine``: its "spawn"
    context is the fork server while knobflow's code and libraries on disk are what the fork
    server loaded (``fingerprint``); once they have changed (an upgrade under a running
    serve), runs start in a new interpreter, with the new code, and ``say`` tells it once.
    Without a fork server (``--no-fork``) every run starts in a new interpreter. Either way a
    run holds its server's lifeline (``flows.lifeline``)."""

    def __init__(self, forkserver: multiprocessing.context.BaseContext | None,
                 fingerprint: Callable[[], str], say: Callable[[str], Any]) -> None:
        self._forkserver, self._fingerprint, self._say = forkserver, fingerprint, say
        self._loaded = fingerprint() if forkserver is not None else ""  # what forks load
        self._changed = False
        self._spawn = _ServedSpawnContext()

    def get_context(self, method: str | None = None) -> Any:
        if method != "spawn":
            return multiprocessing.get_context(method)
        if self._forkserver is None:
            return self._spawn
        if not self._changed and self._fingerprint() != self._loaded:
            self._changed = True
            self._say("knobflow's code or its libraries changed since serve started: its "
                      "flow runs start in a new interpreter from now on; restart knobflow "
                      "serve to fork them again")
        return self._spawn if self._changed else self._forkserver

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def fork_served_runs(packages: tuple[str, ...], say: Callable[[str], Any] = print, *,
                     fork: bool = True) -> Callable[[], None] | None:
    """Start the forkserver (it loads ``preload_modules(packages)`` in the background) and make
    Prefect's direct-subprocess starter fork each flow run from it (``fork`` False: spawn each,
    as Prefect does, in a process that holds the server's lifeline). Returns what undoes that
    (the forkserver itself ends with this process), or None where this Prefect does not start
    runs the expected way (runs then start cold)."""
    try:
        from prefect import flow_engine
        from prefect.runner import _starter_direct
    except ImportError as exc:
        say(f"flow runs start cold: this Prefect has no direct-subprocess starter ({exc})")
        return None
    if (getattr(flow_engine, "multiprocessing", None) is not multiprocessing
            or getattr(_starter_direct, "run_flow_in_subprocess", None)
            is not getattr(flow_engine, "run_flow_in_subprocess", None)):
        say("flow runs start cold: this Prefect does not start them with "
            "prefect.flow_engine.run_flow_in_subprocess")
        return None
    from flows.warm_client import code_fingerprint

    forkserver = None
    if fork:
        forkserver = _ServedRunContext()
        forkserver.set_forkserver_preload(preload_modules(packages))
        from multiprocessing import forkserver as forkserver_module

        forkserver_module.ensure_running()  # it imports while the runner starts
    flow_engine.multiprocessing = _ForkserverForSpawn(  # type: ignore[assignment]
        forkserver, code_fingerprint, say)

    def undo() -> None:
        flow_engine.multiprocessing = multiprocessing  # type: ignore[assignment]

    return undo
