"""The rule language: hostile texts are refused with a RuleError before anything runs, any text at
all ends in a verdict or a RuleError (property-based), and valid rules evaluated over a whole
DataFrame agree with a check of each row.

Expressions are checked against the synthetic target (knobs x, y, threads, buffer_kb, mode,
compress) with machine facts pinned, so verdicts do not depend on the machine running the suite.
"""

from __future__ import annotations

import builtins
import decimal
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.language import (
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_NODES,
    MAX_STRING,
    MAX_TEXT,
    Expression,
    RuleError,
    compile_expression,
)
from rules.lexing import MAX_OPERATORS
from rules.parse import parse_rules
from rules.rule import Rule, Verdict, config_symbols, trigger_symbols
from rules.ruleset import RuleSet
from targets.common.errors import KnobflowError
from targets.synthetic import SyntheticTarget

SPEC = SyntheticTarget.knob_spec()
WORKLOAD = dict(SyntheticTarget.workload_defaults)
SYMBOLS, CHOICES = config_symbols(SPEC, WORKLOAD)
TRIGGER_SYMBOLS = trigger_symbols(SyntheticTarget)
GB = 2.0**30
FACTS = {
    "machine.memory": 8 * GB,
    "machine.memory_mb": 8 * 1024.0,
    "machine.cores": 4.0,
    "machine.disk": 100 * GB,
    "machine.disk_mb": 100 * 1024.0,
}
# a few configs, corners of the spec included
CONFIGS: list[dict[str, Any]] = [
    SPEC.defaults(),
    {"x": 0.0, "y": 0.001, "threads": 1, "buffer_kb": 16, "mode": "gamma", "compress": True},
    {"x": 1.0, "y": 1000.0, "threads": 64, "buffer_kb": 65536, "mode": "beta", "compress": False},
    {"x": 0.5, "y": 250.0, "threads": 49, "buffer_kb": 4096, "mode": "beta", "compress": True},
    {"x": 0.25, "y": 0.5, "threads": 2, "buffer_kb": 1024, "mode": "gamma", "compress": False},
]
FRAME = pd.DataFrame(CONFIGS)


def locate(offset: int) -> str:
    return f"<rule>:1:{offset + 1}: rule 'r'"


def compile_rule(text: Any, symbols: dict[str, str] = SYMBOLS) -> Expression:
    return compile_expression(text, symbols, locate, CHOICES)


def rule_set(expression: Expression, kind: str = "forbid") -> RuleSet:
    rule = Rule(id="r", kind=kind, expression=expression)
    return RuleSet(spec=SPEC, rules=[rule], facts=dict(FACTS), workload=dict(WORKLOAD))


