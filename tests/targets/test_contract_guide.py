"""The guide for authors of targets (``docs/targets.md``) says every requirement the contract
(``flows/contract.py``) and the measurement gate (``tasks/clean.py``, the default expectation
suite) hold a target to, and ``check-target`` names the requirement a target broke."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from flows.contract import REQUIREMENTS
from targets.base import Measurement
from targets.registry import load_target
from tasks.clean import measurement_row
from tasks.gate import DEFAULT_SUITE

GUIDE = (REPO / "docs" / "targets.md").read_text(encoding="utf-8")
PLUGIN = REPO / "tests" / "data" / "plugin"


def test_the_guide_explains_every_requirement_of_the_contract() -> None:
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (.+) \|$", GUIDE, flags=re.M))
    assert set(REQUIREMENTS) <= set(rows), set(REQUIREMENTS) - set(rows)


def test_every_violation_names_a_requirement() -> None:
    """Every ``ContractViolation(...)`` in the contract starts with the id of a requirement
    (``_require_ok`` passes on its caller's), and every requirement is checked somewhere."""
    tree = ast.parse((REPO / "flows" / "contract.py").read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) in ("ContractViolation", "_require_ok")]
    used = set()
    for call in calls:
        requirement = call.args[0] if call.func.id == "ContractViolation" else call.args[2]
        if isinstance(requirement, ast.Name) and requirement.id == "requirement":
            continue  # inside _require_ok
        assert isinstance(requirement, ast.Constant), ast.unparse(call)
        assert requirement.value in REQUIREMENTS, ast.unparse(call)
        used.add(requirement.value)
    assert used == set(REQUIREMENTS)


def test_the_guide_says_every_expectation_of_the_default_gate() -> None:
    suite = json.loads(DEFAULT_SUITE.read_text(encoding="utf-8"))
    for expectation in suite["expectations"]:
        column, why = expectation["kwargs"]["column"], expectation["meta"]["why"]
        assert f"`{column}: {why}" in GUIDE, (column, why)


def test_the_guide_says_every_structural_problem_of_a_measurement() -> None:
    """Each problem cleaning finds before the suite runs, made to happen, is in the guide (the
    value it quotes left out)."""
    target_cls = load_target("synthetic")
    objective = target_cls.default_objective
    requested = target_cls.knob_spec().defaults()
    bad = [
        Measurement(metrics={objective: "fast"}, effective_config=requested),
        Measurement(metrics={objective: math.nan}, effective_config=requested),
        Measurement(metrics={}, effective_config=requested),
        Measurement(metrics={objective: 1.0}, effective_config={}),
        Measurement(metrics={objective: 1.0}, effective_config=requested, samples=[3]),
        Measurement(metrics={objective: 1.0}, effective_config=requested, samples=[{"ops": 1}]),
        Measurement(metrics={objective: 1.0}, effective_config=requested, counters={"n": -1}),
    ]
    said = set()
    for measurement in bad:
        _, problems, _ = measurement_row(measurement, target_cls, requested)
        assert problems, measurement
        for problem in problems:
            name, _, text = problem.partition(": ")
            text = text.split(" (got ")[0]
            shown = re.sub(r"^(metric|counter)\.\w+", r"\1.NAME", name) + ": " + text
            assert shown in GUIDE, shown
            said.add(shown)
    assert len(said) >= 7


def test_check_target_names_the_requirement_a_plugin_broke(tmp_path: Path, home: Path) -> None:
    """A user's target whose workload has no numeric parameter (so no features) fails
    check-target with the requirement's id; its trials run under --home."""
    package = tmp_path / "nofeatures_target"
    package.mkdir()
    (package / "specs").mkdir()
    spec = (PLUGIN / "knobflow_zlib_target" / "specs" / "zlib.yaml").read_text(encoding="utf-8")
    (package / "specs" / "nofeatures.yaml").write_text(
        spec.replace("target: zlib", "target: nofeatures"), encoding="utf-8")
    (package / "__init__.py").write_text(
        "from knobflow_zlib_target import ZlibTarget\n\n\n"
        "class NoFeatures(ZlibTarget):\n"
        "    name = 'nofeatures'\n\n"
        "    @classmethod\n"
        "    def workload_features(cls, workload):\n"
        "        return {}\n", encoding="utf-8")
    info = tmp_path / "nofeatures_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nofeatures-target\n"
                                   "Version: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[knobflow.targets]\nnofeatures = nofeatures_target:NoFeatures\n", encoding="utf-8")
    path = os.pathsep.join([str(tmp_path), str(PLUGIN), os.environ.get("PYTHONPATH", "")])
    result = run_cli(["check-target", "nofeatures", "--home", str(home)],
                     env={"PYTHONPATH": path, "COLUMNS": "250"}, timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if "default config runs" in line)
    assert ("FAILED: workload_features must be a non-empty dict of floats: {} "
            "[workload-features, see docs/targets.md]") in row
    assert "| `workload-features` | `workload_features()` of the example workload is a " \
           "non-empty dict of floats. |" in GUIDE
    assert sum("passed" in line for line in result.stdout.splitlines()) == 3  # the others hold
    assert (home / "contract").is_dir() and not any((home / "contract").iterdir())


@pytest.mark.parametrize("words", [["duration_s", "above 0"], ["finite number >= 0"]])
def test_the_guide_says_what_the_user_missed(words: list[str]) -> None:
    """What a new user could not find: a run must last, samples are non-negative."""
    table = GUIDE[GUIDE.index("### What `run()` returns"):GUIDE.index("## 3.")]
    assert all(word in table for word in words)
