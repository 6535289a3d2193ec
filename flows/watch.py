"""The watch: live instances observed against their references; drift becomes a Prefect event.

``watch_flow`` (the Prefect flow ``watch``, run by an interval deployment) watches the named
instance, the instances of a service, or every instance. For each one ``watch_instance``:

1. skips it when an actuation runs on it (its lock is held, or the actuation log grew while the
   windows were observed): a change in the middle of the windows is no drift ("busy");
2. observes it (``tasks.observe``; the instance's policy gives the windows) without taking its
   lock, so an apply can start at any time;
3. with no reference yet (or ``reset``), records the windows as the reference
   (``tasks.reference``: "first watch", "reset"); otherwise compares them with it
   (``tasks.drift.compare``);
4. on drift emits the Prefect event ``knobflow.drift.detected`` for the resource
   ``knobflow.instance.<name>`` with the evidence and the observed workload (what a re-tune is
   given), unless one was emitted after the reference was recorded and less than the policy's
   ``drift_cooldown_s`` ago (the re-tune it started is still running);
5. appends a line to ``instances/<name>/drift.jsonl``: ``time``, ``instance``, ``service``,
   ``target``, ``status`` (compared | reference | invalid), ``drifted``, ``summary``,
   ``evidence`` (``tasks.drift.Evidence.to_dict()`` each), ``notes``, ``workload``, ``event``
   (whether an event was emitted), ``event_id``, ``note`` (why not, when it was not),
   ``reference`` (its ``recorded`` and ``source``) and ``windows``.

``knobflow watch`` runs the same steps without a flow run (``watch_instances``), emitting the
event only when a Prefect API is configured (``PREFECT_API_URL``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from targets.common.errors import EnvironmentFault, KnobflowError
from targets.common.settings import knobflow_home
from targets.live import LiveSystem, live_system
from tasks.actlog import ActuationLog
from tasks.drift import DriftConfig, compare, observed_workload
from tasks.instances import Instance, InstanceStore, lock_holder
from tasks.observe import Observation, observe, observe_task
from tasks.reference import (
    Reference,
    append_drift,
    instance_host,
    load_reference,
    read_drift,
    save_reference,
    utc_now,
)

__all__ = ["DRIFT_EVENT", "drift_config", "emit_drift", "instances_to_watch", "watch_flow",
           "watch_instance", "watch_instances"]

DRIFT_EVENT = "knobflow.drift.detected"
Observe = Callable[..., Observation]


def drift_config(instance: Instance, live: LiveSystem) -> DriftConfig:
    """The instance's drift thresholds, its target's objective, its driver's scale values."""
    return DriftConfig.of_policy(instance.policy, objective=live.target_cls.default_objective,
                                 scale=type(live).scale_features)


def _busy(store: InstanceStore, name: str, log_size: int | None = None) -> str:
    """Why the instance cannot be watched now ('' when it can)."""
    holder = lock_holder(store, name)
    if holder is not None:
        who = (f"knobflow pid {holder.get('pid', '?')}, `{holder.get('command', '?')}`"
               if holder else "another process")
        return f"busy: an actuation runs ({who}); not observed"
    log = ActuationLog(store.dir(name) / "actuations.jsonl")
    if log_size is not None and _size(log.path) != log_size:
        return "busy: an actuation ran while the windows were observed; not compared"
    if log_size is None and log.unfinished() is not None:
        return ("busy: an actuation was left unfinished by a killed command; the next apply "
                "or observe finishes it")
    return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def cooldown_note(home: Path, name: str, reference: Reference, cooldown_s: float,
                  now: datetime | None = None) -> str:
    """Why no event may be emitted now ('' when one may): an event was emitted after the
    reference was recorded, less than ``cooldown_s`` ago."""
    recorded, now = _time(reference.recorded), now or datetime.now(UTC)
    for line in reversed(read_drift(home, name)):
        when = _time(line.get("time")) if line.get("event") else None
        if when is None:
            continue
        if recorded is not None and when < recorded:
            return ""
        age = (now - when).total_seconds()
        if age < cooldown_s:
            return (f"cooldown: a drift event was emitted {age:.0f} s ago (at {when:%H:%M:%S} "
                    f"UTC), after the reference was recorded: its re-tune runs; no new event "
                    f"for {cooldown_s - age:.0f} s (policy drift_cooldown_s)")
        return ""
    return ""


def emit_drift(home: Path, line: Mapping[str, Any]) -> str | None:
    """Emit ``knobflow.drift.detected`` for the watched instance of ``line``; the event's id,
    or None when Prefect did not emit it (no API it can reach)."""
    from prefect.events import emit_event

    name = str(line["instance"])
    event = emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"knobflow.instance.{name}",
                  "prefect.resource.name": name, "knobflow.service": str(line["service"]),
                  "knobflow.target": str(line["target"])},
        payload={"instance": name, "service": line["service"], "target": line["target"],
                 "home": str(home), "workload": dict(line["workload"]),
                 "summary": line["summary"], "evidence": list(line["evidence"])})
    return None if event is None else str(event.id)