# -- hostile texts: refused when the rule is loaded --------------------------------------------
HOSTILE: list[tuple[str, str]] = [
    # (text, what the refusal says)
    ("threads.__class__ == 'int'", "attribute access '.__class__' is not allowed in rules"),
    ("x.real > 0", "attribute access '.real' is not allowed in rules"),
    ("mode.length > 3", "attribute access '.length' is not allowed in rules"),
    ("mode.as_upper == 'ALPHA'", "attribute access '.as_upper' is not allowed in rules"),
    ("machine.__class__ == 'x'", "unknown name 'machine.__class__'"),
    ("__import__ == 'os'", "unknown name '__import__'"),
    ("__import__('os').system('id') == 0", "unknown name '__import__'"),
    ("__builtins__ != null", "unknown name '__builtins__'"),
    ("import os", "syntax error"),
    ("exec('import os') == null", "unknown name 'exec'"),
    ("open('/etc/passwd') == ''", "unknown name 'open'"),
    ("system('rm -rf /') == 0", "unknown name 'system'"),
    ("$open('/etc/passwd') == ''", "calling 'open' (allowed: $abs, $min, $max) is not allowed"),
    ("$split(mode) == ['a']", "calling 'split'"),
    ("$now > $now", "the built-in symbol '$now' is not allowed"),
    ("mode =~ '(a+)+$'", "1:6: rule 'r': a regex match ('=~') is not allowed in rules"),
    ("mode[0] == 'a'", "a getitem expression is not allowed"),
    ("[t for t in [1, 2]] == [1]", "RuleError"),
    ("2 ** 99999999 > x", f"1:6: rule 'r': an exponent must be a number of at most {MAX_EXPONENT}"),
    ("x ** 1e9 > 0", f"an exponent must be a number of at most {MAX_EXPONENT}"),
    ("x ** threads > 1", f"an exponent must be a number of at most {MAX_EXPONENT}"),
    ("x ** -1e9 > 1", f"an exponent must be a number of at most {MAX_EXPONENT}"),
    ("x ** (1 / 2) > 1", f"an exponent must be a number of at most {MAX_EXPONENT}"),
    # rule-engine folds constants while it parses: these are refused by their tokens, before
    ("'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' =~ '(a+)+$'", "1:35: rule 'r': a regex match ('=~')"),
    ("'aaaa!' =~~ '(a+)+$' or x > 0", "1:9: rule 'r': a regex match ('=~~')"),
    ("'aaaa!' !~ '(a+)+$' and x > 0", "1:9: rule 'r': a regex match ('!~')"),
    ("'aaaa!' !~~ '(a+)+$' and x > 0", "1:9: rule 'r': a regex match ('!~~')"),
    ("x > 0 or (1 << 4000000000) > 1", "1:13: rule 'r': the bitwise operator '<<' is not allowed"),
    ("threads & 1 == 1", "1:9: rule 'r': the bitwise operator '&' is not allowed"),
    ("x > 0 or 10 ** 10 ** 10 > 1", "1:19: rule 'r': a power of a power (a ** b ** c)"),
    ("x > 0 or (10 ** 10) ** 10 > 1", "1:21: rule 'r': a power of a power"),
    ("true ? x > 0 : 10 ** 10 ** 10 > 1", "1:25: rule 'r': a power of a power"),
    ("x > 0 or 1e999999999 > 1", "1:10: rule 'r': the number 1e999999999 is out of range"),
    ("x in [1e999999999]", "1:7: rule 'r': the number 1e999999999 is out of range"),
    ("threads == 1e-999", "1:12: rule 'r': the number 1e-999 is out of range"),
    ("threads < " + "9" * 900, "1:11: rule 'r': the number 99999999999999999999... has more"),
    ("x > 0 or 1e300 * 1e300 > 1", "a number in the expression is too large"),
    ("x > 0 or '" + "a" * (MAX_STRING + 1) + "' == 'a'",
     f"1:10: rule 'r': a string longer than {MAX_STRING}"),
]


@pytest.mark.parametrize(("text", "says"), HOSTILE, ids=[t[:60] for t, _ in HOSTILE])
def test_hostile_text_is_refused(text: str, says: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_rule(text)
    message = str(info.value)
    assert message.startswith("<rule>:1:"), message
    assert says == "RuleError" or says in message, message
    assert "\n" not in message


def test_rule_error_is_a_knobflow_error() -> None:
    assert issubclass(RuleError, KnobflowError)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 500 + "x > 0" + ")" * 500,  # over the length limit as well
        "(" * (MAX_DEPTH + 1) + "x > 0" + ")" * (MAX_DEPTH + 1),
        "[" * 100 + "1" + "]" * 100 + " == x",
    ],
    ids=["500-parens", "limit-plus-one-parens", "100-brackets"],
)
def test_deep_nesting_is_refused(text: str) -> None:
    with pytest.raises(RuleError, match=r"nests .*deep|longer than"):
        compile_rule(text)


def test_nesting_without_parentheses_is_refused() -> None:
    """``not not not ...`` nests without a single parenthesis: the tree walk counts the depth."""
    text = "not " * 100 + "compress"
    assert len(text) <= MAX_TEXT
    with pytest.raises(RuleError, match=f"nests deeper than {MAX_DEPTH} levels"):
        compile_rule(text)


