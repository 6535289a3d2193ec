"""``knobflow serve``: the deployments of ``prefect.yaml`` served from this process, no work pool.

``prefect.yaml`` is the one declaration of knobflow's deployments (``prefect deploy --all`` puts
them on a work pool); ``serve`` reads the same file and gives each deployment to Prefect's own
``Runner`` (its schedules, its triggers as automations, each flow run in a process of its own,
forked from one that has loaded knobflow: ``flows.serve_fork``). With no ``PREFECT_API_URL``, it
starts knobflow's own Prefect server under the home (``flows.server``) and stops it on the way
out: Ctrl-C (or SIGTERM) stops the runner, its runs and the server, and leaves nothing running.
Killed outright, serve leaves the server to the runs in flight, and a watchdog stops it after
them (``flows.lifeline``).
The schedules of served deployments are paused when the runner stops (Prefect's default): nothing
fires while nothing serves them.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from targets.common.errors import KnobflowError

__all__ = ["PREFECT_YAML", "describe", "read_deployments", "serve", "served_flows"]

#: The repository's deployments.
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def read_deployments(path: Path, targets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The deployments declared in ``path`` (those tagged with one of ``targets``, if given)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KnobflowError(f"{path}: cannot be read ({exc.strerror}); give the prefect.yaml "
                            "to serve with --file") from None
    except yaml.YAMLError as exc:
        raise KnobflowError(f"{path}: not valid YAML ({exc})") from None
    deployments = (doc or {}).get("deployments") if isinstance(doc, Mapping) else None
    if not isinstance(deployments, list) or not deployments:
        raise KnobflowError(f"{path}: no 'deployments' list; see the repository's prefect.yaml")
    wanted = set(targets)
    chosen = [d for d in deployments if not wanted or wanted & set(d.get("tags") or [])]
    if not chosen:
        known = sorted({t for d in deployments for t in d.get("tags") or []} - {"knobflow"})
        raise KnobflowError(f"{path}: no deployment is tagged {', '.join(sorted(wanted))}; "
                            f"tags: {', '.join(known)}")
    return chosen


def _schedule_text(schedule: Mapping[str, Any]) -> str:
    if "cron" in schedule:
        return f"cron {schedule['cron']} {schedule.get('timezone', 'UTC')}"
    if "interval" in schedule:
        return f"every {float(schedule['interval']):g} s"
    return str(dict(schedule))


def _trigger_text(trigger: Mapping[str, Any]) -> str:
    expect = ", ".join(trigger.get("expect") or [])
    match = ", ".join(f"{k}={v}" for k, v in (trigger.get("match") or {}).items())
    return f"on {expect} ({match})" if match else f"on {expect}"


def describe(deployments: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per deployment: its full name (flow/deployment), schedules and triggers."""
    rows = []
    for d in deployments:
        flow_name = _flow_name(str(d["entrypoint"]))
        rows.append({
            "deployment": f"{flow_name}/{d['name']}",
            "schedules": "; ".join(_schedule_text(s) for s in d.get("schedules") or []) or "-",
            "triggers": "; ".join(_trigger_text(t) for t in d.get("triggers") or []) or "-",
        })
    return rows


