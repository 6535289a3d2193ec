"""The rule expression language: rule-engine's grammar, checked and evaluated over columns.

Rule text is parsed once by the ``rule-engine`` library (never ``eval``) against a typed context:
the knobs of the target, ``machine.*`` facts, ``workload.*`` parameters and, in triggers,
``before.*``/``after.*`` metrics. The parse tree is then checked against a whitelist of
constructs (comparisons, arithmetic, and/or/not, ``in [...]``, ``? :``, ``$abs``/``$min``/``$max``)
and size limits, and evaluated by walking it with numpy over whole columns: one call checks
100,000 candidate configs. Anything else (attribute access outside the namespaces, item access,
comprehensions, regexes, other functions, huge exponents, deep nesting, long strings) is refused
when the rule is loaded, with the file, line and column of the offence. rule-engine folds constant
sub-expressions while it parses, so the text's tokens are checked first (``rules.lexing``) and
folding runs in a decimal context bounded to a float's range: nothing unbounded runs on a text.
"""

from __future__ import annotations

import decimal
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np
import rule_engine
from rule_engine import ast

from rules.engine_tables import keep
from rules.lexing import FUNCTIONS, MAX_DEPTH, MAX_EXPONENT, MAX_STRING, scan
from targets.common.errors import KnobflowError, did_you_mean

keep()  # rule-engine's parser tables, for the next process (once per version)

NUMBER, STRING, BOOL = "number", "string", "bool"
NAMESPACES = ("machine", "workload", "before", "after")
MAX_TEXT, MAX_NODES, MAX_ARRAY = 1000, 150, 64
# rule-engine folds constants in the thread's decimal context: this one keeps every folded value
# within a float's range (beyond it: Overflow, refused) at a fixed precision
_FOLDING = decimal.Context(prec=28, Emax=308, Emin=-308)
_A_VALUE = {NUMBER: "a number", STRING: "a quoted string", BOOL: "true or false"}

_TYPES = {NUMBER: rule_engine.DataType.FLOAT, STRING: rule_engine.DataType.STRING,
          BOOL: rule_engine.DataType.BOOLEAN}
_ARITHMETIC = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "tdiv": np.true_divide,
               "fdiv": np.floor_divide, "mod": np.mod, "pow": np.power}
_COMPARE = {"eq": np.equal, "ne": np.not_equal, "gt": np.greater, "ge": np.greater_equal,
            "lt": np.less, "le": np.less_equal}


class RuleError(KnobflowError):
    """A rule file or rule text is invalid; the message names file, line, column and rule."""


Locate = Callable[[int], str]


