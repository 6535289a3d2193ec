"""Hostile rule files, checked the way a user checks them (``knobflow rules check FILE``, in this
process): each attack is refused with exit code 2 and its exact one-line error, quickly.

rule-engine folds constant sub-expressions while it parses, before knobflow's whitelist sees the
tree: a regex with catastrophic backtracking on a literal ran for minutes, ``1 << 4000000000`` and
``threads == 1e999999999`` never ended, ``10 ** 10 ** 10`` or ``1e999999999`` passed as valid when
they folded away, and 500 operators overflowed the parser's recursion. The files are bounded too:
rules per file and bytes per file.

The time bounds below are generous on purpose: they guard against the exponential (or unbounded)
blow-up the attacks caused (120 s and more), not against a slow machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from rules.parse import MAX_RULE_FILE_BYTES, MAX_RULES
from targets.common.files import display_path

#: far below the minutes the attacks took, far above what a refusal takes on a busy machine
BLOW_UP = 10.0

HEAD = "target: synthetic\nrules:\n"
REGEX = "'" + "a" * 30 + "!' =~ '(a+)+$' and threads > 2"  # 46 s to parse before; 2x per 'a'

REGEX_MATCH = "is not allowed in rules; compare with ==, != or 'in [...]'"
OUT_OF_RANGE = "is out of range; a number must be 0 or between 1e-308 and 1e308 in size"
TOWER = ("a power of a power (a ** b ** c) is not allowed in rules; write one exponent, "
         "e.g. x ** 6")
ATTACKS: list[tuple[str, str, str | int, str]] = [
    # (id, the rule's condition, where the error points in it (the first occurrence of a text, or
    # an offset), the error after the rule's name)
    ("regex-backtracking", f'"{REGEX}"', "=~", f"a regex match ('=~') {REGEX_MATCH}"),
    ("regex-search", "\"'aaaa!' =~~ '(a+)+$' or threads > 2\"", "=~~",
     f"a regex match ('=~~') {REGEX_MATCH}"),
    ("regex-not-match", "\"mode !~ '(a+)+$'\"", "!~", f"a regex match ('!~') {REGEX_MATCH}"),
    ("power-tower-folded-away", "threads > 2 or 10 ** 10 ** 10 > 1", "** 10 >", TOWER),
    ("parenthesised-power-tower", "threads > 2 or (10 ** 10) ** 10 > 1", "** 10 >", TOWER),
    ("huge-exponent", "threads > 2 or 2 ** 99999999 > 1", "99999999",
     "an exponent must be a number of at most 64, written right after '**' (e.g. x ** 2)"),
    ("huge-number-folded-away", "threads > 2 or 1e999999999 > 1", "1e9",
     f"the number 1e999999999 {OUT_OF_RANGE}"),
    ("huge-number-compared-with-a-knob", "threads == 1e999999999", "1e9",  # never ended before
     f"the number 1e999999999 {OUT_OF_RANGE}"),
    ("huge-number-in-a-list", "threads in [1, 1e999999999]", "1e9",
     f"the number 1e999999999 {OUT_OF_RANGE}"),
    ("huge-integer-literal", "threads < " + "9" * 900, "9",
     "the number 99999999999999999999... has more than 30 digits; round it (a float keeps 17)"),
    ("huge-shift", "threads > 2 or (1 << 4000000000) > 1", "<<",  # never ended before
     "the bitwise operator '<<' is not allowed in rules; use arithmetic (+ - * / // % **)"),
    ("folded-product-beyond-a-float", "threads > 2 or 1e300 * 1e300 > 1", "threads",
     "a number in the expression is too large (e.g. a huge power)"),
    ("long-string-folded-away", "mode == 'gamma' or '" + "x" * 201 + "' == 'x'", "'x",
     "a string longer than 200 characters is not allowed in rules; shorten it"),
    # the parser builds its tree recursively: this was a RecursionError (exit 1), not an error
    ("operators-overflowing-the-stack", "x" + "+x" * 495 + " > 0", 1 + 2 * 150,  # the 151st
     "the expression has more than 150 operators; split it into several rules"),
    ("minus-signs-overflowing-the-stack", "-" * 900 + "x > 0", 150,
     "the expression has more than 150 operators; split it into several rules"),
]


def rule_file(tmp_path: Path, condition: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(f"{HEAD}  - id: evil\n    kind: forbid\n    when: {condition}\n",
                    encoding="utf-8")
    return path


def located(path: Path, where: str | int) -> str:
    """``file:line:col`` of the first ``where`` in the condition (line 5 of ``rule_file``), or of
    the offset ``where`` in it."""
    line = path.read_text(encoding="utf-8").splitlines()[4]
    column = line.index(where) + 1 if isinstance(where, str) else len("    when: ") + where + 1
    return f"{display_path(path)}:5:{column}"


def check(*args: str) -> tuple[int, str, float]:
    """``knobflow rules check ARGS`` in this process: exit code, stderr, seconds taken."""
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["rules", "check", *args])
    return result.exit_code, result.stderr, time.perf_counter() - start


@pytest.mark.parametrize(("condition", "where", "error"), [a[1:] for a in ATTACKS],
                         ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_quickly_with_its_error(tmp_path: Path, condition: str,
                                                  where: str | int, error: str) -> None:
    path = rule_file(tmp_path, condition)
    code, stderr, seconds = check(str(path))
    assert (code, stderr) == (2, f"knobflow: error: {located(path, where)}: rule 'evil': {error}\n")
    assert seconds < BLOW_UP  # the blow-up, not speed (see the module's docstring)


def test_the_regex_attack_points_at_its_operator(tmp_path: Path) -> None:
    """The located error of the first attack, written out: line 5, column 46 is the '=~'."""
    path = rule_file(tmp_path, f'"{REGEX}"')
    assert located(path, "=~") == f"{display_path(path)}:5:46"
    assert check(str(path))[:2] == (2, (
        f"knobflow: error: {display_path(path)}:5:46: rule 'evil': a regex match ('=~') is not "
        "allowed in rules; compare with ==, != or 'in [...]'\n"))


def test_the_same_file_without_the_attack_is_valid(tmp_path: Path) -> None:
    """The refusals above are about the attacks: small exponents, numbers and strings pass."""
    path = rule_file(tmp_path, "\"threads ** 2 > 2 ** 10 or buffer_kb ** (-0.5) < 1e-3 or "
                               "mode == 'gamma' or x < 1e308\"")
    result = CliRunner().invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "1 rules for target 'synthetic' are valid" in " ".join(result.stdout.split())


def many_rules(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "many.yaml"
    path.write_text(HEAD + "".join(f"  - {{id: r{i}, kind: forbid, when: threads > {i}}}\n"
                                   for i in range(count)), encoding="utf-8")
    return path


def test_a_file_with_too_many_rules_is_refused_before_they_are_compiled(tmp_path: Path) -> None:
    path = many_rules(tmp_path, MAX_RULES + 1)
    code, stderr, seconds = check(str(path))
    assert (code, stderr) == (2, (
        f"knobflow: error: {display_path(path)}:{MAX_RULES + 3}:5: rule 'r{MAX_RULES}': the file "
        f"holds {MAX_RULES + 1} rules, more than the {MAX_RULES} a rule file may hold; split it "
        "into several files, or raise the limit with the environment variable KNOBFLOW_MAX_RULES\n"
    ))
    assert seconds < BLOW_UP


def test_the_rule_limit_is_raised_by_its_variable(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = many_rules(tmp_path, 12)
    monkeypatch.setenv("KNOBFLOW_MAX_RULES", "11")
    code, stderr, _ = check(str(path))
    assert code == 2 and "holds 12 rules, more than the 11 a rule file may hold" in stderr
    monkeypatch.setenv("KNOBFLOW_MAX_RULES", "12")
    result = CliRunner().invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 0, result.stderr
    monkeypatch.setenv("KNOBFLOW_MAX_RULES", "lots")
    code, stderr, _ = check(str(path))
    assert (code, stderr) == (2, "knobflow: error: KNOBFLOW_MAX_RULES='lots': must be a whole "
                                 "number above 0 (default 1000)\n")


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A few MiB of rules: refused from the file's size alone (``--target``, so that the command
    does not read the file to find its target first)."""
    path = tmp_path / "big.yaml"
    rule = "  - {id: r, kind: forbid, when: threads > 2}\n"
    path.write_text(HEAD + "# " + "x" * (3 * MAX_RULE_FILE_BYTES) + "\n" + rule,
                    encoding="utf-8")
    size = path.stat().st_size
    code, stderr, seconds = check(str(path), "--target", "synthetic")
    assert (code, stderr) == (2, (
        f"knobflow: error: {display_path(path)}: the file is {size} bytes, more than the "
        f"{MAX_RULE_FILE_BYTES} bytes a rule file may hold; split it into several files, or "
        "raise the limit with the environment variable KNOBFLOW_MAX_RULE_FILE_BYTES\n"
    ))
    assert seconds < BLOW_UP


def test_the_byte_limit_is_raised_by_its_variable(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = many_rules(tmp_path, 3)
    size = path.stat().st_size
    monkeypatch.setenv("KNOBFLOW_MAX_RULE_FILE_BYTES", str(size - 1))
    code, stderr, _ = check(str(path))
    assert code == 2 and f"the file is {size} bytes, more than the {size - 1} bytes" in stderr
    monkeypatch.setenv("KNOBFLOW_MAX_RULE_FILE_BYTES", str(size))
    result = CliRunner().invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 0, result.stderr


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_is_read_no_further_than_the_limit() -> None:
    """stat says 0 bytes for /dev/zero: the read itself stops at the limit."""
    code, stderr, seconds = check("/dev/zero", "--target", "synthetic")
    assert (code, stderr) == (2, (
        f"knobflow: error: {display_path('/dev/zero')}: the file is more than the "
        f"{MAX_RULE_FILE_BYTES} bytes a rule file may hold; split it into several files, or "
        "raise the limit with the environment variable KNOBFLOW_MAX_RULE_FILE_BYTES\n"
    ))
    assert seconds < BLOW_UP
