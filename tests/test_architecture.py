"""The layers of DESIGN.md hold: imports run downwards only (import-linter's contracts in
pyproject.toml), every module is in a layer, and a planted upward import breaks the check."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
CONFIG = PYPROJECT["tool"]["importlinter"]
PACKAGES = CONFIG["root_packages"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` with ``root``'s pyproject.toml."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--config", "pyproject.toml", "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False,
    )


def layer_modules() -> list[str]:
    contract = next(c for c in CONFIG["contracts"] if c["type"] == "layers")
    return [m.strip() for layer in contract["layers"] for m in layer.replace("|", ":").split(":")]


def modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_the_layers_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_is_in_a_layer_or_behind_a_front_contract() -> None:
    """A new module is checked as soon as it exists: it falls in a layer, or it is a package's
    ``__init__`` that a forbidden contract covers."""
    layers = layer_modules()
    fronts = {m for c in CONFIG["contracts"] if c["type"] == "forbidden"
              for m in c["source_modules"]}
    loose = [m for m in modules()
             if not any(m == layer or m.startswith(layer + ".") for layer in layers)
             and m not in fronts]
    assert not loose, f"modules in no layer (add them to pyproject.toml's layers): {loose}"


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("targets/common/errors.py", "targets.spec"),  # common below targets
        ("tuners/space.py", "rules.ruleset"),  # tuners below rules
        ("tuners/trials.py", "model_registry.fingerprint"),  # trials below model_registry
        ("model_registry/transfer.py", "tasks.train"),  # model_registry below tasks
        ("tasks/explore.py", "flows.job"),  # tasks below flows
        ("targets/__init__.py", "tuners.space"),  # a package front
    ],
)
def test_a_planted_upward_import_breaks_the_check(tmp_path: Path, module: str,
                                                  planted: str) -> None:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a", encoding="utf-8") as fh:
        fh.write(f"\nimport {planted}  # planted\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    importer = module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert f"{importer} -> {planted}" in result.stdout, result.stdout