@dataclass(frozen=True)
class Expression:
    """A checked rule expression: its text, the names it uses, and its parse tree."""

    text: str
    names: frozenset[str]
    tree: Any

    def evaluate(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        """The expression over ``n`` rows of ``columns`` (name -> array or scalar): a bool array."""
        with np.errstate(all="ignore"):  # 1/0 is inf, nan compares false: no row can raise
            result = _eval(self.tree, columns)
        return np.broadcast_to(np.asarray(result, dtype=bool), (n,))


def compile_expression(
    text: Any,
    symbols: Mapping[str, str],
    locate: Locate,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
) -> Expression:
    """Parse and check ``text`` against ``symbols`` (name -> kind) and the values a categorical
    knob can take (``choices``); a RuleError if it is refused."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError(f"{locate(0)}: an expression must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise RuleError(f"{locate(MAX_TEXT)}: the expression is longer than {MAX_TEXT} characters")
    tree = _parse(text, symbols, locate)
    checker = _Checker(text, symbols, locate)
    checker.check(tree)
    _check_literals(tree, text, symbols, choices or {}, locate)
    if getattr(tree, "result_type", None) not in (
        rule_engine.DataType.BOOLEAN,
        rule_engine.DataType.UNDEFINED,
    ):
        raise RuleError(f"{locate(0)}: a rule must be a true/false condition, e.g. 'a >= b'")
    return Expression(text=text, names=frozenset(checker.names), tree=tree)


def _parse(text: str, symbols: Mapping[str, str], locate: Locate) -> Any:
    """rule-engine's parse tree of ``text`` once its tokens passed (``rules.lexing``), the parser
    reading those very tokens; its errors as RuleErrors."""
    try:
        with decimal.localcontext(_FOLDING):
            scanned = scan(text)
            if scanned.refusal is not None:
                offset, what = scanned.refusal
                raise RuleError(f"{locate(offset)}: {what}")
            statement = rule_engine.Rule.parser.parse(
                text, _context(frozenset(symbols.items())), lexer=scanned)
        return statement.expression
    except rule_engine.errors.SymbolResolutionError as exc:
        name = str(exc.symbol_name)
        raise RuleError(
            f"{locate(_offset_of(text, name))}: {_unknown_name(name, text, symbols)}"
        ) from None
    except rule_engine.errors.AttributeResolutionError as exc:  # e.g. threads.__class__
        raise _attribute_refused(str(exc.attribute_name), text, locate) from None
    except rule_engine.errors.RuleSyntaxError as exc:
        offset = exc.token.lexpos if exc.token is not None else len(text)
        raise RuleError(f"{locate(offset)}: syntax error{_near(text, offset)}") from None
    except rule_engine.errors.EngineError as exc:
        raise RuleError(f"{locate(0)}: {_engine_message(exc)}") from None
    except (ArithmeticError, ValueError) as exc:  # constant folding overflowed
        raise RuleError(f"{locate(0)}: the expression cannot be computed: {exc}") from None


@functools.lru_cache(maxsize=32)
def _context(symbols: frozenset[tuple[str, str]]) -> rule_engine.Context:
    """rule-engine's context for these names, made once: a new one per rule (its built-ins, the
    type resolver) cost more than parsing a short rule."""
    types: dict[str, Any] = {}
    for name, kind in sorted(symbols):
        space, _, _rest = name.partition(".")
        if space in NAMESPACES and _rest:
            # untyped for rule-engine, the walk checks the names: typed as a mapping, every
            # 'machine.x' cost a failed attribute lookup with spelling suggestions, then
            # rule-engine's deprecated fallback from attributes to keys (gone in rule-engine 6)
            types[space] = rule_engine.DataType.UNDEFINED
        else:
            types[name] = _TYPES[kind]
    return rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(types),
                               default_timezone="UTC")


def _offset_of(text: str, name: str) -> int:
    match = re.search(rf"(?<![\w.$]){re.escape(name)}(?!\w)", text)
    return match.start() if match else 0


def _near(text: str, offset: int) -> str:
    if offset >= len(text.rstrip()):
        return " at the end of the expression (is something missing?)"
    return f" near {text[offset : offset + 12]!r}"


def _engine_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return {
        "data type mismatch": "the types do not fit (e.g. a number compared to a string)",
        "arithmetic error": "a number in the expression is too large (e.g. a huge power)",
    }.get(message, message)


def _usable(symbols: Mapping[str, str]) -> str:
    """What a rule may name here, in short: 'a knob of the target, machine.* or workload.*'."""
    spaces = dict.fromkeys(s.split(".", 1)[0] for s in symbols if "." in s)
    parts = ["a knob of the target"] if any("." not in s for s in symbols) else []
    parts += [f"{space}.*" for space in spaces]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)


def _unknown_name(name: str, text: str, symbols: Mapping[str, str]) -> str:
    """An unknown name, and the fix: the closest known name, or what may be named here."""
    if name in NAMESPACES:  # e.g. before.* in a constraint: no before.* names here at all
        match = re.search(rf"(?<![\w.$]){name}\.\w+", text)
        shown = match.group(0) if match else name
        why = " (before.* and after.* are for triggers only)" if name in ("before", "after") else ""
        return f"unknown name '{shown}'{why}; use {_usable(symbols)}"
    return f"unknown name '{name}'" + (did_you_mean(name, symbols) or f"; use {_usable(symbols)}")


def _attribute_refused(name: str, text: str, locate: Locate) -> RuleError:
    offset = max(text.find(f".{name}"), 0)
    spaces = ", ".join(f"{space}.*" for space in NAMESPACES)
    return RuleError(
        f"{locate(offset)}: attribute access '.{name}' is not allowed in rules; "
        f"only the names {spaces} have a dot"
    )


class _Checker:
    """Walks a parsed tree: only whitelisted constructs, known names, and limits on size; the
    names it uses are collected in ``names``."""

    #: Constructs that only combine their children, and the fields holding them.
    COMBINE: ClassVar[dict[type, tuple[str, ...]]] = {
        ast.LogicExpression: ("left", "right"),
        ast.ComparisonExpression: ("left", "right"),
        ast.ArithmeticComparisonExpression: ("left", "right"),
        ast.ArithmeticExpression: ("left", "right"),
        ast.AddExpression: ("left", "right"),
        ast.SubtractExpression: ("left", "right"),
        ast.UnaryExpression: ("right",),
        ast.TernaryExpression: ("condition", "case_true", "case_false"),
    }

    def __init__(self, text: str, symbols: Mapping[str, str], locate: Locate) -> None:
        self.text, self.symbols, self.locate = text, symbols, locate
        self.names: set[str] = set()
        self.count = 0

    def check(self, node: Any, depth: int = 1) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise RuleError(f"{self.locate(0)}: the expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise RuleError(
                f"{self.locate(0)}: the expression nests deeper than {MAX_DEPTH} levels")
        kind = type(node)
        leaf = {
            ast.SymbolExpression: self._symbol, ast.GetAttributeExpression: self._attribute,
            ast.FloatExpression: self._number, ast.StringExpression: self._string,
            ast.BooleanExpression: lambda node: None, ast.ArrayExpression: self._array,
        }.get(kind)
        if leaf is not None:
            leaf(node)
            return
        if kind is ast.FunctionCallExpression:
            children = self._call(node)
        elif kind is ast.ContainsExpression:
            children = self._contains(node)
        else:
            children = self._combined(node)
        for child in children:
            self.check(child, depth + 1)

    def _refuse(self, what: str) -> RuleError:
        return RuleError(f"{self.locate(0)}: {what} is not allowed in rules (in {self.text!r})")

    def _symbol(self, node: Any) -> None:
        if node.scope is not None:
            raise self._refuse(f"the built-in symbol '${node.name}'")
        if node.name in NAMESPACES:
            raise RuleError(
                f"{self.locate(_offset_of(self.text, node.name))}: '{node.name}' needs a name "
                f"after it, e.g. '{node.name}.{_example(node.name, self.symbols)}'"
            )
        self.names.add(node.name)

    def _attribute(self, node: Any) -> None:
        obj = node.object
        if not (type(obj) is ast.SymbolExpression and obj.scope is None
                and obj.name in NAMESPACES):
            raise _attribute_refused(node.name, self.text, self.locate)
        full = f"{obj.name}.{node.name}"
        if full not in self.symbols:
            known = [s for s in self.symbols if s.startswith(f"{obj.name}.")]
            raise RuleError(
                f"{self.locate(_offset_of(self.text, full))}: unknown name '{full}'"
                + (did_you_mean(full, known) or f"; the {obj.name}.* names are {', '.join(known)}")
            )
        self.names.add(full)

    def _number(self, node: Any) -> None:
        if not Decimal(node.value).is_finite():
            raise RuleError(f"{self.locate(0)}: a number in the expression is too large")

    def _string(self, node: Any) -> None:
        if len(node.value) > MAX_STRING:
            raise RuleError(f"{self.locate(0)}: a string longer than {MAX_STRING} characters")

    def _array(self, node: Any) -> None:
        if len(node.value) > MAX_ARRAY:
            raise RuleError(f"{self.locate(0)}: a list longer than {MAX_ARRAY} items")
        for item in node.value:
            if type(item) not in (ast.FloatExpression, ast.StringExpression, ast.BooleanExpression):
                raise self._refuse("a list of anything but plain values")

    def _call(self, node: Any) -> list[Any]:
        """A whitelisted function's arguments ($min and $max take one [list])."""
        function = node.function
        if not (type(function) is ast.SymbolExpression and function.scope == "built-in"
                and function.name in FUNCTIONS):
            name = getattr(function, "name", "?")
            raise self._refuse(
                f"calling '{name}' (allowed: " + ", ".join(f"${f}" for f in FUNCTIONS) + ")")
        args = list(node.arguments)
        if FUNCTIONS[function.name] is None:  # $min([a, b, ...]), $max([...])
            if len(args) != 1 or type(args[0]) is not ast.ArrayExpression:
                raise RuleError(f"{self.locate(0)}: ${function.name} takes one [list], e.g. "
                                f"${function.name}([a, b])")
            args = list(args[0].value)
            if len(args) > MAX_ARRAY:
                raise RuleError(f"{self.locate(0)}: a list longer than {MAX_ARRAY} items")
        return args

    def _contains(self, node: Any) -> list[Any]:
        if type(node.container) is not ast.ArrayExpression:
            raise self._refuse("'in' with something other than a [list]")
        return [node.member, node.container]

    def _combined(self, node: Any) -> list[Any]:
        kind = type(node)
        if (kind is ast.ArithmeticExpression and node.type == "pow"
                and (type(node.right) is not ast.FloatExpression
                     or abs(node.right.value) > MAX_EXPONENT)):
            raise RuleError(f"{self.locate(0)}: an exponent must be a number of at most "
                            f"{MAX_EXPONENT} (in {self.text!r})")
        fields = self.COMBINE.get(kind)
        if fields is None:
            what = kind.__name__.removesuffix("Expression").lower() or "this construct"
            raise self._refuse(f"a {what} expression")
        return [getattr(node, field) for field in fields]


