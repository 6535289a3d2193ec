"""Regression checks from CI: the reference a job records, ``tune --fail-on-regression``,
``knobflow check-regression``, and the CI path itself: the Prefect CLI starts a deployment run of
the ``check-regression`` flow (served by a process of the test, on knobflow's own Prefect server)
and waits, exit 0 for a passing config and 1 for a regressing one; the command alone likewise.

The synthetic target: a tiny job finds a config about 2.4x the default's throughput (seed 0);
``threads: 1, x: 0.95`` is 0.003x of it; the job's own best config is the passing case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, invoke_cli, run_cli, wait_for

from flows.regression import REGRESSION, compare
from model_registry.references import CURRENT, REGRESSED, JobReference, find_reference
from targets.common.errors import KnobflowError
from targets.common.settings import tracking_uri

SLOW = {"threads": 1, "x": 0.95}
JOB = ["--service", "ci", "--noise-runs", "0", "--no-train", "--fail-on-regression", "--json"]


def test_the_verdict_is_the_interval_not_a_percentage() -> None:
    ref = [100.0, 102.0, 98.0, 101.0]
    slower = compare(ref, [95.0, 96.0, 94.5, 95.5], "maximize", metric="tps", name="n",
                     subject="s", reference_text="r")
    assert slower.verdict == REGRESSION and slower.high < 1 and slower.regression
    # the same 5 % loss, but noisy: not shown beyond the noise, so it passes as undecided
    noisy = compare(ref, [80.0, 110.0, 90.0, 100.0], "maximize", metric="tps", name="n",
                    subject="s", reference_text="r")
    assert noisy.verdict == "undecided" and noisy.low < 1 < noisy.high
    assert "undecided" in noisy.message and not noisy.regression
    # latency: higher is slower
    latency = compare([10.0, 10.2, 9.9], [12.0, 12.1, 11.8], "minimize", metric="ms", name="n",
                      subject="s", reference_text="r")
    assert latency.regression and latency.low > 1
    assert compare(ref, [110.0, 111.0, 109.0], "maximize", metric="tps", name="n", subject="s",
                   reference_text="r").verdict == "faster"
    quiet = [100.0, 100.3, 99.8, 100.1]  # within +-2 %, and shown to be
    assert compare(quiet, [100.1, 100.0, 99.9, 100.2], "maximize", metric="tps", name="n",
                   subject="s", reference_text="r").verdict == "same"
    with pytest.raises(KnobflowError, match="at least 2 on each side"):
        compare([100.0], [90.0, 91.0], "maximize", metric="tps", name="n", subject="s",
                reference_text="r")


@dataclass
class Recorded:
    home: Path
    env: dict[str, str]
    first: dict[str, Any]  # the summary of the job that recorded the reference
    second: dict[str, Any]  # ... of the job that regressed


def _tune(home: Path, env: dict[str, str], budget: int) -> tuple[int, dict[str, Any]]:
    done = run_cli(["tune", "synthetic", "--budget", str(budget), *JOB, "--home", str(home)],
                   env=env)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def recorded(prefect_server: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A job that records the service's reference, then one that regresses against it."""
    home = tmp_path_factory.mktemp("regression") / "kf"
    code, first = _tune(home, prefect_server, 3)
    assert code == 0 and first["gain_significant"], first  # trial 1 is ~2.4x the default
    code, second = _tune(home, prefect_server, 1)  # the default only: slower than the reference
    assert code == 1, second
    return Recorded(home, prefect_server, first, second)


def test_a_job_records_its_reference_and_fails_on_a_regression(recorded: Recorded) -> None:
    first, second = recorded.first, recorded.second
    assert first["regression"]["verdict"] == "no reference"
    assert "this job's result becomes the reference" in first["regression"]["message"]
    ref = JobReference.read(recorded.home / "jobs" / first["study_name"] / "reference.json")
    assert ref.config == first["best_config"] and ref.status == CURRENT
    assert ref.samples == first["verify_best_values"] and len(ref.samples) >= 3
    # the default won the second job: its runs of the default, topped up to 3
    check = second["regression"]
    assert check["verdict"] == REGRESSION and check["high"] < 1, check
    assert check["reference_values"] == ref.samples and len(check["new_values"]) == 3
    kept = recorded.home / "jobs" / second["study_name"]
    assert {"result.json", "job.json", "reference.json"} <= {p.name for p in kept.iterdir()}
    assert JobReference.read(kept / "reference.json").status == REGRESSED
    # the store's reference is still the first job's: a regressed result does not replace it
    found = find_reference(tracking_uri(recorded.home), "synthetic", "ci", "throughput",
                           ref.workload_key)
    assert found is not None and found.study == first["study_name"]
    assert found.run_id == first["mlflow_run_id"] and found.samples == ref.samples


