"""The layers of DESIGN.md hold: imports run downwards only (import-linter's contracts in
pyproject.toml), every module is in a layer, and a planted upward import breaks the check."""

from __future__ import annotations

import ast
import importlib
import re
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


#: The folders whose modules stay small enough to read (the issue that set the layers).
SMALL = ("flows", "tasks", "rules", "model_registry", "tuners")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
#: The targets hold each system's own details: STYLE.md's upper bound for a module.
MAX_TARGET_MODULE_LINES = 450
#: Functions allowed past MAX_FUNCTION_LINES, and why.
LONG_FUNCTIONS = {
    # the measured loop: a call per operation would add to the latency it measures
    ("targets/sqlite.py", "_execute"),
}


def _too_long(folder: str, module_lines: int) -> list[str]:
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(REPO)
        if text.count("\n") > module_lines:
            found.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (str(name), node.name) not in LONG_FUNCTIONS:
                    found.append(f"{name}: {node.name}() {lines} lines")
    return found


def test_modules_and_functions_stay_small() -> None:
    too_long = [line for folder in SMALL for line in _too_long(folder, MAX_MODULE_LINES)]
    too_long += _too_long("targets", MAX_TARGET_MODULE_LINES)
    assert not too_long, too_long


def test_the_readme_layout_table_names_every_module_of_the_small_folders() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Layout"):readme.index("## Your own target")]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)/` \|[^|]*\|(.*)\|$",
                                                       table, flags=re.M)}
    assert set(PACKAGES) <= set(rows), "a package has no row in the README's layout table"
    for folder in SMALL:
        named = set(re.findall(r"`([\w*]+)\.py`", rows[folder]))
        modules = {p.stem for p in (REPO / folder).glob("*.py") if p.stem != "__init__"}
        assert _expanded(named, modules) == modules, (folder, named)


def _expanded(named: set[str], modules: set[str]) -> set[str]:
    """The modules a row names; ``cli*.py`` stands for every ``cli...`` module."""
    globs = {n for n in named if n.endswith("*")}
    return (named - globs) | {m for m in modules for g in globs if m.startswith(g[:-1])}


def test_no_module_imports_another_packages_private_names() -> None:
    """A package's private names (``_x``) stay inside it; what it offers is in its ``__all__``."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                    continue
                top = node.module.split(".")[0]
                private = [a.name for a in node.names
                           if a.name.startswith("_") and not a.name.startswith("__")]
                if top in PACKAGES and top != package and private:
                    offenders.append(f"{path.relative_to(REPO)}: {node.module} {private}")
    assert not offenders, offenders


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_names_what_it_offers(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package}/__init__.py has no __all__"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


#: What costs seconds to import; the command loads it only for a command that uses it.
STACK = ("prefect", "mlflow", "optuna", "pandas", "great_expectations", "lightgbm", "sklearn")


@pytest.mark.parametrize("args", [
    [], ["--version"], ["tune", "--help"], ["knobs", "sqlite"], ["targets"],
    ["tune", "sqlite", "--budget", "-3"], ["tune", "nosuch"], ["tune", "sqlite", "--bogus"],
    ["tune", "sqlite", "--set-workload", "read_ratio"],
    ["tune", "sqlite", "--set-workload", "read_ratio=2"],
    ["tune", "sqlite", "--objective", "speed"],
], ids=" ".join)
def test_the_command_loads_the_stack_only_when_a_command_needs_it(args: list[str]) -> None:
    """``import flows.cli``, the help, the read-only commands and a bad argument of tune (checked
    before the stack loads: it answers in a fraction of a second) import none of ``STACK``."""
    code = ("import sys\nfrom flows.cli import main\ncode = main(sys.argv[1:])\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({STACK!r})), code)")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                 "COLUMNS": "100"})
    loaded, _, code = result.stdout.strip().splitlines()[-1].rpartition(" ")
    assert loaded == "[]", (args, loaded, result.stderr)
    assert code == ("2" if args[:1] == ["tune"] and "--help" not in args else "0"), result.stderr