def _check_literals(
    node: Any,
    text: str,
    symbols: Mapping[str, str],
    choices: Mapping[str, tuple[Any, ...]],
    locate: Locate,
) -> None:
    """A knob compared with a value it cannot take is a mistake: say so, with a suggestion."""
    pairs = []
    if type(node) is ast.ComparisonExpression:
        pairs = [(node.left, node.right), (node.right, node.left)]
    elif type(node) is ast.ContainsExpression:
        pairs = [(node.member, item) for item in node.container.value]
    for side, other in pairs:
        if type(side) is not ast.SymbolExpression or side.name not in symbols:
            continue
        if type(other) not in (ast.FloatExpression, ast.StringExpression, ast.BooleanExpression):
            continue
        value = other.value
        if type(other) is ast.FloatExpression:  # 4096, not Decimal('4096')
            value = int(value) if value == value.to_integral_value() else float(value)
        kind = symbols[side.name]
        if (kind == STRING) != isinstance(value, str) or (kind == BOOL) != isinstance(value, bool):
            raise RuleError(
                f"{locate(_offset_of(text, side.name))}: '{side.name}' is a {kind} "
                f"and is compared with {value!r}; compare it with {_A_VALUE[kind]}"
            )
        allowed = choices.get(side.name)
        if allowed and value not in allowed and str(value) not in map(str, allowed):
            shown = ", ".join(map(repr, allowed))
            raise RuleError(
                f"{locate(_offset_of(text, side.name))}: '{side.name}' is never {value!r}"
                f"{did_you_mean(str(value), [str(a) for a in allowed])}; its values are {shown}"
            )
    for field in ("left", "right", "condition", "case_true", "case_false", "member"):
        child = getattr(node, field, None)
        if isinstance(child, ast.ExpressionBase):
            _check_literals(child, text, symbols, choices, locate)


