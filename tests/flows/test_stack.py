"""``infra/stack``: the shared stack on one host, started and stopped as an operator does (the
script in a process of its own), admitting knobflow only, pointing ``knobflow doctor`` at every
store, and leaving no process behind; and the ``shared_stack`` session fixture."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, needs, run_cli, running, stack_missing, wait_for

pytestmark = needs("the shared stack", stack_missing(), "install postgresql")

SCRIPT = REPO / "infra" / "stack"


def stack_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KNOBFLOW_PYTHON": sys.executable}
    for key in ("KNOBFLOW_CONFIG", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
                "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd=REPO)


def exports(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        assert line.startswith("export "), line
        key, _, value = line[len("export "):].partition("=")
        found[key] = value
    return found


def left_behind(dir: Path) -> list[str]:
    """Processes whose command line names ``dir``, and the processes of its cluster."""
    from targets import postgres_cluster as pgc
    from targets import postgres_leftovers as pgl

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and str(dir) in " ".join(proc.info["cmdline"] or []):
                found.append(" ".join(proc.info["cmdline"]))
        except psutil.Error:
            continue
    cluster = pgc.locate(dir)
    if cluster is not None:
        found += [f"postgres {p.pid}" for p in pgl.cluster_processes(cluster)]
    return found


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stack started by ``infra/stack start`` in a directory of its own."""
    dir = tmp_path_factory.mktemp("cli-stack") / "stack"
    done = stack_cli("start", "--dir", str(dir))
    try:
        assert done.returncode == 0, done.stderr
        yield dir
    finally:
        stack_cli("stop", "--purge", "--dir", str(dir))


def test_start_records_the_stack_and_env_points_at_it_without_the_secret(started: Path) -> None:
    secret = (started / "secret").read_text().strip()
    assert stat.S_IMODE(os.stat(started / "secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(started).st_mode) == 0o700
    status = stack_cli("status", "--dir", str(started), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["up"] and set(report["components"]) == {"postgres", "prefect", "mlflow"}
    assert all(c["answers"] and c["pid"] for c in report["components"].values()), report
    env = stack_cli("env", "--dir", str(started))
    assert env.returncode == 0, env.stderr
    values = exports(env.stdout)
    assert set(values) == {"KNOBFLOW_CONFIG", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"}
    assert values["KNOBFLOW_CONFIG"] == str(started / "knobflow.toml")
    config = (started / "knobflow.toml").read_text()
    record = (started / "stack.json").read_text()
    for text in (env.stdout, env.stderr, config, record, status.stdout):
        assert secret not in text
    assert "postgresql+psycopg2://knobflow@127.0.0.1:" in config
    for proc in psutil.process_iter(["cmdline"]):  # no command line holds the secret
        assert secret not in " ".join(proc.info["cmdline"] or [])
    again = stack_cli("start", "--dir", str(started))
    assert again.returncode == 0 and "already running" in again.stderr


def test_every_server_admits_knobflow_only(started: Path) -> None:
    from flows.stack_postgres import answers
    from flows.stack_services import http_status, prefect_answers

    secret = (started / "secret").read_text().strip()
    data = json.loads((started / "stack.json").read_text())
    probe = f"{data['mlflow']['url']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(probe) == 401
    assert http_status(probe, ("knobflow", "wrong")) == 401
    assert http_status(probe, ("knobflow", secret)) == 200
    # the auth app keeps a checked credential (AUTH_CACHE_S): a wrong one after it is refused
    assert http_status(probe, ("knobflow", secret[:-1])) == 401
    assert http_status(probe, ("knobflow", secret)) == 200
    prefect = data["prefect"]["url"]
    assert http_status(f"{prefect}/admin/version") == 401
    assert not prefect_answers(prefect, "wrong")
    assert prefect_answers(prefect, secret)
    port = data["postgres"]["port"]
    assert not answers("127.0.0.1", port, "knobflow", "wrong")
    assert not answers("127.0.0.1", port, "postgres", secret)
    assert answers("127.0.0.1", port, "knobflow", secret)


def test_doctor_is_green_on_the_stack(started: Path, tmp_path: Path) -> None:
    values = exports(stack_cli("env", "--dir", str(started)).stdout)
    done = run_cli(["doctor", "--home", str(tmp_path / "kf")], env=values)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workers_of_a_test_bed_host_reach_the_stack_and_stop(started: Path, tmp_path: Path
                                                               ) -> None:
    from flows.server import api_client

    values = exports(stack_cli("env", "--dir", str(started)).stdout)
    env = {**os.environ, **values, "KNOBFLOW_PYTHON": sys.executable}
    env.pop("PREFECT_API_AUTH_STRING", None)  # from the secret_file the config names
    proc = subprocess.Popen([str(SCRIPT), "workers", "--workers", "1", "--queue", "production",
                             "--dir", str(tmp_path / "w")], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    secret = (started / "secret").read_text().strip()
    client_env = {"PREFECT_API_URL": values["PREFECT_API_URL"],
                  "PREFECT_API_AUTH_STRING": f"knobflow:{secret}"}
    try:
        with api_client(client_env) as client:
            wait_for(lambda: client.read_workers_for_work_pool("knobflow"),
                     "the test-bed host's worker in the pool", timeout=120, interval=0.5)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        for worker in workers:
            assert secret not in " ".join(worker.cmdline())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not [w for w in workers if running(w)]


def test_stop_leaves_no_process(started: Path, tmp_path: Path) -> None:
    values = exports(stack_cli("env", "--dir", str(started)).stdout)
    assert left_behind(started)
    done = stack_cli("stop", "--dir", str(started))
    assert done.returncode == 0, done.stderr
    assert left_behind(started) == []
    assert stack_cli("status", "--dir", str(started)).returncode == 3
    assert stack_cli("stop", "--dir", str(started)).returncode == 0
    doctor = run_cli(["doctor", "--home", str(tmp_path / "kf")], env=values)
    assert doctor.returncode != 0
    from targets import postgres_cluster as pgc

    cluster = pgc.locate(started)
    assert cluster is not None and cluster.root.exists()
    assert stack_cli("stop", "--purge", "--dir", str(started)).returncode == 0
    assert not started.exists() and not cluster.root.exists()


def test_bad_input_is_named(tmp_path: Path) -> None:
    done = stack_cli("start", "--dir", str(tmp_path / "s"), "--postgres-url",
                     "postgresql://knobflow:pw@127.0.0.1:5432/postgres")
    assert done.returncode == 1 and "must not hold a password" in done.stderr
    assert left_behind(tmp_path / "s") == []
    none = stack_cli("env", "--dir", str(tmp_path / "none"))
    assert none.returncode == 1 and "no stack" in none.stderr


def test_shared_stack_fixture_serves_clients_and_workers(
        shared_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from flows.server import api_client

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, shared_stack[key])
    client = mlflow.MlflowClient(tracking_uri=shared_stack["MLFLOW_TRACKING_URI"])
    assert client.create_experiment("stack-fixture")
    stack = shared_stack.stack  # type: ignore[attr-defined]
    procs = stack.start_workers(1)
    with api_client(shared_stack) as prefect:
        queues = {q.name: q.priority for q in prefect.read_work_queues(work_pool_name="knobflow")}
        assert queues == {"production": 1, "default": 10}
        assert len(prefect.read_workers_for_work_pool("knobflow")) >= 1
    stack.stop_workers([p.pid for p in procs])
    assert all(p.poll() is not None for p in procs)