def watch_instance(home: Path, name: str, *, windows: int | None = None,
                   window_s: float | None = None, reset: bool = False, emit: bool = False,
                   observe_fn: Observe = observe,
                   say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Watch instance ``name`` once (the steps: the module's doc); the line it appended to the
    drift log, or the reason it was skipped (``status`` "busy", nothing appended)."""
    store = InstanceStore(home)
    instance = store.get(name)
    base = {"instance": name, "service": instance.service, "target": instance.target}
    busy = _busy(store, name)
    if busy:
        say(f"{name}: {busy}")
        return {**base, "status": "busy", "drifted": False, "event": False, "note": busy,
                "summary": busy}
    mark = _size(store.dir(name) / "actuations.jsonl")
    live = live_system(instance.connection())
    config = drift_config(instance, live)
    n, seconds = windows or instance.policy["windows"], window_s or instance.policy["window_s"]
    say(f"{name}: observing {n} windows of {seconds:g} s")
    seen = observe_fn(live, windows=n, window_s=seconds, objective=config.objective)
    busy = _busy(store, name, mark)
    if busy:
        say(f"{name}: {busy}")
        return {**base, "status": "busy", "drifted": False, "event": False, "note": busy,
                "summary": busy}
    line = {"time": utc_now(), **base, **_judge(home, instance, seen, config, reset)}
    if line["drifted"]:
        line["note"] = cooldown_note(home, name, _reference_of(home, name), config.cooldown_s)
        if not line["note"] and emit:
            line["event_id"] = emit_drift(home, line)
            line["event"] = line["event_id"] is not None
            line["note"] = "" if line["event"] else "Prefect did not emit the event"
        elif not line["note"]:
            line["note"] = "no Prefect API is set (PREFECT_API_URL)"
    append_drift(home, name, line)
    say(f"{name}: {line['summary']}" + (f" ({line['note']})" if line.get("note") else ""))
    return line


def _reference_of(home: Path, name: str) -> Reference:
    reference = load_reference(home, name)
    if reference is None:  # it was there a moment ago
        raise KnobflowError(f"instance {name}: its reference disappeared while it was watched")
    return reference


def _judge(home: Path, instance: Instance, seen: Observation, config: DriftConfig,
           reset: bool) -> dict[str, Any]:
    """The observation recorded as the reference, or compared with it: the line's fields."""
    name, host = instance.name, instance_host(instance)
    fields: dict[str, Any] = {"drifted": False, "evidence": [], "notes": [], "event": False,
                              "event_id": None, "note": "", "windows": len(seen.windows),
                              "workload": observed_workload(instance, seen.windows)}
    if not seen.valid:
        return {**fields, "status": "invalid",
                "summary": "not compared: the windows failed the measurement gate: "
                + "; ".join(seen.reasons)}
    reference = None if reset else load_reference(home, name)
    if reference is None:
        reference = Reference(windows=list(seen.windows), config=dict(seen.config),
                              source="reset" if reset else "first watch", host=host)
        save_reference(home, name, reference)
        return {**fields, "status": "reference",
                "reference": {"recorded": reference.recorded, "source": reference.source},
                "summary": f"recorded as the reference ({reference.source}): "
                f"{len(seen.windows)} windows"}
    report = compare(reference, seen.windows, config, host=host, now_config=seen.config)
    return {**fields, "status": "compared", "drifted": report.drifted,
            "summary": report.summary, "notes": report.notes,
            "evidence": [e.to_dict() for e in report.evidence],
            "reference": {"recorded": reference.recorded, "source": reference.source}}


def instances_to_watch(store: InstanceStore, instance: str | None = None,
                       service: str | None = None, target: str | None = None) -> list[str]:
    """The named instance; or the instances of ``service``; or every instance (of ``target``,
    if given: a deployment per target watches that target's instances, maybe none)."""
    if instance is not None:
        return [store.get(instance).name]
    found = store.of_service(service) if service else store.list()
    if service and not found:
        raise KnobflowError(f"service '{service}' has no instances; see `knobflow instance "
                            "list`")
    return [i.name for i in found if target is None or i.target == target]


def watch_instances(home: Path, names: Sequence[str], **options: Any) -> dict[str, Any]:
    """``watch_instance`` for each of ``names`` (``options``: its keywords). An instance that
    cannot be reached (``EnvironmentFault``) or whose reference is unreadable (``KnobflowError``)
    does not stop the others; the error is raised at the end (several: an ``EnvironmentFault``
    naming each). The lines, the instances that drifted, those an event was emitted for."""
    results, faults = [], []
    for name in names:
        try:
            results.append(watch_instance(home, name, **options))
        except (EnvironmentFault, KnobflowError) as exc:
            faults.append((name, exc))
    if len(faults) == 1 and len(names) == 1:
        raise faults[0][1]
    if faults:
        raise EnvironmentFault("the watch failed on " + "; ".join(f"{n}: {e}" for n, e in faults))
    return {"instances": results, "drifted": [r["instance"] for r in results if r["drifted"]],
            "events": [r["instance"] for r in results if r["event"]]}


@flow(name="watch", log_prints=False)
def watch_flow(instance: str | None = None, service: str | None = None,
               target: str | None = None, home: str | None = None,
               windows: int | None = None, window_s: float | None = None) -> dict[str, Any]:
    """Observe live instances, compare each with its reference, and emit the Prefect event
    knobflow.drift.detected for each that drifted (the evidence and the observed workload in
    its payload).

    Args:
        instance: The instance to watch (default: those of service, or every instance).
        service: Watch the instances of this service.
        target: Watch only instances of this target (prefect.yaml: one watch per target).
        home: State directory (default ./.knobflow, or $KNOBFLOW_HOME).
        windows: Windows per observation (default: each instance's policy).
        window_s: Seconds per window (default: each instance's policy).
    """
    logger = get_run_logger()
    root = knobflow_home(home)
    names = instances_to_watch(InstanceStore(root), instance, service, target)
    return watch_instances(root, names, windows=windows, window_s=window_s, emit=True,
                           observe_fn=observe_task, say=logger.info)
