"""Rule files: every bad example under tests/data/bad/rules fails with its exact one-line error,
naming the file, the line and column, the rule (when the file got that far) and the fix.

Each bad example starts with ``# error: <message>``; ``{path}`` in the message stands for the
file as ``display_path`` shows it. A file is checked against the target its ``target:`` line
names (synthetic when it has none), with that target's metrics for triggers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules.language import RuleError
from rules.parse import MAX_RULE_FILE_BYTES, MAX_RULES, load_rule_file
from targets.base import Target
from targets.common.errors import KnobflowError
from targets.common.files import display_path
from targets.registry import load_target

DATA = Path(__file__).resolve().parent.parent / "data"
BAD_RULES = sorted((DATA / "bad" / "rules").glob("*.yaml"))


def expected_error(path: Path) -> str:
    """The message a bad example must give: its first line, ``# error: ...``, path filled in."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# error: "), f"{path.name}: first line must be '# error: <message>'"
    return first.removeprefix("# error: ").replace("{path}", display_path(path))


def target_of(path: Path) -> type[Target]:
    match = re.search(rb"^target:\s*(\w+)\s*$", path.read_bytes(), re.MULTILINE)
    return load_target(match.group(1).decode() if match else "synthetic")


def test_there_are_bad_rule_examples() -> None:
    assert len(BAD_RULES) >= 15


@pytest.mark.parametrize("path", BAD_RULES, ids=lambda p: p.stem)
def test_bad_rule_file_fails_with_its_error(path: Path) -> None:
    expected = expected_error(path)
    target = target_of(path)
    with pytest.raises(KnobflowError) as info:
        load_rule_file(path, target.knob_spec(), target)
    assert type(info.value) is RuleError
    message = str(info.value)
    assert message == expected
    assert "\n" not in message and "\r" not in message


@pytest.mark.parametrize("path", BAD_RULES, ids=lambda p: p.stem)
def test_bad_rule_error_names_file_line_column_and_rule(path: Path) -> None:
    """Every message starts ``file:line:col:``; the line exists; a rule named is in the file."""
    expected = expected_error(path)
    match = re.match(rf"{re.escape(display_path(path))}:(\d+):(\d+): ", expected)
    assert match, expected
    line, col = int(match.group(1)), int(match.group(2))
    lines = path.read_bytes().split(b"\n")
    assert 1 < line <= len(lines)  # (line 1 is the '# error:' comment)
    assert 1 <= col <= len(lines[line - 1]) + 1
    rule = re.search(r": rule '([^']+)': ", expected)
    if rule:
        assert f"id: {rule.group(1)}".encode() in path.read_bytes()


def test_the_same_file_fixed_loads(tmp_path: Path) -> None:
    """The checks refuse bad files, not every file: a good one with each kind of rule loads."""
    path = tmp_path / "good.yaml"
    path.write_text(
        "target: synthetic\n"
        "rules:\n"
        "  - id: threads-sane\n"
        "    kind: constraint\n"
        "    expr: |\n"
        "      not compress or\n"
        "      threads <= 48\n"
        "  - id: no-gamma-alone\n"
        "    kind: forbid\n"
        "    when: mode == 'gamma' and threads < 2\n"
        "    severity: warn\n"
        "  - id: throughput-dropped\n"
        "    kind: trigger\n"
        "    when: after.throughput < 0.5 * before.throughput\n"
        "    action: rollback\n",
        encoding="utf-8",
    )
    target = load_target("synthetic")
    rules = load_rule_file(path, target.knob_spec(), target)
    assert [(r.id, r.kind, r.severity) for r in rules] == [
        ("threads-sane", "constraint", "error"),
        ("no-gamma-alone", "forbid", "warn"),
        ("throughput-dropped", "trigger", "error"),
    ]


def test_missing_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    target = load_target("synthetic")
    with pytest.raises(RuleError) as info:
        load_rule_file(path, target.knob_spec(), target)
    assert str(info.value) == f"{display_path(path)}: file not found"


def test_rule_file_for_another_target() -> None:
    path = DATA / "bad" / "rules" / "categorical_value_unknown.yaml"  # a sqlite file
    target = load_target("synthetic")
    with pytest.raises(RuleError) as info:
        load_rule_file(path, target.knob_spec(), target)
    assert str(info.value) == (
        f"{display_path(path)}: the file is for target 'sqlite', not 'synthetic'"
    )


def _rules_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "many.yaml"
    path.write_text("target: synthetic\nrules:\n" + "".join(
        f"  - id: r{i}\n    kind: forbid\n    when: threads > {i}\n" for i in range(count)),
        encoding="utf-8")
    return path


def test_the_default_limits_of_a_rule_file() -> None:
    assert (MAX_RULES, MAX_RULE_FILE_BYTES) == (1000, 1 << 20)


def test_rules_past_the_limit_are_refused_at_the_first_one_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _rules_file(tmp_path, 4)
    target = load_target("synthetic")
    monkeypatch.setenv("KNOBFLOW_MAX_RULES", "4")
    assert len(load_rule_file(path, target.knob_spec(), target)) == 4  # at the limit: fine
    monkeypatch.setenv("KNOBFLOW_MAX_RULES", "3")
    with pytest.raises(RuleError) as info:
        load_rule_file(path, target.knob_spec(), target)
    assert str(info.value) == (
        f"{display_path(path)}:12:5: rule 'r3': the file holds 4 rules, more than the 3 a rule "
        "file may hold; split it into several files, or raise the limit with the environment "
        "variable KNOBFLOW_MAX_RULES"
    )
    assert path.read_text().splitlines()[11] == "  - id: r3"


def test_a_file_over_the_byte_limit_is_refused_from_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _rules_file(tmp_path, 2)
    size = path.stat().st_size
    target = load_target("synthetic")
    monkeypatch.setenv("KNOBFLOW_MAX_RULE_FILE_BYTES", str(size))
    assert len(load_rule_file(path, target.knob_spec(), target)) == 2  # at the limit: fine
    monkeypatch.setenv("KNOBFLOW_MAX_RULE_FILE_BYTES", str(size - 1))
    with pytest.raises(RuleError) as info:
        load_rule_file(path, target.knob_spec(), target)
    assert str(info.value) == (
        f"{display_path(path)}: the file is {size} bytes, more than the {size - 1} bytes a rule "
        "file may hold; split it into several files, or raise the limit with the environment "
        "variable KNOBFLOW_MAX_RULE_FILE_BYTES"
    )


@pytest.mark.parametrize("value", ["0", "-5", "1e6", "many"])
def test_a_bad_limit_in_the_environment_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KNOBFLOW_MAX_RULE_FILE_BYTES", value)
    target = load_target("synthetic")
    with pytest.raises(RuleError) as info:
        load_rule_file(_rules_file(tmp_path, 1), target.knob_spec(), target)
    assert str(info.value) == (
        f"KNOBFLOW_MAX_RULE_FILE_BYTES={value!r}: must be a whole number above 0 "
        f"(default {MAX_RULE_FILE_BYTES})"
    )