def _example(space: str, symbols: Mapping[str, str]) -> str:
    return next((s.split(".", 1)[1] for s in symbols if s.startswith(f"{space}.")), "name")


def _eval(node: Any, columns: Mapping[str, Any]) -> Any:
    """Evaluate a checked tree over columns (numpy arrays), vectorised."""
    kind = type(node)
    if kind is ast.SymbolExpression:
        return columns[node.name]
    if kind is ast.GetAttributeExpression:
        return columns[f"{node.object.name}.{node.name}"]
    if kind is ast.FloatExpression:
        return float(node.value)
    if kind in (ast.StringExpression, ast.BooleanExpression):
        return node.value
    if kind is ast.LogicExpression:
        left, right = _eval(node.left, columns), _eval(node.right, columns)
        return np.logical_and(left, right) if node.type == "and" else np.logical_or(left, right)
    if kind is ast.UnaryExpression:
        value = _eval(node.right, columns)
        return np.logical_not(value) if node.type == "not" else np.negative(value)
    if kind in (ast.ComparisonExpression, ast.ArithmeticComparisonExpression):
        return _COMPARE[node.type](_eval(node.left, columns), _eval(node.right, columns))
    if kind in (ast.ArithmeticExpression, ast.AddExpression, ast.SubtractExpression):
        return _ARITHMETIC[node.type](_eval(node.left, columns), _eval(node.right, columns))
    if kind is ast.TernaryExpression:
        return np.where(
            _eval(node.condition, columns),
            _eval(node.case_true, columns),
            _eval(node.case_false, columns),
        )
    if kind is ast.ContainsExpression:
        values = [
            item.value if type(item) is not ast.FloatExpression else float(item.value)
            for item in node.container.value
        ]
        return np.isin(_eval(node.member, columns), values)
    if kind is ast.FunctionCallExpression:
        name = node.function.name
        if name == "abs":
            return np.abs(_eval(node.arguments[0], columns))
        items = np.broadcast_arrays(*[_eval(a, columns) for a in node.arguments[0].value])
        return (np.minimum if name == "min" else np.maximum).reduce(items)
    if kind is ast.ArrayExpression:
        return [_eval(item, columns) for item in node.value]
    raise AssertionError(f"unchecked construct {kind.__name__}")  # _Checker refuses these
