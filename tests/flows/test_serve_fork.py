"""``flows.serve_fork``: what the fork server loads, and a Prefect that does not start flow runs
the expected way left alone (its runs start cold, and serve says so); ``knobflow serve``'s home
checked before anything starts. That served runs are forks of the fork server, end to end, is
checked by ``test_continual.py``."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from prefect import flow_engine

from flows import serve_fork
from flows.warm_client import PACKAGES
from tests.conftest import run_cli


def test_the_fork_server_loads_every_knobflow_module_and_what_a_job_imports() -> None:
    names = serve_fork.preload_modules(PACKAGES)
    assert names[0] == "scipy.special"  # before pandas and MLflow, as a command imports it
    for module in ("flows.tune", "flows.watch", "flows.retune", "tasks.gate", "tasks.train",
                   "tuners.surrogate", "targets.synthetic", "great_expectations",
                   "mlflow.sklearn", "lightgbm.sklearn"):
        assert module in names
    assert not [n for n in names if n.endswith("__main__")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("changed", ["multiprocessing", "run_flow_in_subprocess"])
def test_a_prefect_that_starts_runs_otherwise_is_left_alone(
        changed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if changed == "multiprocessing":  # the function no longer asks the module for "spawn"
        monkeypatch.setattr(flow_engine, "multiprocessing", object())
    else:  # the runner's starter calls something else
        from prefect.runner import _starter_direct

        monkeypatch.setattr(_starter_direct, "run_flow_in_subprocess", lambda *a, **k: None)
    said: list[str] = []
    assert serve_fork.fork_served_runs(PACKAGES, said.append) is None
    assert said and said[0].startswith("flow runs start cold")
    assert multiprocessing.get_context("spawn").get_start_method() == "spawn"
    if changed == "run_flow_in_subprocess":
        assert flow_engine.multiprocessing is multiprocessing  # untouched


def test_runs_start_in_a_new_interpreter_once_the_code_changed_under_serve() -> None:
    """After an upgrade under a running serve, a fork would run the old code: runs are spawned
    (with the code on disk) from then on, and serve says so once."""
    forkserver = multiprocessing.get_context("forkserver")
    on_disk = ["v1"]
    said: list[str] = []
    stand_in = serve_fork._ForkserverForSpawn(forkserver, lambda: on_disk[0], said.append)
    assert stand_in.get_context("spawn") is forkserver
    assert stand_in.get_context("fork") is multiprocessing.get_context("fork")
    assert stand_in.Process is multiprocessing.Process  # the rest is the module's own
    on_disk[0] = "v2"
    for _ in range(2):
        assert stand_in.get_context("spawn") is multiprocessing.get_context("spawn")
    on_disk[0] = "v1"  # changed once is changed: what runs may have loaded either
    assert stand_in.get_context("spawn") is multiprocessing.get_context("spawn")
    assert len(said) == 1 and "restart knobflow serve" in said[0]


def test_serve_refuses_a_home_that_is_a_file_before_it_starts_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    result = run_cli(["serve", "--target", "synthetic", "--home", str(home)], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"knobflow: error: the knobflow home {home} is not a directory ({home} is a file); "
        "choose another with --home or KNOBFLOW_HOME")
    assert home.read_text() == "not a folder"  # nothing written over it