def test_nesting_just_within_the_limit_compiles() -> None:
    depth = MAX_DEPTH - 4
    expression = compile_rule("(" * depth + "x > 0.5" + ")" * depth)
    assert rule_set(expression).check_frame(FRAME)["r"].tolist() == [c["x"] > 0.5 for c in CONFIGS]


@pytest.mark.parametrize(
    "text",
    ["x" + "+x" * 499, "1" + "+1" * 499, "-" * 990 + "x > 0", "x > 0" + " or x > 0" * 95],
    ids=["499-additions", "499-folded-additions", "990-minus-signs", "96-comparisons"],
)
def test_too_many_operators_are_refused_before_the_parser_recurses(text: str) -> None:
    """rule-engine builds its tree recursively: ~500 operators overflowed Python's stack (a
    RecursionError, not a located error) before the walk could count them."""
    assert len(text) <= MAX_TEXT
    with pytest.raises(RuleError) as info:
        compile_rule(text)
    assert str(info.value).endswith(
        f"the expression has more than {MAX_OPERATORS} operators; split it into several rules")


def test_brackets_in_a_string_are_not_nesting() -> None:
    """Nesting is counted on the tokens: '((((' in a quoted string is text, not depth."""
    with pytest.raises(RuleError) as info:
        compile_rule("mode == '" + "(" * (MAX_DEPTH + 1) + "'")
    assert "is never" in str(info.value)  # the value is wrong, the nesting is fine
    with pytest.raises(RuleError) as info:
        compile_rule("x > 0 and " + "(" * (MAX_DEPTH + 1) + "x > 0" + ")" * (MAX_DEPTH + 1))
    assert str(info.value) == (
        f"<rule>:1:{11 + MAX_DEPTH}: rule 'r': the expression nests {MAX_DEPTH + 1} levels deep; "
        f"at most {MAX_DEPTH} are allowed"
    )


# -- constants are checked before rule-engine folds them --------------------------------------
@pytest.mark.parametrize(
    ("text", "python"),
    [
        ("x ** 2 < 0.25", lambda c: c["x"] ** 2 < 0.25),
        ("x ** (2) < 0.25", lambda c: c["x"] ** 2 < 0.25),
        ("y ** -1 > 2", lambda c: c["y"] ** -1 > 2),
        ("buffer_kb ** (-0.5) < 0.01", lambda c: c["buffer_kb"] ** -0.5 < 0.01),
        (f"threads ** {MAX_EXPONENT} > 1e100", lambda c: c["threads"] ** MAX_EXPONENT > 1e100),
        ("buffer_kb * 2 ** 10 >= 4 * 2 ** 20", lambda c: c["buffer_kb"] * 1024 >= 4 * 2**20),
        ("y < 1e308 and y > -1e308 and x != 1e-308", lambda c: True),
        ("threads < 0x10 and threads > 0b1", lambda c: 1 < c["threads"] < 16),
    ],
)
def test_small_exponents_and_numbers_still_compile(
    text: str, python: Callable[[dict[str, Any]], bool]
) -> None:
    out = rule_set(compile_rule(text), "constraint").check_frame(FRAME)
    assert out["r"].tolist() == [not python(c) for c in CONFIGS]


