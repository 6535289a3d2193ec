"""``knobflow instance ...``: the live instances of services (add, start, stop, list, show,
workload, remove).

An instance is *added* (a running system knobflow reaches with ``--connect``; its password goes to
a 0600 file in the home, never into the instance's record) or *started* (a demo or test instance
knobflow runs on 127.0.0.1 with a background load, ``targets.live_daemon``). Every command that
acts on one instance first finishes an actuation a killed knobflow left there (``acting_on``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_help import HOME_OPTION, PlainCommand

__all__ = ["instance_app", "progress_printer"]

instance_app = typer.Typer(help="Live instances: add, start, stop, list, show, change their load.",
                           no_args_is_help=True, rich_markup_mode=None)
_out, _err = Console(), Console(stderr=True)


def progress_printer(console: Console = _err) -> Any:
    """What long commands print as they go (one line per step), on stderr."""
    return lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)


def _root(home: str | None) -> Path:
    from targets.common.settings import knobflow_home, writable_home

    return writable_home(knobflow_home(home))


def _workload(target: str, items: list[str], file: str | None,
              base: dict[str, Any]) -> dict[str, Any]:
    """The whole workload: the target's defaults, ``base``, the file, the ``KEY=VALUE`` items."""
    from flows.inputs import parse_assignments, resolve_workload
    from targets.registry import load_target

    return resolve_workload(load_target(target), file, {**base, **parse_assignments(items)})


