"""Rules learned from failures: when a trial crashes or hangs, forbid the region that caused it.

The region is found from the failed config and the nearest config that ran well: every tuned knob
where they differ gives a condition on the failure's side (a threshold half-way between the two
values, or equality for categorical knobs). The proposal is the pair of conditions (or the one
condition, when only one knob differs) on the knobs that differ most, such that no good config
falls inside it; failing that, all the conditions together, or the failed config itself.
Proposed rules apply at once, to the rest of the job and to later jobs of the service, and are
stored with their provenance (trial, failure class, time) for an operator to list, accept or drop.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rules.language import RuleError
from rules.ruleset import Rule, RuleSet, rule_from_dict
from targets.spec import Knob, KnobSpec
from targets.yamlfile import display_path
from tuners.space import SearchSpace

LEARN_FROM = ("crash", "timeout", "out_of_memory")
STATUSES = ("proposed", "accepted", "dropped")


@dataclass(frozen=True)
class Atom:
    """One condition of a learned rule: how far the failure is from the good config on this
    knob (0..1; a different category is 1), and the share of the knob's range it covers."""

    text: str
    distance: float
    share: float


def _norm(knob: Knob, value: Any) -> float:
    if not knob.is_numeric:
        return 0.0
    low, high, v = float(knob.low), float(knob.high), float(value)
    if knob.log:
        low, high, v = math.log(low), math.log(high), math.log(max(v, 1e-300))
    return (v - low) / (high - low) if high > low else 0.0


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else repr(float(value))


def _condition(knob: Knob, failed: Any, goods: Sequence[Mapping[str, Any]]) -> Atom | None:
    """A condition on one knob that holds for the failed value and for none of ``goods``: a
    threshold half-way to the closest good value (geometric for log knobs), or equality."""
    if not knob.is_numeric:
        if any(g[knob.name] == failed for g in goods):
            return None
        return Atom(f"{knob.name} == {_literal(failed)}", 1.0, 1.0 / max(1, len(knob.choices)))
    v = float(failed)
    values = [float(g[knob.name]) for g in goods]
    below, above = [x for x in values if x < v], [x for x in values if x > v]
    if any(x == v for x in values) or (below and above):
        return None  # a good config on both sides (or at the value): no threshold separates them
    if not below and not above:  # no good config left to separate from: the failure's side
        side = "up" if _norm(knob, v) >= 0.5 else "down"
        good = float(knob.low) if side == "up" else float(knob.high)
    else:
        side = "up" if below else "down"
        good = max(below) if below else min(above)
    middle = math.sqrt(v * good) if knob.log and v > 0 and good > 0 else (v + good) / 2
    if knob.type == "int":
        middle = math.floor(middle) + 1 if side == "up" else math.ceil(middle) - 1
    if side == "up":
        return Atom(f"{knob.name} >= {middle!r}", abs(_norm(knob, v) - _norm(knob, good)),
                    1.0 - _norm(knob, middle))
    return Atom(f"{knob.name} <= {middle!r}", abs(_norm(knob, v) - _norm(knob, good)),
                _norm(knob, middle))


def _holds(knob: Knob, atom: Atom, config: Mapping[str, Any], failed: Any) -> bool:
    """Whether ``config`` satisfies the condition ``atom`` on ``knob`` (built from ``failed``)."""
    if not knob.is_numeric:
        return config[knob.name] == failed
    op, _, threshold = atom.text.rpartition(" ")
    value = float(config[knob.name])
    return value >= float(threshold) if op.endswith(">=") else value <= float(threshold)


def propose_forbid(
    failed: Mapping[str, Any],
    goods: Sequence[Mapping[str, Any]],
    space: SearchSpace,
    rules: RuleSet,
) -> str | None:
    """The expression of a forbid rule for the failed config, or None if nothing separates it
    from the configs that ran well (the same config ran well: the failure was not the config's).

    A pair of conditions on two knobs is preferred: the first condition picks the knob, the second
    is fitted to the good configs the first lets through, so no good config satisfies both.
    Among pairs, the knobs where the failure is farthest from the nearest good config come first
    (the likely cause), then the widest region.
    """
    tuned = list(space.tuned)
    if goods:
        def distance(good: Mapping[str, Any]) -> float:
            return sum(
                abs(_norm(k, failed[k.name]) - _norm(k, good[k.name])) if k.is_numeric
                else float(failed[k.name] != good[k.name])
                for k in tuned
            )
        nearest = min(goods, key=distance)
        differ = {k.name: abs(_norm(k, failed[k.name]) - _norm(k, nearest[k.name]))
                  if k.is_numeric else float(failed[k.name] != nearest[k.name]) for k in tuned}
        suspects = [k for k in tuned if differ[k.name] > 0.02]
        if not suspects:
            return None
    else:
        suspects, differ = tuned, {k.name: 1.0 for k in tuned}
    candidates: list[tuple[float, float, str]] = []
    for first, second in itertools.permutations(suspects, 2) if len(suspects) > 1 else []:
        a = _condition(first, failed[first.name], []) if not first.is_numeric else None
        a = a or _loose(first, failed[first.name], goods)
        if a is None:
            continue
        through = [g for g in goods if _holds(first, a, g, failed[first.name])]
        b = _condition(second, failed[second.name], through)
        if b is not None:
            candidates.append((differ[first.name] + differ[second.name], a.share * b.share,
                               f"{a.text} and {b.text}"))
    for knob in suspects if len(suspects) == 1 else []:
        single = _condition(knob, failed[knob.name], goods)
        if single is not None:
            candidates.append((differ[knob.name], single.share, single.text))
    if candidates:
        return max(candidates)[2]
    exact = " and ".join(f"{k.name} == {_literal(failed[k.name])}" for k in tuned)
    frame = pd.DataFrame(list(goods)) if goods else None
    return None if frame is not None and _matches_any(exact, frame, rules) else exact