def test_folding_is_bounded_whatever_the_callers_decimal_context() -> None:
    """rule-engine folds in the thread's decimal context: a caller's huge one changes nothing."""
    huge = decimal.Context(prec=100_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    with decimal.localcontext(huge):
        start = time.perf_counter()
        with pytest.raises(RuleError, match="a number in the expression is too large"):
            compile_rule("x > 0 or 1e300 * 1e300 > 1")
        with pytest.raises(RuleError, match="a number in the expression is too large"):
            compile_rule(f"x > 0 or ((1e300 ** {MAX_EXPONENT}) > 1)")
        assert time.perf_counter() - start < 1.0  # the blow-up, not speed
        assert compile_rule("x > 0 or 1 / 3 > 0.3").names == {"x"}


def _balanced(leaves: int) -> str:
    """``((x+x)+(x+x))...``: many parts, shallow."""
    return "x" if leaves == 1 else f"({_balanced(leaves // 2)}+{_balanced(leaves - leaves // 2)})"


def test_too_many_parts_are_refused() -> None:
    text = _balanced(128) + " > 1"  # 255 parts, 9 levels
    assert len(text) <= MAX_TEXT
    with pytest.raises(RuleError, match=f"more than {MAX_NODES} parts"):
        compile_rule(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mode == '" + "a" * 1_000_000 + "'", f"longer than {MAX_TEXT} characters"),
        ("x" + " + x" * 25_000 + " > 0", f"longer than {MAX_TEXT} characters"),
        ("mode == '" + "a" * (MAX_STRING + 1) + "'", f"a string longer than {MAX_STRING}"),
    ],
    ids=["1MB-string-literal", "100k-character-expression", "string-over-limit"],
)
def test_long_texts_are_refused_quickly(text: str, says: str) -> None:
    start = time.perf_counter()
    with pytest.raises(RuleError) as info:
        compile_rule(text)
    assert time.perf_counter() - start < 1.0
    assert says in str(info.value)
    assert len(str(info.value)) < 500  # the message does not repeat a megabyte of rule text


def test_huge_powers_are_refused_or_folded_quickly() -> None:
    """Powers of constants are folded when the rule is compiled, in bounded precision: a huge one
    is refused or becomes a big number, in milliseconds, never an endless computation."""
    for text in (
        "2 ** 99999999 > x",
        "9 ** 9 ** 9 ** 9 > x",
        "10 ** 64 ** 64 > x",
        "1e999999 % 7 > x",
    ):
        start = time.perf_counter()
        try:
            expression = compile_rule(text)
        except RuleError:
            pass
        else:
            rule_set(expression).check_frame(FRAME)
        assert time.perf_counter() - start < 1.0, text


@pytest.fixture
def spied() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Every call of eval, exec, compile, open, os.system, os.popen and subprocess.Popen on the
    test's thread, where rules are compiled (threads an earlier test left in this worker open
    files of their own at any time: CI once saw two such opens in the spy's own test)."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    here = threading.get_ident()

    def spy(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == here:
                calls.append((name, args))
            return function(*args, **kwargs)

        return call

    patched = [
        (builtins, "eval"),
        (builtins, "exec"),
        (builtins, "compile"),
        (builtins, "open"),
        (os, "system"),
        (os, "popen"),
        (subprocess, "Popen"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patched]
    compile_rule("x > 0.5")  # imports happen now, not while spied on
    for owner, name, function in saved:
        setattr(owner, name, spy(name, function))
    try:
        yield calls
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


def suspicious(calls: list[tuple[str, tuple[Any, ...]]], tmp_path: Path) -> list[Any]:
    """Calls that could run rule text: any but ``open`` (psutil reads /proc for the machine
    facts), and ``open`` of anything in the test's directory."""
    return [(n, a) for n, a in calls if n != "open" or str(tmp_path) in repr(a)]


def test_hostile_text_is_never_executed(tmp_path: Path, spied: list[Any]) -> None:
    """Rule texts that would create a file if anything ran them: no file, and nothing resembling
    eval, exec, open or a shell is called while they are compiled."""
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}') == 0",
        f"system('touch {marker}') == 0",
        f"$system('touch {marker}') == 0",
        f"open('{marker}', 'w') == null",
        f"$open('{marker}', 'w') == null",
        f"exec(\"open('{marker}', 'w')\") == null",
        f"eval(\"__import__('os').system('touch {marker}')\") == 0",
        f"mode.__class__.__init__.__globals__['os'].system('touch {marker}') == 0",
    ]
    for text in payloads:
        with pytest.raises(RuleError):
            compile_rule(text)
    assert not marker.exists()
    assert suspicious(spied, tmp_path) == []


