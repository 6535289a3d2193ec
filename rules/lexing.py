"""Rule text checked token by token, before rule-engine parses it, and the limits on a rule's text.

rule-engine folds constant sub-expressions while it parses, and it has no option to stop that:
``'aaaa…!' =~ '(a+)+$'`` runs the regex (time exponential in the literal's length),
``1 << 4000000000`` builds the number, and whatever folds away (``x > 0 or 1e999999999 > 1``) never
reaches the whitelist walk of ``rules.language``. This module owns what runs first: rule-engine's
own lexer over the text (it evaluates nothing), and the refusal of what folding could turn into
unbounded work or a hidden huge value: regex matches, bitwise operators, numbers with too many
digits or beyond a float's range, strings over their length, exponents that are not one small
number, powers of powers, and nesting deeper than the limit. Each refusal is an offset in the text
and a message ``what is wrong; the fix``; ``rules.language`` turns it into a located RuleError.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import rule_engine
from rule_engine.parser import base as parser_base

__all__ = ["FUNCTIONS", "MAX_DEPTH", "MAX_DIGITS", "MAX_EXPONENT", "MAX_OPERATORS", "MAX_STRING",
           "Scan", "scan"]

MAX_STRING, MAX_DEPTH, MAX_EXPONENT, MAX_DIGITS, MAX_OPERATORS = 200, 24, 64, 30, 150
FUNCTIONS = {"abs": 1, "min": None, "max": None}  # name -> number of arguments (None: an array)
LARGEST, SMALLEST = Decimal("1e308"), Decimal("1e-308")  # about a float's range

Refusal = tuple[int, str]  # (offset in the text, "what is wrong; the fix")

_NESTING = {"LPAREN": 1, "LBRACKET": 1, "RPAREN": -1, "RBRACKET": -1}
# every operator makes a node of the tree rule-engine builds recursively: 500 of them ('x+x+...',
# '-----x') overflow Python's stack before the tree could be checked
_OPERATORS = frozenset(rule_engine.parser.Parser.op_names.values()) | {"QMARK"}
_EXPONENT = (f"an exponent must be a number of at most {MAX_EXPONENT}, written right after '**' "
             "(e.g. x ** 2)")
_TOWER = ("a power of a power (a ** b ** c) is not allowed in rules; write one exponent, "
          "e.g. x ** 6")


class Scan:
    """A text's tokens and the first reason to refuse it (None: the parser may have it). It is
    also the lexer the parser is given (``input``, ``token``): the parser reads the very tokens
    that were checked, without lexing the text a second time."""

    def __init__(self, tokens: list[Any], refusal: Refusal | None) -> None:
        self.tokens, self.refusal = tokens, refusal
        self._next = iter(tokens)

    def input(self, text: str) -> None:
        """Ignored: the parser hands over the text, whose tokens are made already."""

    def token(self) -> Any:
        return next(self._next, None)


@functools.cache
def _lexer() -> Any:
    """rule-engine's own lexer (its parser's token rules), built once; cloned for each text. PLY
    is taken from rule-engine's parser module: vendored in rule-engine 5, a dependency in 4."""
    return parser_base.lex.lex(module=rule_engine.Rule.parser)


def scan(text: str) -> Scan:
    """The tokens of ``text`` (``type``, ``value``, ``lexpos``) and the first reason to refuse it
    before it is parsed; a character no token starts with raises rule-engine's RuleSyntaxError,
    as the parser would."""
    lexer = _lexer().clone()
    lexer.input(text)
    found = list(lexer)
    return Scan(found, _refusal(found))


def _refusal(found: list[Any]) -> Refusal | None:
    too_big = _depth(found) or _operators(found)
    if too_big is not None:
        return too_big
    for index, token in enumerate(found):
        check = _CHECKS.get(token.type)
        if check is not None and (problem := check(found, index)) is not None:
            return problem
    return None


def _depth(found: list[Any]) -> Refusal | None:
    """Brackets nested deeper than MAX_DEPTH (the parser builds the tree recursively)."""
    depth = deepest = 0
    first = None
    for token in found:
        step = _NESTING.get(token.type)
        if step is not None:
            depth += step
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH and first is None:
                first = token.lexpos
    if first is None:
        return None
    return first, f"the expression nests {deepest} levels deep; at most {MAX_DEPTH} are allowed"


