"""The console script's garbage collector (``flows.entry``): off while a cold command imports,
then on again with what the imports made frozen, for every command and every way it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

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


def _states(args: list[str], tmp_path: Path) -> tuple[int, dict[str, dict[str, object]]]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "KNOBFLOW_NO_WARM": "1"}
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    states = {}
    for line in done.stderr.splitlines():
        if line.startswith("GC "):
            state = json.loads(line[3:])
            states[state.pop("when")] = state
    assert "exit" in states, done.stderr
    return done.returncode, states


def test_a_cold_tune_command_runs_its_job_with_the_collector_on_and_its_imports_frozen(
        tmp_path: Path) -> None:
    code, states = _states(["tune", "synthetic", "--budget", "2", "--set-workload", "duration=0",
                            "--noise-runs", "0", "--no-train", "--home",
                            str(tmp_path / "home"), "--json"], tmp_path)
    assert code == 0, states
    assert states["job"]["on"] is True
    assert states["job"]["frozen"] > 10_000  # what the imports made (~1.5 million objects)
    assert states["exit"]["on"] is True


@pytest.mark.parametrize("args", [
    ["targets"],  # any other command: on again once the CLI is loaded
    ["tune", "synthetic", "--budget", "0"],  # refused before its job: on again at its end
])
def test_a_command_ends_with_the_collector_on(args: list[str], tmp_path: Path) -> None:
    code, states = _states(args, tmp_path)
    assert code == (0 if args == ["targets"] else 2)
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
