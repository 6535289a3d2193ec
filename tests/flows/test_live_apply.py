"""The inference plane end to end on live instances: apply, verify, keep or roll back, learn,
recover after a kill, canary. Synthetic instances for the logic (fast, no system needed); the real
PostgreSQL and Redis ones in tests/flows/test_live_systems.py."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from targets.live_daemon import launch, stop_launched
from tasks.instances import Instance, InstanceStore
from tests.conftest import invoke_cli, run_cli, start_cli, wait_for

WINDOWS = ["--windows", "3", "--window-s", "0.6"]
# a store made once per session (tests/conftest.py): these tests are not about making one
pytestmark = pytest.mark.usefixtures("mlflow_store")


def start_instance(home: Path, name: str, target: str = "synthetic", service: str = "svc",
                   workload: dict[str, Any] | None = None) -> Instance:
    """A launched instance under load, recorded in ``home`` as ``instance start`` does."""
    system = home / "systems" / name
    conn = launch(target, system, workload or {})
    instance = Instance(name=name, service=service, target=target, url=conn.url,
                        secret_file=conn.secret_file, launched=True, data_dir=system,
                        workload=workload or {})
    InstanceStore(home).add(instance)
    return instance


@pytest.fixture
def synthetic(home: Path) -> Iterator[Instance]:
    instance = start_instance(home, "syn-1")
    yield instance
    stop_launched(Path(str(instance.data_dir)))


def show(home: Path, name: str) -> dict[str, Any]:
    done = invoke_cli(["instance", "show", name, "--json", "--home", str(home)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def history(home: Path, name: str) -> list[dict[str, Any]]:
    done = invoke_cli(["history", name, "--json", "--home", str(home)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_regressing_config_is_rolled_back_read_back_and_learned(
        prefect_api: str, home: Path, synthetic: Instance, tmp_path: Path) -> None:
    before = show(home, "syn-1")["config"]
    bad = write_config(tmp_path / "bad.yaml", {"x": 0.0, "threads": 64})
    done = invoke_cli(["apply", "syn-1", str(bad), *WINDOWS, "--home", str(home)])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "syn-1: rolled_back" in done.stdout
    after = show(home, "syn-1")["config"]
    assert after == before  # read back from the system
    reference = json.loads((InstanceStore(home).dir("syn-1") / "reference.json").read_text())
    assert reference["source"].endswith(" rolled back") and reference["config"] == before
    learned = yaml.safe_load((home / "rules" / "svc.learned.yaml").read_text())["rules"]
    assert any("x == 0.0" in r["when"] and r["provenance"]["instance"] == "syn-1"
               for r in learned)
    rows = history(home, "syn-1")
    assert rows[-1]["outcome"] == "rolled_back"
    # the actuation's MLflow run: the diff, the windows, the test, the decision
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("knobflow/synthetic/actuations")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.data.tags["knobflow.outcome"] == "rolled_back"
    assert run.data.tags["knobflow.decision"] == "rollback"
    assert run.data.params["change.x"] == "0.0" and run.data.params["before.x"] == "0.7"
    assert run.data.metrics["test.ratio"] < 0.9
    assert len(client.get_metric_history(run.info.run_id, "after.throughput")) >= 3
    # the learned rule now refuses the same config before anything is changed (exit 3)
    again = invoke_cli(["apply", "syn-1", str(bad), *WINDOWS, "--home", str(home)])
    assert again.returncode == 3, again.stdout
    assert show(home, "syn-1")["config"] == before


def test_an_improving_config_is_kept(prefect_api: str, home: Path, synthetic: Instance,
                                     tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yaml", {"x": 0.25, "threads": 16})
    done = invoke_cli(["apply", "syn-1", str(good), *WINDOWS, "--home", str(home)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "syn-1: kept" in done.stdout
    config = show(home, "syn-1")["config"]
    assert (config["x"], config["threads"]) == (0.25, 16)
    # the watch's reference is now the windows after the change, on the kept config
    reference = json.loads((InstanceStore(home).dir("syn-1") / "reference.json").read_text())
    assert reference["source"] == f"actuation {history(home, 'syn-1')[-1]['id']} kept"
    assert (reference["config"]["x"], reference["config"]["threads"]) == (0.25, 16)
    assert len(reference["windows"]) >= 3 and reference["host"]["cpu_count"] >= 1


def test_dry_run_and_refusals_change_nothing(prefect_api: str, home: Path, synthetic: Instance,
                                             tmp_path: Path) -> None:
    before = show(home, "syn-1")["config"]
    good = write_config(tmp_path / "good.yaml", {"x": 0.25})
    dry = invoke_cli(["apply", "syn-1", str(good), "--dry-run", "--home", str(home)])
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "x: 0.7 -> 0.25" in dry.stdout
    blocked = write_config(tmp_path / "blocked.yaml", {"mode": "gamma", "threads": 1})
    refused = invoke_cli(["apply", "syn-1", str(blocked), "--home", str(home)])
    assert refused.returncode == 3, refused.stdout
    assert "refused" in refused.stdout
    assert show(home, "syn-1")["config"] == before
    assert history(home, "syn-1") == []


@pytest.mark.parametrize("phase", ["begin", "applied"])  # then windows of 4.5 s
def test_a_kill_mid_apply_is_finished_by_the_next_command(
        prefect_api: str, home: Path, synthetic: Instance, tmp_path: Path, phase: str) -> None:
    before = show(home, "syn-1")["config"]
    bad = write_config(tmp_path / "bad.yaml", {"x": 0.0, "threads": 64})
    log = InstanceStore(home).dir("syn-1") / "actuations.jsonl"
    proc = start_cli(["apply", "syn-1", str(bad), "--windows", "3", "--window-s", "1.5",
                      "--home", str(home)], prefect_api)
    try:
        wait_for(lambda: log.exists() and f'"phase": "{phase}"' in log.read_text(),
                 f"the apply to reach {phase}", timeout=120)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = history(home, "syn-1")  # any command on the instance finishes the actuation
    assert len(rows) == 1
    assert "by recovery after a crash" in rows[-1]["ended"]
    if phase == "begin":  # killed while the windows before ran: nothing had been changed
        assert rows[-1]["outcome"] == "failed"
    else:  # the change was made: the verification was finished, and it is worse
        assert rows[-1]["outcome"] == "rolled_back"
    assert show(home, "syn-1")["config"] == before
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["phase"] for line in lines].count("recovered") == 1


def test_canary_stops_at_the_first_instance_that_rolls_back(
        prefect_api: str, home: Path, tmp_path: Path) -> None:
    instances = [start_instance(home, f"syn-{i}", service="fleet") for i in (1, 2, 3)]
    try:
        before = [show(home, i.name)["config"] for i in instances]
        bad = write_config(tmp_path / "bad.yaml", {"x": 0.0, "threads": 64})
        done = invoke_cli(["apply", "--service", "fleet", str(bad), *WINDOWS,
                           "--home", str(home), "--json"])
        assert done.returncode == 1, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert [r["instance"] for r in result["results"]] == ["syn-1"]
        assert result["not_reached"] == ["syn-2", "syn-3"]
        assert [show(home, i.name)["config"] for i in instances] == before
    finally:
        for instance in instances:
            stop_launched(Path(str(instance.data_dir)))


def test_instance_start_workload_stop_leave_nothing(home: Path) -> None:
    started = run_cli(["instance", "start", "demo", "--target", "synthetic",
                       "--set-workload", "shift=0.2", "--home", str(home)], timeout=120)
    assert started.returncode == 0, started.stderr
    shown = show(home, "demo")
    assert shown["state"] == "running" and shown["workload"]["shift"] == 0.2
    changed = invoke_cli(["instance", "workload", "demo", "shift=0.6", "--home", str(home)])
    assert changed.returncode == 0, changed.stderr
    assert show(home, "demo")["workload"]["shift"] == 0.6
    stopped = invoke_cli(["instance", "stop", "demo", "--home", str(home)])
    assert stopped.returncode == 0, stopped.stderr
    system = Path(show(home, "demo")["data_dir"])
    assert not system.exists()
    assert show(home, "demo")["state"] == "stopped"


def test_tune_then_recommend_then_apply_the_recommendation(
        prefect_api: str, home: Path, synthetic: Instance) -> None:
    # in this process (the session's API; no interpreter to start), two pairs of verification
    tuned = invoke_cli(["tune", "synthetic", "--service", "svc", "--instance", "bed", "--budget",
                        "12", "--noise-runs", "0", "--verify-repeats", "2", "--home",
                        str(home)])
    assert tuned.returncode == 0, tuned.stderr
    shown = invoke_cli(["recommend", "syn-1", *WINDOWS, "--home", str(home), "--json"])
    assert shown.returncode == 0, shown.stderr
    rec = json.loads(shown.stdout)["recommendation"]
    assert rec["decision"] == "change" and rec["provenance"]["instances"] == ["bed"]
    done = invoke_cli(["apply", "syn-1", *WINDOWS, "--home", str(home), "--json"])
    result = json.loads(done.stdout)["results"][0]
    assert result["source"] == "recommendation"
    assert done.returncode == 0, result  # the siblings' best beats the default here
    config = show(home, "syn-1")["config"]
    assert {k: config[k] for k in result["changes"]} == result["changes"]
    assert result["changes"] == {k: c["to"] for k, c in rec["changes"].items()}


@pytest.mark.parametrize(("entrypoint", "params"), [
    ("flows/apply.py:apply_flow", {"instance": "kv-1", "config": {"hz": 20}, "dry_run": True}),
    ("flows/recommend.py:recommend_flow", {"instance": "kv-1", "windows": 5}),
])
def test_recommend_and_apply_are_flows_ready_for_deployments(
        entrypoint: str, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.exceptions import SignatureMismatchError
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(entrypoint)
    assert flow.validate_parameters(params) is not None
    with pytest.raises(SignatureMismatchError):
        flow.validate_parameters({**params, "instnace": "kv-2"})
    schema = parameter_schema(flow).model_dump()
    assert [n for n, p in schema["properties"].items() if not p.get("description")] == []


def test_instance_policy_is_shown_changed_and_checked(home: Path) -> None:
    InstanceStore(home).add(Instance(name="kv-9", service="kv", target="redis",
                                     url="unix:///nowhere/redis.sock"))
    shown = invoke_cli(["instance", "policy", "kv-9", "--home", str(home)])
    assert " ".join(shown.stdout.split()) == (
        "max_knobs=3 windows=5 window_s=5.0 alpha=0.01 min_effect=0.05 drift_test=ks "
        "drift_alpha=0.01 drift_psi=0.2 drift_rel=0.25 drift_perf_rel=0.3 drift_scale_rel=0.2 "
        "drift_cooldown_s=1800.0")
    changed = invoke_cli(["instance", "policy", "kv-9", "max_knobs=1", "windows=8",
                          "--home", str(home)])
    assert changed.returncode == 0, changed.stderr
    assert InstanceStore(home).get("kv-9").policy["max_knobs"] == 1
    bad = invoke_cli(["instance", "policy", "kv-9", "windows=1", "--home", str(home)])
    assert bad.returncode == 2
    assert "policy 'windows' must be an integer >= 2" in bad.stderr
    assert InstanceStore(home).get("kv-9").policy["windows"] == 8  # nothing stored
    drift = invoke_cli(["instance", "policy", "kv-9", "drift_test=psi", "drift_rel=0.5",
                        "--home", str(home)])
    assert drift.returncode == 0, drift.stderr
    assert InstanceStore(home).get("kv-9").policy["drift_test"] == "psi"
    bad = invoke_cli(["instance", "policy", "kv-9", "drift_alpha=0.9", "--home", str(home)])
    assert bad.returncode == 2
    assert "policy 'drift_alpha' must be a number in (0.0, 0.5)" in bad.stderr


def test_a_recommendation_changes_no_restart_knob_of_an_instance_without_restart(
        home: Path, synthetic: Instance) -> None:
    """Found by benchmarks/continual.py: a recommended buffer_kb (restart: true) was refused on
    an instance with no restart command, so the re-tune applied nothing."""
    import dataclasses

    from flows.apply import acting_on
    from flows.recommend import runtime_space

    with acting_on(home, "syn-1") as act:
        spec = act.live.spec
        restart_knobs = {k.name for k in spec if k.restart}
        assert restart_knobs and not act.live.connection.restart_command
        assert not restart_knobs & set(runtime_space(act).names)
        act.live.connection = dataclasses.replace(act.live.connection, restart_command="true")
        assert restart_knobs <= set(runtime_space(act).names)