def test_hostile_rule_file_is_never_executed(tmp_path: Path, spied: list[Any]) -> None:
    marker = tmp_path / "pwned"
    text = (
        "target: synthetic\n"
        "rules:\n"
        "  - id: sneaky\n"
        "    kind: forbid\n"
        f"    when: __import__('os').system('touch {marker}') == 0\n"
    )
    with pytest.raises(RuleError) as info:
        parse_rules(text, "sneaky.yaml", SPEC, SyntheticTarget)
    assert str(info.value).startswith("sneaky.yaml:5:11: rule 'sneaky': unknown name '__import__'")
    assert not marker.exists()
    assert suspicious(spied, tmp_path) == []


def test_spy_sees_a_shell_call(tmp_path: Path, spied: list[Any]) -> None:
    """The spy above is not blind: a real shell call is seen (and its file appears)."""
    marker = tmp_path / "seen"
    os.system(f"touch {marker}")
    assert marker.exists()
    assert [name for name, _ in spied] == ["system"]
    assert suspicious(spied, tmp_path) == spied
    with open(marker) as file:  # the spy sees this open too
        assert file.read() == ""
    assert [name for name, _ in suspicious(spied, tmp_path)] == ["system", "open"]


def test_biggest_rule_evaluates_100k_configs_quickly() -> None:
    """Evaluation is vectorised and the size of a rule is bounded, so even the largest allowed
    rule over 100,000 candidates is quick (no per-row Python)."""
    parts = ["$abs(x - 0.5) ** 2 * y < buffer_kb / threads ** 3"] * 9
    text = " or ".join(parts)
    assert len(text) <= MAX_TEXT
    expression = compile_rule(text)
    rng = np.random.default_rng(1)
    n = 100_000
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 1, n),
            "y": rng.uniform(0.001, 1000, n),
            "threads": rng.integers(1, 65, n),
            "buffer_kb": rng.integers(16, 65537, n),
            "mode": rng.choice(["alpha", "beta", "gamma"], n),
            "compress": rng.integers(0, 2, n).astype(bool),
        }
    )
    start = time.perf_counter()
    out = rule_set(expression).check_frame(frame)
    assert time.perf_counter() - start < 2.0
    expected = np.abs(frame.x - 0.5) ** 2 * frame.y < frame.buffer_kb / frame.threads**3
    assert (out["r"].to_numpy() == expected.to_numpy()).all()


# -- any text at all: a verdict or a RuleError -------------------------------------------------
TOKENS = [
    *(knob.name for knob in SPEC),
    "machine.memory_mb",
    "machine.cores",
    "machine.nope",
    "machine",
    "workload.shift",
    "workload.intervals",
    "before.throughput",
    "after.latency_ms",
    "nope",
    "__import__",
    "__class__",
    ".__class__",
    ".real",
    ".length",
    "os",
    "open",
    "$abs",
    "$min",
    "$max",
    "$now",
    "$split",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "?",
    ".",
    "&",
    "|",
    "^",
    "<<",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "**",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=~",
    "!~",
    "and",
    "or",
    "not",
    "in",
    "if",
    "else",
    "for",
    "import",
    "lambda",
    "true",
    "false",
    "null",
    "0",
    "1",
    "2",
    "-1",
    "0.5",
    "64",
    "65",
    "1e9",
    "1e400",
    "99999999",
    "0x10",
    "0b101",
    "'alpha'",
    "'gamma'",
    "'delta'",
    "''",
    '"x"',
    "d'2024-01-01'",
    "t'PT1H'",
    "b'x'",
    "#",
    "\\",
    "\n",
]
NUMERIC = ["x", "y", "threads", "buffer_kb", "machine.cores", "workload.shift"]


