"""What ``knobflow recommend`` says: a ``Recommendation`` (the config to run on a live instance,
the knobs it changes, the predicted gain, where it came from) as JSON-safe data and as a few
lines for a person, and the rule warnings it carries. ``model_registry.recommend`` computes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rules.rule import Failure
from rules.ruleset import RuleSet
from targets.base import Target
from targets.common.errors import fmt_value

__all__ = [
    "CHANGE", "KEEP", "NOTHING", "Recommendation", "config_diff", "rule_warnings", "same_value",
    "show_value",
]

#: What a recommendation says: apply ``changes``, keep the current config, or nothing is known.
CHANGE, KEEP, NOTHING = "change", "keep", "nothing"


@dataclass
class Recommendation:
    """One recommended config for a live instance, why, and where it came from."""

    service: str
    objective: str
    direction: str
    decision: str  # "change" | "keep" | "nothing"
    config: dict[str, Any]  # the full config to run, in the knob spec's types
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # knob: {"from", "to"}
    predicted: float | None = None
    predicted_current: float | None = None
    predicted_gain: float | None = None  # > 1: better in the objective's sense; None: no model
    source: str = "current"  # "model" | "sibling" | "current"
    provenance: dict[str, Any] = field(default_factory=dict)
    filled_features: dict[str, float] = field(default_factory=dict)
    deferred_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reason: str = ""
    instance: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The recommendation as JSON-safe data (``knobflow recommend --json``)."""
        return _plain(asdict(self))

    def lines(self) -> list[str]:
        """A few lines for a person: what changes, the predicted gain, where it came from."""
        who = f"{self.instance} ({self.service})" if self.instance else self.service
        if self.decision == NOTHING:
            return [f"{who}: nothing to recommend: {self.reason}"]
        if self.decision == KEEP:
            out = [f"{who}: keep the current config: {self.reason}"]
        else:
            out = [f"{who}: change {len(self.changes)} knob(s) ({self.source}): {self.reason}"]
            out += [f"  {k}: {show_value(c['from'])} -> {show_value(c['to'])}"
                    for k, c in self.changes.items()]
        out.append(self._gain_line())
        out += [f"  deferred (max knobs per actuation): {k}: {show_value(c['from'])} -> "
                f"{show_value(c['to'])}" for k, c in self.deferred_changes.items()]
        out.append(_provenance_line(self.provenance))
        if self.filled_features:
            out.append("workload features not observed, taken from the champion's training "
                       "workload: " + ", ".join(f"{k}={show_value(v)}"
                                                for k, v in self.filled_features.items()))
        return out + [f"warning: {w}" for w in self.warnings]

    def _gain_line(self) -> str:
        if self.predicted_gain is None:
            return f"predicted {self.objective}: unknown (no champion model)"
        return (f"predicted {self.objective}: {show_value(self.predicted)} against "
                f"{show_value(self.predicted_current)} now "
                f"({self.predicted_gain:.3f}x, {self.direction})")


def _provenance_line(p: Mapping[str, Any]) -> str:
    model = f"model {p['model_name']} v{p['model_version']}" if p.get("model_name") else "no model"
    trials = ", ".join(f"{t['instance']}/{t['study']}#{t['trial']}" for t in p.get("trials", []))
    return (f"from {model}; trials {trials or '-'}; instances "
            f"{', '.join(p.get('instances', [])) or '-'}; {p.get('n_candidates', 0)} candidates, "
            f"{p.get('n_blocked', 0)} blocked by the rules")


def show_value(value: Any) -> str:
    """A value for a person: floats to 6 significant digits (the JSON keeps every digit)."""
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.6g}")
    return fmt_value(value)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python ones and non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def same_value(a: Any, b: Any) -> bool:
    """Whether two knob values are the same setting (floats within rounding of each other)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(
            float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The knobs ``new`` sets differently from ``old``: ``{knob: {"from": ..., "to": ...}}``."""
    return {k: {"from": old[k], "to": new[k]} for k in old if not same_value(old[k], new[k])}


def rule_warnings(target_cls: type[Target], rules: RuleSet, rule_files: Sequence[str],
              config: Mapping[str, Any], current_errors: Sequence[Failure]) -> list[str]:
    """The rule warnings that apply to ``config``, what it gives up of the policies not turned
    on (worded as ``flows/report.py`` words it), and the rules the current config breaks."""
    def values(f: Failure) -> str:
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in f.values.items())

    out = [f"{values(f)} (rule {f.rule}: {f.message})" for f in rules.check(config).warnings]
    policies = {r.policy for r in rules.rules if r.policy}
    for name, broken in RuleSet.given_up(target_cls, config, rule_files, policies,
                                         rules.workload).items():
        out.append(f"the recommended config gives up {name}: " + "; ".join(
            f"{values(f)} (rule {f.rule}: {f.message})" for f in broken)
            + f". Add --policy {name} to keep such configs out")
    out += [f"the current config is blocked by rule {f.rule}: {f.message} ({values(f)})"
            for f in current_errors]
    return out
