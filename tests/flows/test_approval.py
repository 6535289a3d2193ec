"""Human approval of an actuation: a service's settings (``knobflow service``), the apply run that
pauses on a real Prefect server (knobflow's own, ``prefect_server``) until ``knobflow reject`` or
``approve`` answers it, on live synthetic instances; what a rejection, a timeout and an instance
changed meanwhile leave behind. The settings and the errors without a server run fast, in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.apply import acting_on, apply_to, log_path
from flows.approval import approval_form, approval_plan, settle
from targets.common.errors import KnobflowError
from targets.live_daemon import stop_launched
from tasks.actlog import ActuationLog
from tasks.instances import Instance, InstanceStore
from tasks.services import ServiceSettings, service_settings, set_service_settings, settings_path
from tests.conftest import CLI, REPO, invoke_cli, wait_for
from tests.flows.test_live_apply import WINDOWS, history, show, start_instance, write_config

GOOD = {"x": 0.25, "threads": 16}  # better than the synthetic default (0.7, 2): kept


# -- the settings ------------------------------------------------------------------------------
def test_a_service_has_defaults_and_keeps_what_is_set(home: Path) -> None:
    assert service_settings(home, "svc") == ServiceSettings()
    assert ServiceSettings().approval == "none" and ServiceSettings().approval_timeout_s == 86400
    for item in ("approval=required", "approval_timeout_s=600"):
        done = invoke_cli(["service", "set", "svc", item, "--home", str(home)])
        assert done.returncode == 0, done.stderr
    assert service_settings(home, "svc") == ServiceSettings(approval="required",
                                                            approval_timeout_s=600)
    shown = invoke_cli(["service", "show", "svc", "--json", "--home", str(home)])
    assert json.loads(shown.stdout)["settings"] == {"approval": "required",
                                                    "approval_timeout_s": 600,
                                                    "priority": "default"}
    path = settings_path(home, "svc")
    assert "approval: required" in path.read_text()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file


@pytest.mark.parametrize(("item", "said"), [
    ("approval=maybe", "setting 'approval' is 'maybe', it must be required or none"),
    ("approval_timeout_s=soon", "setting 'approval_timeout_s' is 'soon', it must be an integer"),
    ("approval_timeout_s=0", "setting 'approval_timeout_s' is 0, it must be an integer"),
    ("aproval=none", "unknown setting 'aproval' (did you mean 'approval'?)"),
    ("approval", "expected KEY=VALUE, e.g. approval=required"),
])
def test_a_bad_setting_is_one_line_and_nothing_is_stored(home: Path, item: str,
                                                         said: str) -> None:
    set_service_settings(home, "svc", {"approval_timeout_s": 60})
    before = settings_path(home, "svc").read_text()
    done = invoke_cli(["service", "set", "svc", "approval=required", item, "--home", str(home)])
    assert done.returncode == 2
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert settings_path(home, "svc").read_text() == before


@pytest.mark.parametrize(("text", "said"), [
    ("approval: [required\n", "not a readable YAML file"),
    ("- approval\n", "settings are a mapping of setting: value"),
    ("approval: maybe\n", "setting 'approval' is 'maybe', it must be required or none"),
    ("approval_timeout_s: '60'\n", "setting 'approval_timeout_s' is '60', it must be an integer"),
    ("aproval: required\n", "unknown setting 'aproval' (did you mean 'approval'?)"),
])
def test_a_bad_settings_file_names_the_file_the_field_and_the_fix(home: Path, text: str,
                                                                  said: str) -> None:
    path = settings_path(home, "svc")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(KnobflowError) as caught:
        service_settings(home, "svc")
    assert str(path) in str(caught.value) and said in str(caught.value)
    shown = invoke_cli(["service", "show", "svc", "--home", str(home)])
    assert shown.returncode == 2 and said in shown.stderr
    assert "knobflow service set svc" in shown.stderr  # the fix


def test_a_bad_service_name_is_refused(home: Path) -> None:
    done = invoke_cli(["service", "set", "../etc", "approval=none", "--home", str(home)])
    assert done.returncode == 2 and "bad service name '../etc'" in done.stderr
    assert not (home / "etc").exists()


# -- no server, no approval --------------------------------------------------------------------
def test_approval_without_a_prefect_server_fails_at_once(home: Path, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    InstanceStore(home).add(Instance(name="syn-9", service="svc", target="synthetic",
                                     url="synthetic:///nowhere/synthetic.sock"))
    set_service_settings(home, "svc", {"approval": "required"})
    config = write_config(tmp_path / "good.yaml", GOOD)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        for args in (["apply", "syn-9", str(config)], ["apply", "--service", "svc", str(config)],
                     ["approve", "some-run"], ["reject", "some-run"], ["approvals"]):
            done = invoke_cli([*args, "--home", str(home)])
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert "needs a Prefect server; start one with `knobflow serve` or set " \
                   "PREFECT_API_URL" in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
    assert not log_path(InstanceStore(home), "syn-9").exists()


# -- after the answer, on a live instance (no Prefect needed) ----------------------------------
@pytest.fixture
def live(home: Path) -> Iterator[Instance]:
    instance = start_instance(home, "syn-1")
    yield instance
    stop_launched(Path(str(instance.data_dir)))


def _plan(home: Path, changes: dict[str, Any]) -> dict[str, Any]:
    with acting_on(home, "syn-1") as act:
        preview = apply_to(act, changes, source="file good.yaml", dry_run=True)
        return approval_plan(act, preview, {}, ServiceSettings(approval="required"), ["syn-1"])


def test_the_form_shows_the_diff_and_the_verdict_and_a_changed_instance_is_refused(
        home: Path, live: Instance) -> None:
    plan = _plan(home, GOOD)
    form = approval_form(plan)
    assert "| x | 0.7 | 0.25 |" in form and "| threads | 2 | 16 |" in form
    assert "no rule blocks the resulting config" in form
    assert "**Predicted gain:** none (the config is not a model's recommendation)" in form
    with acting_on(home, "syn-1") as act:
        act.live.apply({"y": 2.0})  # someone changed the instance while it waited
    yes = {"approve": True, "reason": "", "by": "alice", "at": "now"}
    with acting_on(home, "syn-1") as act:
        result = settle(act, plan, yes, {})
    assert result is not None and result["outcome"] == "refused"
    assert result["note"] == ("the instance changed while waiting for approval; run apply "
                              "again")
    assert (show(home, "syn-1")["config"]["x"], history(home, "syn-1")) == (0.7, [])
    fresh = _plan(home, GOOD)  # a plan made from the config as it is now may go on
    with acting_on(home, "syn-1") as act:
        assert settle(act, fresh, yes, {}) is None


def test_the_form_of_a_recommendation_shows_its_predicted_gain_and_a_canary_its_rollout(
        home: Path, live: Instance) -> None:
    from model_registry.recommendation import Recommendation

    rec = Recommendation(service="svc", objective="throughput", direction="maximize",
                         decision="change", config={}, predicted=1200.0,
                         predicted_current=1000.0, predicted_gain=1.2, source="model",
                         provenance={"model_name": "knobflow-svc-throughput",
                                     "model_version": 3}).to_dict()
    with acting_on(home, "syn-1") as act:
        preview = apply_to(act, GOOD, source="recommendation", dry_run=True)
        plan = approval_plan(act, preview, {"recommendation": rec},
                             ServiceSettings(approval="required"), ["syn-1", "syn-2"])
    form = approval_form(plan)
    assert ("**Predicted gain:** throughput 1200.0 against 1000.0 now (1.200x, maximize; "
            "from model: knobflow-svc-throughput v3)") in form
    assert "the whole rollout of service svc: syn-1, syn-2, one after another" in form


# -- the whole path on a Prefect server --------------------------------------------------------
@contextlib.contextmanager
def on_server(env: dict[str, str]) -> Iterator[None]:
    """This process's Prefect client pointed at the server (as a shell with its env would be)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"],
                                     PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}):
        yield


