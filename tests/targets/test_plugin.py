"""A user's target, registered by entry point from outside this repository, is found and passes
the target contract (the example plug-in lives in tests/data/plugin)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli

PLUGIN = REPO / "tests" / "data" / "plugin"


def _env(extra: Path) -> dict[str, str]:
    path = os.pathsep.join([str(extra), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "COLUMNS": "200"}


def test_plugin_target_is_listed_and_shows_its_knobs() -> None:
    listed = run_cli(["targets"], env=_env(PLUGIN))
    assert listed.returncode == 0, listed.stderr
    assert "zlib" in listed.stdout and "example plug-in" in listed.stdout
    knobs = run_cli(["knobs", "zlib"], env=_env(PLUGIN))
    assert knobs.returncode == 0, knobs.stderr
    assert "mem_level" in knobs.stdout and "huffman_only" in knobs.stdout


def test_plugin_target_passes_the_contract_suite() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/targets/test_contract.py",
            "-k",
            "zlib",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env={**os.environ, **_env(PLUGIN)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 passed, 1 skipped" in result.stdout  # zlib has no hang: that check does not apply


def test_check_target_command_runs_the_contract() -> None:
    result = run_cli(["check-target", "zlib"], env=_env(PLUGIN))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 4


def test_a_broken_plugin_is_reported_and_does_not_hide_the_others(tmp_path: Path) -> None:
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[knobflow.targets]\nbroken = no_such_module:Target\n")
    listed = run_cli(["targets"], env=_env(tmp_path))
    assert listed.returncode == 0
    assert "broken" in listed.stdout and "cannot load" in listed.stdout
    assert "sqlite" in listed.stdout
    tune = run_cli(["tune", "broken", "--home", str(tmp_path / "kf")], env=_env(tmp_path))
    assert tune.returncode == 2
    assert tune.stderr.strip() == (
        "knobflow: error: entry point 'no_such_module:Target' cannot be imported "
        "(ModuleNotFoundError: No module named 'no_such_module'); reinstall the package that "
        "provides it"
    )
