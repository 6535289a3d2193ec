"""The watch on a live synthetic instance: the first watch records the reference, a watch without
a change finds none, a workload change is drift (exit 1, naming the feature), an instance an
actuation holds is skipped, the cooldown holds back a second event, and the watch flow's event
reaches a real Prefect server. (That a kept actuation becomes the reference is checked in
tests/flows/test_live_apply.py, on the apply it runs anyway.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from targets.live import live_system
from targets.live_daemon import stop_launched
from tasks.instances import Instance, InstanceStore, instance_lock
from tasks.reference import (
    Reference,
    append_drift,
    load_reference,
    read_drift,
    save_reference,
)
from tests.conftest import REPO, invoke_cli, wait_for
from tests.flows.test_live_apply import start_instance

WATCH = ["--windows", "3", "--window-s", "0.5"]


@pytest.fixture
def synthetic(home: Path) -> Iterator[Instance]:
    instance = start_instance(home, "syn-w")
    live = live_system(instance.connection())
    wait_for(lambda: live.snapshot().values["ops"] > 0, "the load on the instance")
    yield instance
    stop_launched(Path(str(instance.data_dir)))


@pytest.fixture
def no_prefect_api() -> Iterator[None]:
    """No Prefect API in this process (the session's harness may have set one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def set_shift(home: Path, instance: Instance, shift: float) -> None:
    """Change the instance's load, and wait until its server runs the new one."""
    done = invoke_cli(["instance", "workload", instance.name, f"shift={shift}",
                       "--home", str(home)])
    assert done.returncode == 0, done.stderr
    live = live_system(instance.connection())
    wait_for(lambda: live.snapshot().values["shift_now"] == shift, f"the load at shift {shift}")


def watch(home: Path, *args: str) -> tuple[int, str]:
    done = invoke_cli(["watch", "syn-w", *args, *WATCH, "--home", str(home)])
    return done.returncode, done.stdout + done.stderr


def test_the_watch_records_a_reference_then_sees_a_workload_change(
        home: Path, synthetic: Instance, no_prefect_api: None) -> None:
    code, out = watch(home, "--once")
    assert code == 0, out
    assert "recorded as the reference (first watch): 3 windows" in out
    assert load_reference(home, "syn-w").source == "first watch"
    code, out = watch(home, "--once")
    assert code == 0, out
    assert "syn-w: no drift in" in out and "event: none (no drift)" in out
    with instance_lock(InstanceStore(home), "syn-w", command="knobflow apply syn-w"):
        code, out = watch(home, "--once")
    assert code == 0 and "busy: an actuation runs (knobflow pid" in out, out
    set_shift(home, synthetic, 0.9)
    code, out = watch(home, "--once")
    assert code == 1, out
    assert "drift: shift 0 -> 0.9 (from 0, fingerprint)" in out
    assert "event: not emitted: no Prefect API is set (PREFECT_API_URL)" in out
    lines = read_drift(home, "syn-w")
    assert [(ln["status"], ln["drifted"], ln["event"]) for ln in lines] == [
        ("reference", False, False), ("compared", False, False), ("compared", True, False)]
    assert lines[-1]["workload"]["shift"] == 0.9
    assert {e["name"] for e in lines[-1]["evidence"] if e["drifted"]} == {"shift"}
    code, out = watch(home, "--reset")
    assert code == 0 and "recorded as the reference (reset)" in out, out


def test_check_regression_of_an_instance_against_its_reference(
        home: Path, synthetic: Instance, no_prefect_api: None) -> None:
    """From CI: the instance now against the reference its kept actuation recorded."""
    from flows.apply import acting_on, apply_to

    save_reference(home, "syn-w", Reference([], {}, source="first watch"))
    with acting_on(home, "syn-w", windows=3, window_s=0.5) as act:
        done = apply_to(act, {"x": 0.25, "threads": 16}, source="test", tasks=False)
    assert done["outcome"] == "kept", done
    reference = load_reference(home, "syn-w")
    assert reference.source == f"actuation {done['id']} kept"
    # the same config: no regression; then a change made behind knobflow's back (a config far
    # from the optimum): a regression
    check = ["check-regression", "syn-w", *WATCH, "--home", str(home)]
    done = invoke_cli(check)
    assert done.returncode == 0, done.stdout + done.stderr
    live_system(synthetic.connection()).apply({"x": 0.8})
    done = invoke_cli(check)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "instance syn-w's reference (actuation" in done.stdout


def test_the_cooldown_holds_back_a_second_event(home: Path) -> None:
    from flows.watch import cooldown_note

    InstanceStore(home).add(Instance(name="syn-w", service="s", target="synthetic",
                                     url="synthetic:///nowhere"))
    now = datetime.now(UTC)
    reference = Reference([], {}, recorded=(now - timedelta(hours=1)).isoformat())
    assert cooldown_note(home, "syn-w", reference, 1800) == ""
    append_drift(home, "syn-w", {"time": (now - timedelta(seconds=60)).isoformat(),
                                 "event": True})
    assert cooldown_note(home, "syn-w", reference, 1800).startswith(
        "cooldown: a drift event was emitted 60 s ago")
    assert cooldown_note(home, "syn-w", reference, 30) == ""  # the cooldown is over
    newer = Reference([], {}, recorded=(now - timedelta(seconds=10)).isoformat())
    assert cooldown_note(home, "syn-w", newer, 1800) == ""  # a new reference since


_FLOW = """
import json, sys
from flows.watch import watch_flow
print(json.dumps(watch_flow(instance="syn-w", home=sys.argv[1], windows=3, window_s=0.5)))
"""


def test_the_watch_flow_emits_the_drift_event_to_the_server(
        home: Path, synthetic: Instance, prefect_server: dict[str, str]) -> None:
    from flows.watch import watch_instance

    watch_instance(home, "syn-w", windows=3, window_s=0.5)  # the reference, no Prefect
    set_shift(home, synthetic, 0.9)
    done = subprocess.run([sys.executable, "-c", _FLOW, str(home)], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, **prefect_server}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["drifted"] == ["syn-w"] and result["events"] == ["syn-w"], result
    event_id = result["instances"][0]["event_id"]
    event = wait_for(lambda: _find_event(prefect_server, event_id), "the event on the server")
    assert event.event == "knobflow.drift.detected"
    assert event.resource.id == "knobflow.instance.syn-w"
    assert event.resource["knobflow.target"] == "synthetic"
    assert event.payload["workload"]["shift"] == 0.9 and event.payload["home"] == str(home)
    assert any(e["name"] == "shift" and e["drifted"] for e in event.payload["evidence"])


def _find_event(env: dict[str, str], event_id: str) -> Any:
    """The event ``event_id`` as the server has it (None while it has not stored it)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {PREFECT_API_URL: env["PREFECT_API_URL"],
                PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}
    with temporary_settings(updates=settings), get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=["knobflow.drift.detected"]),
            resource=EventResourceFilter(id=["knobflow.instance.syn-w"])), limit=50)
    return next((e for e in page.events if str(e.id) == event_id), None)