def paused_apply_runs() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["apply"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED])))))


def form_of(run: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = run.state.state_details.run_input_keyset
        return str(json.loads(client.read_flow_run_input(run.id, keys["description"])))


def start_apply(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "apply", *args, *WINDOWS],
                            cwd=REPO, env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_paused(env: dict[str, str], proc: subprocess.Popen[str]) -> Any:
    def paused() -> Any:
        if proc.poll() is not None:
            pytest.fail(f"apply ended ({proc.returncode}) without pausing: "
                        f"{proc.communicate()}")
        return next(iter(paused_apply_runs()), None)

    with on_server(env):
        return wait_for(paused, "the apply run to pause", timeout=180, interval=0.5)


def test_an_apply_waits_for_the_operator_a_rejection_changes_nothing_an_approval_applies(
        prefect_server: dict[str, str], home: Path, tmp_path: Path) -> None:
    """Rejected by knobflow reject, then by the timeout: nothing changes; a canary approved
    once with knobflow approve: every instance applied, verified and kept."""
    instances = [start_instance(home, f"syn-{i}") for i in (1, 2)]
    procs: list[subprocess.Popen[str]] = []
    try:
        set_service_settings(home, "svc", {"approval": "required"})
        before = show(home, "syn-1")["config"]
        good = str(write_config(tmp_path / "good.yaml", GOOD))
        procs.append(start_apply(["syn-1", good, "--home", str(home)], prefect_server))
        run = wait_paused(prefect_server, procs[-1])
        with on_server(prefect_server):
            assert "| x | 0.7 | 0.25 |" in form_of(run)
            assert show(home, "syn-1")["config"] == before  # no lock held while it waits
            said = invoke_cli(["reject", run.name, "--reason", "not during the sale",
                               "--home", str(home)])
        assert said.returncode == 0, said.stderr
        assert f"rejected flow run {run.name}" in said.stdout
        out, err = procs[-1].communicate(timeout=120)
        assert procs[-1].returncode == 3, out + err
        assert "syn-1: rejected: by " in out and "not during the sale" in out
        assert show(home, "syn-1")["config"] == before
        row = history(home, "syn-1")[-1]
        assert row["outcome"] == "rejected"
        assert "(knobflow reject)" in row["ended"] and "not during the sale" in row["ended"]

        # nobody answers within the service's timeout: rejected (this process's apply)
        set_service_settings(home, "svc", {"approval_timeout_s": 1})
        with on_server(prefect_server):
            done = invoke_cli(["apply", "syn-1", good, *WINDOWS, "--home", str(home)])
            assert paused_apply_runs() == []  # the run ended, and not as paused
        assert done.returncode == 3, done.stdout + done.stderr
        assert "nobody answered within 1 s" in done.stdout
        assert history(home, "syn-1")[-1]["outcome"] == "rejected"
        assert show(home, "syn-1")["config"] == before
        set_service_settings(home, "svc", {"approval_timeout_s": 600})

        # a canary: one approval for the whole rollout, then each instance verified and kept
        procs.append(start_apply(["--service", "svc", good, "--home", str(home)],
                                 prefect_server))
        run = wait_paused(prefect_server, procs[-1])
        with on_server(prefect_server):
            assert "the whole rollout of service svc: syn-1, syn-2" in form_of(run)
            listed = invoke_cli(["approvals", "--json", "--home", str(home)])
            assert [r["id"] for r in json.loads(listed.stdout)] == [str(run.id)]
            said = invoke_cli(["approve", str(run.id), "--home", str(home)])
            assert said.returncode == 0, said.stderr
            again = invoke_cli(["approve", str(run.id), "--home", str(home)])
        assert again.returncode == 2 and "is not paused (it is " in again.stderr
        out, err = procs[-1].communicate(timeout=180)
        assert procs[-1].returncode == 0, out + err
        for instance in instances:
            config = show(home, instance.name)["config"]
            assert (config["x"], config["threads"]) == (0.25, 16)
            assert history(home, instance.name)[-1]["outcome"] == "kept"
        begin = ActuationLog(log_path(InstanceStore(home), "syn-1")).actuations()[-1].entries[0]
        assert "(knobflow approve)" in begin["provenance"]["approval"]["by"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for instance in instances:
            stop_launched(Path(str(instance.data_dir)))