@instance_app.command("add", cls=PlainCommand)
def instance_add(
    name: Annotated[str, typer.Argument(help="Instance name, e.g. orders-db-3.")],
    service: Annotated[str, typer.Option(help="The service it is a replica of.")],
    target: Annotated[str, typer.Option(help="postgres or redis.")],
    connect: Annotated[str, typer.Option(help="postgresql://user@host:port/db, redis://host:port/0 "
                                         "or unix:///path/redis.sock.")],
    password_file: Annotated[Path | None, typer.Option(
        help="File whose first line is the password (kept by knobflow in a 0600 file).")] = None,
    restart: Annotated[str | None, typer.Option(
        help="Command that restarts the system, for knobs that need a restart.")] = None,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Add a running system as a live instance of SERVICE (checked to answer first)."""
    from targets.live import live_class, live_system
    from tasks.instances import Instance, InstanceStore, split_secret

    live_class(target)
    url, password = split_secret(connect)
    if password is not None:
        _err.print("knobflow: warning: the password was on the command line (other users see "
                   "it in ps); give it with --password-file next time", markup=False)
    if password_file is not None:
        password = password_file.read_text(encoding="utf-8").splitlines()[0].strip()
    store = InstanceStore(_root(home))
    instance = Instance(name=name, service=service, target=target, url=url,
                        restart_command=restart, launched=False)
    store.add(instance, password=password)
    try:
        version = live_system(store.get(name).connection()).ping()
    except Exception:
        store.remove(name)
        raise
    _out.print(f"added {name} ({version}, service {service}) at {url}", markup=False,
               soft_wrap=True)


@instance_app.command("start", cls=PlainCommand)
def instance_start(
    name: Annotated[str, typer.Argument(help="Instance name.")],
    target: Annotated[str, typer.Option(help="postgres, redis or synthetic.")],
    service: Annotated[str | None, typer.Option(help="Service (default: the target).")] = None,
    set_workload: Annotated[list[str] | None, typer.Option(
        "--set-workload", metavar="KEY=VALUE", help="A workload parameter of the load.")] = None,
    workload: Annotated[str | None, typer.Option(help="Workload YAML file.")] = None,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Run a demo/test instance on 127.0.0.1 with a background load (it keeps running)."""
    from targets.common.errors import KnobflowError
    from targets.live import live_class
    from targets.live_daemon import launch, stop_launched
    from tasks.instances import Instance, InstanceStore, check_name

    live_class(target)
    load = _workload(target, set_workload or [], workload, {})
    store = InstanceStore(_root(home))
    if check_name(name) in {i.name for i in store.list()}:
        raise KnobflowError(f"instance {name} exists already; remove it first (`knobflow "
                            f"instance remove {name}`) or pick another name")
    system_dir = store.dir(name) / "system"
    _err.print(f"starting {target} instance {name} ...", markup=False)
    conn = launch(target, system_dir, load)
    try:
        store.add(Instance(name=name, service=service or target, target=target, url=conn.url,
                           secret_file=conn.secret_file, restart_command=conn.restart_command,
                           launched=True, data_dir=system_dir, workload=load))
    except BaseException:
        stop_launched(system_dir)
        raise
    _out.print(f"started {name}: {target} at {conn.url} under load "
               f"{json.dumps(load, sort_keys=True)}", markup=False, soft_wrap=True)


@instance_app.command("stop", cls=PlainCommand)
def instance_stop(name: Annotated[str, typer.Argument(help="Instance name.")],
                  home: Annotated[str | None, HOME_OPTION] = None) -> None:
    """Stop a started instance and its load; its system's files are removed, its record and
    actuation history are kept ('instance remove' forgets it)."""
    from flows.apply import acting_on
    from targets.live_daemon import stop_launched

    root = _root(home)
    with acting_on(root, name, on_progress=progress_printer()) as act:
        if not act.instance.launched or act.instance.data_dir is None:
            raise typer.BadParameter(f"{name} was added, not started by knobflow: knobflow does "
                                     "not stop systems it did not start", param_hint="NAME")
        stop_launched(Path(act.instance.data_dir))
    _out.print(f"stopped {name}", markup=False)


@instance_app.command("remove", cls=PlainCommand)
def instance_remove(name: Annotated[str, typer.Argument(help="Instance name.")],
                    home: Annotated[str | None, HOME_OPTION] = None) -> None:
    """Forget an instance (a started one must be stopped first)."""
    from targets.live_daemon import daemon_pid
    from tasks.instances import InstanceStore

    store = InstanceStore(_root(home))
    instance = store.get(name)
    if instance.launched and instance.data_dir and daemon_pid(Path(instance.data_dir)):
        raise typer.BadParameter(f"{name} is running; `knobflow instance stop {name}` first",
                                 param_hint="NAME")
    store.remove(name)
    _out.print(f"removed {name}", markup=False)


@instance_app.command("workload", cls=PlainCommand)
def instance_workload(
    name: Annotated[str, typer.Argument(help="Instance name.")],
    assignments: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...",
                                                     help="Workload parameters to change.")],
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Change the load of a started instance while it runs."""
    from targets.live_daemon import daemon_pid, set_workload
    from tasks.instances import Instance, InstanceStore

    store = InstanceStore(_root(home))
    instance = store.get(name)
    if not instance.launched or instance.data_dir is None \
            or daemon_pid(Path(instance.data_dir)) is None:
        raise typer.BadParameter(f"{name} is not a running instance started by knobflow "
                                 "(see `knobflow instance list`)", param_hint="NAME")
    load = _workload(instance.target, assignments, None, dict(instance.workload or {}))
    set_workload(Path(instance.data_dir), load)
    store.update(Instance(**{**instance.__dict__, "workload": load}))
    _out.print(f"{name}: load now {json.dumps(load, sort_keys=True)}", markup=False)


@instance_app.command("policy", cls=PlainCommand)
def instance_policy(
    name: Annotated[str, typer.Argument(help="Instance name.")],
    assignments: Annotated[list[str] | None, typer.Argument(
        metavar="KEY=VALUE...", help="max_knobs, windows, window_s, alpha, min_effect; the "
        "watch's drift_test (ks or psi), drift_alpha, drift_psi, drift_rel, drift_perf_rel, "
        "drift_scale_rel, drift_cooldown_s.")] = None,
    home: Annotated[str | None, HOME_OPTION] = None,
) -> None:
    """Show or change how an instance is actuated (knobs per actuation, windows, the test) and
    when its watch calls a change drift."""
    from flows.inputs import parse_assignments
    from tasks.instances import Instance, InstanceStore, check_policy

    store = InstanceStore(_root(home))
    instance = store.get(name)
    policy = dict(instance.policy)
    for key, text in parse_assignments(assignments or [], "policy").items():
        try:
            policy[key] = json.loads(text)
        except ValueError:
            policy[key] = text
    policy = check_policy(policy, f"instance {name}")
    if assignments:
        store.update(Instance(**{**instance.__dict__, "policy": policy}))
    _out.print(" ".join(f"{k}={v}" for k, v in policy.items()), markup=False)


def _state(instance: Any) -> str:
    from targets.live_daemon import daemon_pid

    if instance.launched:
        running = instance.data_dir and daemon_pid(Path(instance.data_dir))
        return "running" if running else "stopped"
    return "added"


def _last(store: Any, name: str) -> dict[str, Any] | None:
    from flows.apply import log_path
    from tasks.actlog import ActuationLog, history_table

    path = log_path(store, name)
    rows = history_table(ActuationLog(path)) if path.exists() else []
    return rows[-1] if rows else None


@instance_app.command("list", cls=PlainCommand)
def instance_list(home: Annotated[str | None, HOME_OPTION] = None,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The live instances, their state and last actuation."""
    from tasks.instances import InstanceStore

    store = InstanceStore(_root(home))
    rows = [{"name": i.name, "service": i.service, "target": i.target, "url": i.url,
             "state": _state(i), "last_actuation": _last(store, i.name)} for i in store.list()]
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table("instance", "service", "target", "state", "connection", "last actuation")
    for r in rows:
        last = r["last_actuation"] or {}
        table.add_row(r["name"], r["service"], r["target"], r["state"], r["url"],
                      str(last.get("outcome", "-")))
    _out.print(table if rows else "no instances (add one with `knobflow instance add` or "
               "`knobflow instance start`)")


@instance_app.command("show", cls=PlainCommand)
def instance_show(name: Annotated[str, typer.Argument(help="Instance name.")],
                  home: Annotated[str | None, HOME_OPTION] = None,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """An instance: connection (no secrets), state, effective config read back, last actuation."""
    from flows.apply import acting_on
    from tasks.instances import InstanceStore

    root = _root(home)
    with acting_on(root, name, on_progress=progress_printer()) as act:
        data = act.instance.to_dict()
        data.pop("secret_file", None)
        data["state"] = _state(act.instance)
        data["has_password"] = act.instance.secret_file is not None
        try:
            data["config"], data["reachable"] = act.live.read_config(), True
        except Exception as exc:  # an unreachable system is said, not a failure of show
            data["config"], data["reachable"], data["error"] = None, False, str(exc)
        data["policy"] = act.policy.to_dict()
        data["last_actuation"] = _last(InstanceStore(root), name)
    if as_json:
        print(json.dumps(data, default=str))
        return
    for key in ("name", "service", "target", "url", "state", "reachable", "error"):
        if data.get(key) is not None:
            _out.print(f"{key}: {data[key]}", markup=False)
    for knob, value in sorted((data["config"] or {}).items()):
        _out.print(f"  {knob} = {value!r}", markup=False)
    _out.print(f"last actuation: {data['last_actuation'] or 'none'}", markup=False)
