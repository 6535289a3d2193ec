"""SLA bounds of a tuning job (``--constraint``): a bound on one measured metric, parsed once
with the rule language (``rules.language``, never ``eval``), evaluated on a trial's metrics as an
Optuna constraint value (<= 0: the bound is met).

A bound compares one metric of the target with a number, or with a multiple of ``default``: the
metric's value for the target's default config, measured before the search
(``latency_p99_us <= 5000``, ``ops_per_s >= 0.9 * default``, ``latency_p50_us < default``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rules.language import NUMBER, Expression, RuleError, _eval, compile_expression
from targets.common.errors import KnobflowError, did_you_mean

__all__ = ["DEFAULT", "Bound", "BoundError", "parse_bound", "parse_bounds"]

#: The name a bound uses for the metric's value under the default config.
DEFAULT = "default"
_OPS = {"le": "<=", "lt": "<", "ge": ">=", "gt": ">"}
_WORDS = {"and", "or", "not", "true", "false", "null", "in", "if", "else", "for"}
_NAME = re.compile(r"(?<![\w.$])([A-Za-z_][A-Za-z0-9_]*)")
#: A bound met exactly at a strict ``<`` or ``>``: the smallest violation told to the tuner.
_TIE = 1e-12


def _side(node: Any, columns: Mapping[str, Any]) -> float:
    """One side of a checked comparison (e.g. ``1.1 * default``) over scalar ``columns``."""
    with np.errstate(all="ignore"):
        return float(_eval(node, columns))


class BoundError(KnobflowError):
    """A ``--constraint`` text that is not a bound on one metric of the target."""


def _fix(metrics: Iterable[str] | Mapping[str, str]) -> str:
    names = list(metrics)
    example = next(iter(names), "metric")
    up = isinstance(metrics, Mapping) and metrics.get(example) == "maximize"
    return (f"write METRIC <= NUMBER or METRIC <= FACTOR * default (also >=, <, >), e.g. "
            f"--constraint \"{example} {'>= 0.9' if up else '<= 1.1'} * default\"; metrics: "
            f"{', '.join(names)}")


@dataclass(frozen=True)
class Bound:
    """One checked bound: its text, the metric it bounds and its comparison."""

    text: str
    metric: str
    op: str  # le, lt, ge or gt
    expression: Expression

    @property
    def uses_default(self) -> bool:
        return DEFAULT in self.expression.names

    @property
    def key(self) -> str:
        """The name of its Optuna constraint (dashboards show it)."""
        return f"sla: {self.text}"

    def violation(self, metrics: Mapping[str, float],
                  default: Mapping[str, float] | None = None) -> float:
        """How far ``metrics`` break the bound, in the metric's unit (<= 0: met). A missing
        metric, or a missing default value, breaks it (``inf``)."""
        columns: dict[str, Any] = {self.metric: metrics.get(self.metric)}
        if self.uses_default:
            columns[DEFAULT] = (default or {}).get(self.metric)
        if any(v is None for v in columns.values()):
            return float("inf")
        tree = self.expression.tree
        left, right = _side(tree.left, columns), _side(tree.right, columns)
        gap = left - right if self.op in ("le", "lt") else right - left
        if self.op in ("lt", "gt") and gap == 0:
            return _TIE
        return float(gap)

    def met(self, metrics: Mapping[str, float],
            default: Mapping[str, float] | None = None) -> bool:
        return self.violation(metrics, default) <= 0

    def describe(self, default: Mapping[str, float] | None = None) -> str:
        """The bound, with the default's value put in where it uses one."""
        if self.uses_default and default and self.metric in default:
            return f"{self.text} (default {self.metric} = {default[self.metric]:,.6g})"
        return self.text


def parse_bound(text: str, metrics: Iterable[str] | Mapping[str, str]) -> Bound:
    """Check ``text`` (one ``--constraint``) against the target's ``metrics`` (names, or the
    target's metric -> direction); a ``BoundError`` names the option, the text and the fix."""
    names = metrics if isinstance(metrics, Mapping) else list(metrics)
    shown = f"--constraint {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise BoundError(f"{shown}: empty; {_fix(names)}")
    used = [n for n in _NAME.findall(text) if n.lower() not in _WORDS]
    unknown = [n for n in used if n not in names and n != DEFAULT]
    if unknown:
        raise BoundError(f"{shown}: '{unknown[0]}' is not a metric of the target"
                         f"{did_you_mean(unknown[0], [*names, DEFAULT])}; {_fix(names)}")
    bounded = sorted({n for n in used if n != DEFAULT})
    if len(bounded) != 1:
        raise BoundError(f"{shown}: a bound names exactly one metric (it names "
                         f"{', '.join(bounded) or 'none'}); {_fix(names)}")
    try:
        expression = compile_expression(
            text, {bounded[0]: NUMBER, DEFAULT: NUMBER},
            lambda offset: f"{shown} (at column {offset + 1})")
    except RuleError as exc:
        raise BoundError(f"{exc}; {_fix(names)}") from None
    op = getattr(expression.tree, "type", None)
    if type(expression.tree).__name__ != "ArithmeticComparisonExpression" or op not in _OPS:
        raise BoundError(f"{shown}: a bound is one comparison with <=, <, >= or >; "
                         f"{_fix(names)}")
    return Bound(text=text.strip(), metric=bounded[0], op=str(op), expression=expression)


def parse_bounds(texts: Iterable[str],
                 metrics: Iterable[str] | Mapping[str, str]) -> list[Bound]:
    """Every ``--constraint`` of a job, checked; the same text twice counts once."""
    names = metrics if isinstance(metrics, Mapping) else list(metrics)
    return [parse_bound(t, names) for t in dict.fromkeys(t.strip() for t in texts)]