def _expressions() -> st.SearchStrategy[str]:
    """Mostly well-formed expressions, so that many compile and get evaluated."""
    number = st.one_of(
        st.sampled_from(NUMERIC),
        st.integers(-100, 100).map(str),
        st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.3g}"),
    )

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            st.tuples(inner, st.integers(-3, 70)).map(lambda t: f"({t[0]} ** {t[1]})"),
            inner.map(lambda a: f"$abs({a})"),
            st.lists(inner, min_size=1, max_size=3).map(lambda a: f"$min([{', '.join(a)}])"),
            st.lists(inner, min_size=1, max_size=3).map(lambda a: f"$max([{', '.join(a)}])"),
            inner.map(lambda a: f"-{a}"),
        )

    arithmetic = st.recursive(number, extend, max_leaves=8)
    atom = st.one_of(
        st.tuples(arithmetic, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), arithmetic).map(
            " ".join
        ),
        st.sampled_from(
            [
                "compress",
                "mode == 'gamma'",
                "mode != 'beta'",
                "mode in ['alpha', 'beta']",
                "threads in [1, 2, 4]",
                "compress == true",
                "not compress",
            ]
        ),
    )

    def combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda a: f"not ({a})"),
            st.tuples(atom, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        )

    return st.recursive(atom, combine, max_leaves=6)


TEXTS = st.one_of(
    st.text(max_size=60),
    st.text(
        alphabet=st.sampled_from("xyz_()[]$.,'\"=<>!+-*/%?: 0123456789abcdeint\\\n"), max_size=60
    ),
    st.tuples(
        st.lists(st.sampled_from(TOKENS), min_size=1, max_size=20), st.sampled_from([" ", ""])
    ).map(lambda t: t[1].join(t[0])),
    _expressions(),
)


def assert_verdict_or_rule_error(text: str) -> None:
    """The only outcomes of a rule text: RuleError at compile time, or a boolean verdict per row
    that agrees between the vectorised check and the check of each config."""
    try:
        expression = compile_rule(text)
    except RuleError as exc:
        message = str(exc)
        assert message.startswith("<rule>:1:"), message
        return
    assert isinstance(expression, Expression)
    rules = rule_set(expression)
    out = rules.check_frame(FRAME)
    assert list(out.columns) == ["r", "blocked"]
    assert out["r"].dtype == bool
    assert len(out) == len(FRAME)
    for config, failed in zip(CONFIGS, out["r"], strict=True):
        verdict = rules.check(config)
        assert isinstance(verdict, Verdict)
        assert verdict.blocked == failed, (text, config)


@settings(
    max_examples=300,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(TEXTS)
def test_any_text_gives_a_verdict_or_a_rule_error(text: str) -> None:
    assert_verdict_or_rule_error(text)


@settings(max_examples=100, deadline=2000, database=None)
@given(TEXTS)
def test_any_text_as_a_trigger_compiles_or_is_refused(text: str) -> None:
    try:
        expression = compile_rule(text, TRIGGER_SYMBOLS)
    except RuleError:
        return
    columns = {**FACTS, **{name: np.array([0.0, 1.0, 1e9]) for name in TRIGGER_SYMBOLS}}
    assert expression.evaluate(columns, 3).dtype == bool


@pytest.mark.parametrize(
    "text",
    [
        "x / 0 > 1",  # inf: no exception
        "threads % 0 == 0",  # nan compares false
        "0 / 0 == 0 / 0",
        "y ** 64 > 1e300",  # overflows to inf
        "-(y ** 64) < -1e300",
        "(compress ? x : y) > 0.5",
        "$min([x, y, 0.5]) <= $max([threads, 1])",
        "mode in ['alpha', 'gamma'] and not compress",
        "mode + 'x' == 'alphax'",
        "1e400 > x",
        "threads and x",
    ],
)
def test_edge_cases_give_a_verdict_or_a_rule_error(text: str) -> None:
    assert_verdict_or_rule_error(text)


# -- valid rules ---------------------------------------------------------------------------------
def _random_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.uniform(0, 1, n),
            "y": np.exp(rng.uniform(np.log(0.001), np.log(1000), n)),
            "threads": rng.integers(1, 65, n),
            "buffer_kb": rng.integers(16, 65537, n),
            "mode": rng.choice(["alpha", "beta", "gamma"], n),
            "compress": rng.integers(0, 2, n).astype(bool),
        }
    )