def _operators(found: list[Any]) -> Refusal | None:
    """More than MAX_OPERATORS operators (each one a node of the tree, before any folding)."""
    count = 0
    for token in found:
        count += token.type in _OPERATORS
        if count > MAX_OPERATORS:
            return token.lexpos, (f"the expression has more than {MAX_OPERATORS} operators; "
                                  "split it into several rules")
    return None


def _regex(found: list[Any], index: int) -> Refusal:
    token = found[index]
    return token.lexpos, (f"a regex match ('{token.value}') is not allowed in rules; compare "
                          "with ==, != or 'in [...]'")


def _bitwise(found: list[Any], index: int) -> Refusal:
    token = found[index]
    return token.lexpos, (f"the bitwise operator '{token.value}' is not allowed in rules; use "
                          "arithmetic (+ - * / // % **)")


def _value(literal: str) -> Decimal | None:
    """A number token's value (``0x1f``, ``1.5e9``, ...), or None if it has none."""
    try:
        if literal[:2] in ("0x", "0b", "0o"):
            return Decimal(int(literal, 0))
        return Decimal(literal)
    except (ArithmeticError, ValueError):  # e.g. an exponent beyond what decimal can hold
        return None


def _shown(literal: str) -> str:
    return literal if len(literal) <= 24 else f"{literal[:20]}..."


def _number(found: list[Any], index: int) -> Refusal | None:
    token = found[index]
    value = _value(token.value)
    if value is not None and len(value.as_tuple().digits) > MAX_DIGITS:
        return token.lexpos, (f"the number {_shown(token.value)} has more than {MAX_DIGITS} "
                              "digits; round it (a float keeps 17)")
    if value is None or (value and not SMALLEST <= value.copy_abs() <= LARGEST):
        return token.lexpos, (f"the number {_shown(token.value)} is out of range; a number must "
                              "be 0 or between 1e-308 and 1e308 in size")
    return None


def _string(found: list[Any], index: int) -> Refusal | None:
    token = found[index]
    quotes = 3 if token.value[0] in "rs" else 2  # r'...' and s'...' have a prefix
    if len(token.value) - quotes > MAX_STRING:
        return token.lexpos, (f"a string longer than {MAX_STRING} characters is not allowed in "
                              "rules; shorten it")
    return None


def _power(found: list[Any], index: int) -> Refusal | None:
    """``found[index]`` is ``**``: its exponent must be one number of at most MAX_EXPONENT (a
    ``-`` and parentheses around it are fine), and neither side may be a power itself (the
    parser folds ``10 ** 10 ** 10`` before any check could see it)."""
    if _base_is_a_power(found, index):
        return found[index].lexpos, _TOWER
    at, opened = index + 1, 0
    while at < len(found) and found[at].type in ("LPAREN", "SUB"):
        opened += found[at].type == "LPAREN"
        at += 1
    if at >= len(found):
        return None  # '**' at the end: a syntax error, located by the parser
    exponent = found[at]
    value = _value(exponent.value) if exponent.type == "FLOAT" else None
    after = at + 1 + opened
    closed = all(t.type == "RPAREN" for t in found[at + 1 : after]) and after <= len(found)
    if value is None or value.copy_abs() > MAX_EXPONENT or not closed:
        return found[index + 1].lexpos, _EXPONENT  # where the exponent starts
    if after < len(found) and found[after].type == "POW":
        return found[after].lexpos, _TOWER
    return None



def _base_is_a_power(found: list[Any], index: int) -> bool:
    """Whether the operand left of the ``**`` at ``index`` is a parenthesised group (or a call)
    holding a ``**``: ``(x ** 2) ** 3``, ``$abs(x ** 2) ** 2``."""
    at = index - 1
    if at < 0 or found[at].type != "RPAREN":
        return False
    depth = 0
    while at >= 0:
        depth += (found[at].type == "RPAREN") - (found[at].type == "LPAREN")
        if depth == 0:
            return False
        if found[at].type == "POW":
            return True
        at -= 1
    return False


#: the check of each kind of token that has one
_CHECKS: dict[str, Callable[[list[Any], int], Refusal | None]] = {
    **dict.fromkeys(("EQ_FZM", "EQ_FZS", "NE_FZM", "NE_FZS"), _regex),  # =~ =~~ !~ !~~
    **dict.fromkeys(("BWAND", "BWOR", "BWXOR", "BWLSH", "BWRSH"), _bitwise),  # & | ^ << >>
    "FLOAT": _number,
    "STRING": _string,
    "POW": _power,
}