def _flow_name(entrypoint: str) -> str:
    """The Prefect name of the flow at ``entrypoint`` (``path.py:function``), read from its
    ``@flow(name=...)`` without importing it (Prefect's default: the function's name, dashed)."""
    path, _, function = entrypoint.partition(":")
    try:
        tree = ast.parse((PREFECT_YAML.parent / path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        raise KnobflowError(f"prefect.yaml: entrypoint {entrypoint} cannot be read ({exc})"
                            ) from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call):
                    for kw in deco.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                            return str(kw.value.value)
            return function.replace("_", "-")
    raise KnobflowError(f"prefect.yaml: entrypoint {entrypoint}: {path} has no function "
                        f"{function}")


def _schedules(specs: Iterable[Mapping[str, Any]]) -> list[Any]:
    from prefect.schedules import Cron, Interval

    schedules: list[Any] = []
    for spec in specs:
        if "cron" in spec:
            schedules.append(Cron(spec["cron"], timezone=spec.get("timezone", "UTC")))
        elif "interval" in spec:
            schedules.append(Interval(timedelta(seconds=float(spec["interval"]))))
        else:
            raise KnobflowError(f"prefect.yaml: schedule {dict(spec)} has neither cron nor "
                                "interval")
    return schedules


def served_flows(deployments: Iterable[Mapping[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    """Each deployment's flow (loaded from its entrypoint, relative to the repository, which
    must be the working directory) with the arguments that make it a Prefect deployment
    (``Runner.add_flow``, ``Flow.to_deployment``)."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from prefect.flows import load_flow_from_entrypoint
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)

    served = []
    for d in deployments:
        flow = load_flow_from_entrypoint(str(d["entrypoint"]))
        triggers = [adapter.validate_python(
            {"name": f"{d['name']}__automation_{i}", **t})
            for i, t in enumerate(d.get("triggers") or [], start=1)]
        served.append((flow, {
            "name": str(d["name"]), "description": d.get("description"), "tags": d.get("tags"),
            "parameters": d.get("parameters") or {},
            "schedules": _schedules(d.get("schedules") or []), "triggers": triggers,
            "concurrency_limit": d.get("concurrency_limit")}))
    return served


def serve(home: Path, deployments: list[Mapping[str, Any]], *, limit: int | None = None,
          say: Any = print, warm: bool = True) -> None:
    """Serve ``deployments`` until Ctrl-C or SIGTERM; knobflow's own Prefect server when no
    ``PREFECT_API_URL`` is set (started first: Prefect reads its settings when imported). With
    ``warm``, each flow run is forked from a process that has loaded knobflow
    (``flows.serve_fork``); without it, each is a fresh interpreter."""
    from flows.server import PrefectServer

    # Ctrl-C stops serving even where the shell started this process with SIGINT ignored (a
    # background job of a script): Python then installs no handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    home.mkdir(parents=True, exist_ok=True)
    server, lifeline, lock = None, None, None
    if not os.environ.get("PREFECT_API_URL"):
        server = PrefectServer(home)
        lock = _serve_lock(server.dir)  # before the server: a second serve starts nothing
        say(f"starting knobflow's Prefect server under {server.dir} ...")
        os.environ.update(server.start())
        say(f"Prefect server: {os.environ['PREFECT_API_URL']} (UI without /api; user and "
            f"password: {server.dir / 'auth'})")
        lifeline = _hold_server(server, say)
    os.environ["KNOBFLOW_HOME"] = str(home)  # the flow runs' state directory
    undo = None
    try:
        os.chdir(PREFECT_YAML.parent)  # entrypoints are relative to the repository
        from prefect.exceptions import TerminationSignal
        from prefect.runner import Runner

        from flows.serve_fork import fork_served_runs
        from flows.warm_client import PACKAGES

        served = served_flows(deployments)  # before the fork server: it takes their sys.path
        undo = fork_served_runs(PACKAGES, say, fork=warm)
        runner = Runner(pause_on_shutdown=True, limit=limit)
        for flow, args in served:  # in memory: Prefect runs them without ``prefect.engine``
            runner.add_flow(flow, **args)
        how = "each flow run forked from a process that has loaded knobflow" if undo and warm \
            else "each flow run in a new process"
        say(f"serving {len(served)} deployments ({how}); Ctrl-C stops them")
        with contextlib.suppress(TerminationSignal):  # SIGTERM, as prefect.serve takes it
            asyncio.run(runner.start())
    finally:
        if undo is not None:
            undo()
        if server is not None:
            say("stopping knobflow's Prefect server")
            server.stop()
        for held in (lifeline, lock):
            if held is not None:
                os.close(held)


#: Seconds a serve waits for the lock of a home's server held by no serve: the server's
#: lifeline watchdog stopping it (SIGTERM, then SIGKILL after 10 s).
LOCK_WAIT_S = 20.0


def _serve_lock(folder: Path) -> int:
    """One serve per home's server: an exclusive ``flock`` on ``folder/serve.lock`` (the kernel
    drops it when its holder ends, however; exec'd children do not inherit it), or refuse at
    once, naming the serve that holds it. Two serves would share the server, and the first to
    stop would stop it under the other. Held by no live serve (the pid in the file has ended),
    it is the lifeline's watchdog stopping the server: wait for it (``LOCK_WAIT_S``)."""
    import fcntl
    import time

    import psutil

    from targets.process import private_dir

    private_dir(folder)
    fd = os.open(folder / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            if (holder.isdigit() and psutil.pid_exists(int(holder))) or time.monotonic() > deadline:
                os.close(fd)
                raise KnobflowError(
                    f"another knobflow serve (pid {holder}) serves this home's Prefect server "
                    f"({folder}); stop it first, or give another --home") from None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _hold_server(server: Any, say: Any) -> int | None:
    """Hold the lifeline of serve's Prefect server (``flows.lifeline``): killed outright, serve
    leaves the server to the flow runs still running, which hold it too, and a watchdog ends it
    after the last of them (the next serve of the home, taking the server over, holds it as
    well). Its FIFO reaches the runs through ``LIFELINE_ENV``. Where no FIFO can be made (a
    file system without them), serve goes on without and says so."""
    from flows.lifeline import LIFELINE_ENV, fifo_lifeline

    record = server.record()
    if record is None:  # ended since it answered: the runner's first call says so
        return None
    fifo = server.dir / "lifeline"
    try:
        held = fifo_lifeline(fifo, int(record["pid"]), server.dir / "server.json",
                             server.dir / "serve.lock")
    except OSError as exc:
        say(f"warning: no lifeline for the Prefect server ({fifo}: {exc.strerror}): if serve "
            "is killed outright, the server is left running until the next serve of this home")
        return None
    os.environ[LIFELINE_ENV] = str(fifo)
    return held