CHECKS: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
    # (kind, text, the same rule in Python: does it object to the row?)
    (
        "constraint",
        "threads * buffer_kb <= 0.0001 * machine.memory",
        lambda c: not c["threads"] * c["buffer_kb"] <= 0.0001 * FACTS["machine.memory"],
    ),
    (
        "forbid",
        "mode == 'gamma' and threads < 2",
        lambda c: c["mode"] == "gamma" and c["threads"] < 2,
    ),
    (
        "forbid",
        "mode == 'beta' and y > 200 or compress and threads > 48",
        lambda c: (c["mode"] == "beta" and c["y"] > 200) or (c["compress"] and c["threads"] > 48),
    ),
    (
        "constraint",
        "$abs(x - 0.5) < 0.4 or mode in ['gamma']",
        lambda c: not (abs(c["x"] - 0.5) < 0.4 or c["mode"] == "gamma"),
    ),
    (
        "constraint",
        "(compress ? buffer_kb : buffer_kb * 2) // 16 % 4 != 1",
        lambda c: (c["buffer_kb"] if c["compress"] else c["buffer_kb"] * 2) // 16 % 4 == 1,
    ),
    (
        "forbid",
        "$max([x * 10, threads / 8]) >= machine.cores + workload.intervals / 5",
        lambda c: max(c["x"] * 10, c["threads"] / 8) >= FACTS["machine.cores"] + 5 / 5,
    ),
]