def test_check_regression_of_a_recorded_job(recorded: Recorded) -> None:
    """The command alone on a recorded job: exit 1 on a regression (0 is in the CI path's
    test), 2 without a reference or for an unknown name."""
    home = ["--home", str(recorded.home)]
    done = invoke_cli(["check-regression", recorded.second["study_name"], "--json", *home])
    assert done.returncode == 1, done.stderr
    check = json.loads(done.stdout)
    assert check["verdict"] == REGRESSION and check["high"] < 1
    assert check["new_values"] == recorded.second["regression"]["new_values"]
    done = invoke_cli(["check-regression", recorded.first["study_name"], *home])
    assert done.returncode == 2 and "no reference for service 'ci'" in done.stderr
    assert "record one with `knobflow tune synthetic --service ci" in done.stderr
    done = invoke_cli(["check-regression", "ci-nope", *home])
    assert done.returncode == 2 and recorded.first["study_name"] in done.stderr


def _api(env: dict[str, str], path: str, body: dict[str, Any] | None = None) -> Any:
    """The answer of knobflow's Prefect server to GET (or POST ``body``) ``path``."""
    request = urllib.request.Request(
        f"{env['PREFECT_API_URL']}{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": "Basic " + b64encode(
            env["PREFECT_API_AUTH_STRING"].encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _deployment_exists(env: dict[str, str], name: str) -> bool:
    try:
        return bool(_api(env, f"/deployments/name/check-regression/{name}"))
    except OSError:
        return False


@pytest.fixture
def served(recorded: Recorded) -> Iterator[str]:
    """The check-regression flow served as deployment ``ci-<pid>`` (its job and home as
    parameters) by a process of this test, stopped after it with nothing left running."""
    name = f"ci-{os.getpid()}"
    params = {"name": recorded.first["study_name"], "home": str(recorded.home), "runs": 2}
    code = ("import sys, json\nfrom prefect import serve\n"
            "from flows.regression import check_regression\n"
            "serve(check_regression.to_deployment(name=sys.argv[1], "
            "parameters=json.loads(sys.argv[2])), print_starting_message=False)\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, name, json.dumps(params)], cwd=REPO,
        env={**os.environ, **recorded.env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: _deployment_exists(recorded.env, name) or proc.poll() is not None,
                 "the served deployment", timeout=120)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield name
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C stops `prefect ... serve`
        try:
            proc.wait(timeout=240)  # the runner pauses its deployment first: slow when loaded
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the served process did not stop on SIGINT")
        deadline = time.monotonic() + 60
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "a process of the served deployment is left"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_ci_path_a_deployment_run_and_the_command_exit_0_or_1(
        recorded: Recorded, served: str, tmp_path: Path) -> None:
    prefect = str(Path(sys.executable).with_name("prefect"))
    good = recorded.first["best_config"]
    env = {**os.environ, **recorded.env}
    codes = {}
    for case, config in (("pass", good), ("slow", SLOW)):
        done = subprocess.run(
            [prefect, "deployment", "run", f"check-regression/{served}", "--params",
             json.dumps({"config": config}), "--watch", "--watch-timeout", "300"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360, check=False)
        codes[case] = done.returncode
        assert done.returncode in (0, 1), done.stdout + done.stderr
    assert codes == {"pass": 0, "slow": 1}
    deployment = _api(env, f"/deployments/name/check-regression/{served}")["id"]
    runs = _api(env, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC", "deployments": {
        "id": {"any_": [deployment]}}})
    states = [(r["parameters"]["config"], r["state"]["type"], r["state"]["message"])
              for r in runs]
    assert [s[:2] for s in states] == [(good, "COMPLETED"), (SLOW, "FAILED")], states
    assert "RegressionFound" in states[1][2] and "entirely below 1" in states[1][2]
    # the command alone, as CI runs it: the passing config measured now (its exit 1 on a
    # recorded regression is test_check_regression_of_a_recorded_job's)
    path = tmp_path / "pass.yaml"
    path.write_text(yaml.safe_dump(good), encoding="utf-8")
    done = run_cli(["check-regression", recorded.first["study_name"], "--config", str(path),
                    "--runs", "2", "--json", "--home", str(recorded.home)], env=recorded.env)
    assert done.returncode == 0, done.stderr
    check = json.loads(done.stdout)
    assert not check["regression"] and len(check["new_values"]) == 2
    assert check["low"] < 1.05 and check["high"] > 0.95  # the same config, measured again