def _loose(knob: Knob, failed: Any, goods: Sequence[Mapping[str, Any]]) -> Atom | None:
    """A first condition on a numeric knob: half-way to the closest good value on either side
    (good configs may still pass it; the second condition takes care of those)."""
    v = float(failed)
    values = [float(g[knob.name]) for g in goods if float(g[knob.name]) != v]
    if not values:
        return _condition(knob, failed, [])
    closest = min(values, key=lambda x: abs(_norm(knob, x) - _norm(knob, v)))
    side = [g for g in goods if (float(g[knob.name]) < v) == (closest < v)]
    return _condition(knob, failed, side)


def _matches_any(text: str, frame: pd.DataFrame, rules: RuleSet) -> bool:
    probe = rule_from_dict({"id": "probe", "kind": "forbid", "when": text}, "learned", rules.spec)
    return bool(probe.matches(rules._columns(frame), len(frame)).any())


def learned_path(home: Path, service: str) -> Path:
    return home / "rules" / f"{service}.learned.yaml"


class LearnedRules:
    """The learned-rules file of one service: proposals with provenance, and their status."""

    def __init__(self, path: Path, spec: KnobSpec) -> None:
        self.path, self.spec = path, spec

    def documents(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
            raise RuleError(f"{display_path(self.path)}: a learned-rules file has a 'rules:' list")
        return list(data.get("rules", []))

    def rules(self) -> list[Rule]:
        """The learned rules that apply (proposed and accepted; dropped ones do not)."""
        shown = display_path(self.path)
        return [rule_from_dict(doc, shown, self.spec) for doc in self.documents()
                if doc.get("status") != "dropped"]

    def _write(self, docs: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".yaml.tmp")
        tmp.write_text(
            "# Rules knobflow learned from crashed and hung trials; review them with\n"
            "# `knobflow rules list|accept|drop`.\n"
            + yaml.safe_dump({"rules": docs}, sort_keys=False), encoding="utf-8")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the file's lock: jobs of one service may learn at the same time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, expression: str, *, rules: RuleSet, study: str, trial: int,
            failure_class: str, message: str) -> Rule:
        """Store a proposed forbid rule with its provenance, under the next short id
        (``learned-N``: operators type it to accept or drop the rule)."""
        with self._locked():
            docs = self.documents()
            taken = [int(d["id"].rpartition("-")[2]) for d in docs
                     if str(d.get("id", "")).startswith("learned-")
                     and str(d["id"]).rpartition("-")[2].isdigit()]
            rule = learned_rule(expression, rule_id=f"learned-{max(taken, default=0) + 1}",
                                rules=rules, study=study, trial=trial,
                                failure_class=failure_class, message=message)
            self._write([*docs, rule.to_dict()])
        return rule

    def set_status(self, rule_id: str, status: str) -> dict[str, Any]:
        with self._locked():
            docs = self.documents()
            for doc in docs:
                if doc.get("id") == rule_id:
                    doc["status"] = status
                    self._write(docs)
                    return doc
        known = ", ".join(d.get("id", "?") for d in docs) or "none"
        raise RuleError(f"{display_path(self.path)}: no learned rule '{rule_id}'; known: {known}")


def learned_rule(
    expression: str, *, rule_id: str, rules: RuleSet, study: str, trial: int,
    failure_class: str, message: str
) -> Rule:
    """A proposed forbid rule with its provenance."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    doc = {
        "id": rule_id, "kind": "forbid", "when": expression,
        "severity": "error", "status": "proposed",
        "message": f"trial {trial} of {study} ended as {failure_class}: {message[:160]}",
        "provenance": {"study": study, "trial": trial, "failure_class": failure_class,
                       "time": now},
    }
    return rule_from_dict(doc, "learned", rules.spec)