@pytest.mark.parametrize(("kind", "text", "python"), CHECKS, ids=[t for _, t, _ in CHECKS])
def test_vectorised_check_agrees_with_each_row(
    kind: str, text: str, python: Callable[[dict[str, Any]], bool]
) -> None:
    frame = _random_frame(500, seed=len(text))
    rules = rule_set(compile_rule(text), kind)
    out = rules.check_frame(frame)
    rows = frame.to_dict("records")
    expected = [python(row) for row in rows]
    assert 0 < sum(expected) < len(rows), "the sample must have rows on both sides"
    assert out["r"].tolist() == expected
    assert out["blocked"].tolist() == expected
    for row, objected in list(zip(rows, expected, strict=True))[:50]:
        config = {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
        verdict = rules.check(config)
        assert verdict.blocked == objected
        assert [f.rule for f in verdict.failures] == (["r"] if objected else [])


def test_failure_names_the_values_involved() -> None:
    rules = rule_set(compile_rule("mode == 'gamma' and threads < 2"))
    verdict = rules.check({"mode": "gamma", "threads": 1})
    assert verdict.blocked
    assert verdict.failures[0].values == {"mode": "gamma", "threads": 1}
    assert rules.check({"mode": "gamma", "threads": 2}).failures == []


def test_warn_rule_reports_without_blocking() -> None:
    rule = Rule(id="w", kind="forbid", expression=compile_rule("threads > 32"), severity="warn")
    rules = RuleSet(spec=SPEC, rules=[rule], facts=dict(FACTS), workload=dict(WORKLOAD))
    verdict = rules.check({"threads": 40})
    assert not verdict.blocked
    assert [f.rule for f in verdict.warnings] == ["w"]
    out = rules.check_frame(pd.DataFrame([{"threads": 40}, {"threads": 4}]))
    assert out["w"].tolist() == [True, False]
    assert out["blocked"].tolist() == [False, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("thread > 2", "<rule>:1:1: rule 'r': unknown name 'thread' (did you mean 'threads'?)"),
        (
            "x < 1 and bufer_kb > 16",
            "<rule>:1:11: rule 'r': unknown name 'bufer_kb' (did you mean 'buffer_kb'?)",
        ),
        (
            "threads <= machine.core",
            "<rule>:1:12: rule 'r': unknown name 'machine.core' (did you mean 'machine.cores'?)",
        ),
        (
            "mode == 'gama'",
            "<rule>:1:1: rule 'r': 'mode' is never 'gama' (did you mean 'gamma'?); its values "
            "are 'alpha', 'beta', 'gamma'",
        ),
        (
            "threads > zzz",
            "<rule>:1:11: rule 'r': unknown name 'zzz'; use a knob of the target, machine.* or "
            "workload.*",
        ),
        (
            "machine.uptime_seconds > 0",
            "<rule>:1:1: rule 'r': unknown name 'machine.uptime_seconds'; the machine.* names are "
            "machine.memory, machine.memory_mb, machine.cores, machine.disk, machine.disk_mb",
        ),
    ],
)
def test_unknown_name_suggests_a_fix(text: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_rule(text)
    assert str(info.value) == message


def test_trigger_names_are_not_config_names() -> None:
    with pytest.raises(RuleError) as info:
        compile_rule("after.throughput < before.throughput")
    assert str(info.value) == (
        "<rule>:1:1: rule 'r': unknown name 'after.throughput' (before.* and after.* are for "
        "triggers only); use a knob of the target, machine.* or workload.*"
    )
    with pytest.raises(RuleError) as info:
        compile_rule("after.throughput < 0.5 * before.throughput and threads > 4", TRIGGER_SYMBOLS)
    assert str(info.value) == (
        "<rule>:1:48: rule 'r': unknown name 'threads'; use before.*, after.* or machine.*"
    )
    expression = compile_rule("after.throughput < 0.5 * before.throughput", TRIGGER_SYMBOLS)
    assert expression.names == {"after.throughput", "before.throughput"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("threads >= > 2", "<rule>:1:12: rule 'r': syntax error near '> 2'"),
        (
            "threads >= 2 and",
            "<rule>:1:17: rule 'r': syntax error at the end of the expression (is something "
            "missing?)",
        ),
        ("x > 0.5 )", "<rule>:1:9: rule 'r': syntax error near ')'"),
    ],
)
def test_syntax_error_gives_line_and_column(text: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_rule(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("expr", "where"),
    [
        ("expr: threads >= > 2", "5:22"),
        ("expr: 'threads >= > 2'", "5:23"),
        ('expr: "threads >= > 2"', "5:23"),
        ("expr: |\n      threads >= 2 and\n      threads >= > 2", "7:18"),
        ("expr: >\n      threads >= 2 and\n      threads >= > 2", "7:18"),
        ("expr: |\n        threads >= > 2", "6:20"),
    ],
    ids=["plain", "single-quoted", "double-quoted", "literal-block", "folded-block", "indented"],
)
def test_syntax_error_in_a_file_gives_its_line_and_column(expr: str, where: str) -> None:
    text = f"target: synthetic\nrules:\n  - id: r\n    kind: constraint\n    {expr}\n"
    with pytest.raises(RuleError) as info:
        parse_rules(text, "f.yaml", SPEC)
    assert str(info.value).startswith(f"f.yaml:{where}: rule 'r': syntax error near '> 2")
    line, col = map(int, where.split(":"))
    assert text.splitlines()[line - 1][col - 1 :].startswith("> 2")


def test_expression_must_be_a_true_false_condition() -> None:
    with pytest.raises(RuleError, match="must be a true/false condition"):
        compile_rule("threads * 2")
    with pytest.raises(RuleError, match="must be a non-empty string"):
        compile_rule("   ")
    with pytest.raises(RuleError, match="must be a non-empty string"):
        compile_rule(["x > 1"])
