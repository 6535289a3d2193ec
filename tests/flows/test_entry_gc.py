"""The console script's entry (``flows.entry``) for a cold command: the garbage collector off
while it imports, then on again with what the imports made frozen, for every command and every
way it ends; a ``tune`` ends without the interpreter's teardown and loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import REPO, wait_for

#: The console script's entry, with a probe: at the job's start (``flows.tune.tune`` called) and
#: at the process's exit, whether the collector is on and how many objects are frozen.
PROBE = """
import atexit, gc, json, sys
def said(when):
    print("GC " + json.dumps({"when": when, "on": gc.isenabled(),
                              "frozen": gc.get_freeze_count()}), file=sys.stderr, flush=True)
atexit.register(said, "exit")
if "tune" in sys.argv[1:2]:
    import flows.tune
    job = flows.tune.tune
    def probed(*args, **kwargs):
        said("job")
        return job(*args, **kwargs)
    flows.tune.tune = probed
from flows.entry import main
sys.exit(main())
"""


def _run(args: list[str], tmp_path: Path, **kwargs: object
         ) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "KNOBFLOW_NO_WARM": "1"}
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600,
                          **kwargs)  # type: ignore[call-overload]
    states = {}
    for line in done.stderr.splitlines():
        if line.startswith("GC "):
            state = json.loads(line[3:])
            states[state.pop("when")] = state
    assert "exit" in states, done.stderr
    return done, states


def test_a_cold_tune_command_runs_its_job_with_the_collector_on_and_keeps_all_it_wrote(
        tmp_path: Path) -> None:
    """The job runs with the collector on and the imports frozen; the command ends with
    ``end_process`` (no teardown of the interpreter's objects): its trials, MLflow run and
    result are all written, and nothing it started is left running."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    home = tmp_path / "home"
    done, states = _run(["tune", "synthetic", "--budget", "12", "--set-workload", "duration=0",
                         "--home", str(home), "--json"], tmp_path, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert states["job"]["on"] is True
    assert states["job"]["frozen"] > 10_000  # what the imports made (~1.5 million objects)
    assert states["exit"]["on"] is True
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads((Path(summary["best_config_file"]).parent / "result.json").read_text())
    assert len(pd.read_parquet(summary["trial_table"])) == 12
    uri = summary["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    left = [p for p in psutil.process_iter(["cmdline"])
            if str(home) in " ".join(p.info["cmdline"] or []) or
            (p.info["cmdline"] or [])[-1:] == [str(tmp_path / "prefect")]]
    wait_for(lambda: not [p for p in left if p.is_running() and
                          p.status() != psutil.STATUS_ZOMBIE], "the job's processes to end",
             timeout=10)


@pytest.mark.parametrize("args", [
    ["targets"],  # any other command: on again once the CLI is loaded
    ["tune", "synthetic", "--budget", "0"],  # refused before its job: on again at its end
])
def test_a_command_ends_with_the_collector_on(args: list[str], tmp_path: Path) -> None:
    done, states = _run(args, tmp_path)
    assert done.returncode == (0 if args == ["targets"] else 2)
    assert "job" not in states
    assert states["exit"]["on"] is True and states["exit"]["frozen"] > 0, states


def test_the_warm_process_freezes_what_it_loaded_before_any_job_is_forked() -> None:
    """A forked job's collections then skip the ~1.5 million objects every job has (and leave
    their memory pages shared with the warm process)."""
    done = subprocess.run(
        [sys.executable, "-c", "import gc; from flows.warm import _preload; "
         "before = gc.get_freeze_count(); _preload(); print(before, gc.get_freeze_count())"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0 and after > 100_000, (before, after)
