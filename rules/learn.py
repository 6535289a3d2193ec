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

import itertools
import math
import os
from collections.abc import Mapping, Sequence
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


def _atom(knob: Knob, failed: Any, good: Any) -> Atom | None:
    """The condition separating ``failed`` from ``good`` on one knob, or None if they agree."""
    if not knob.is_numeric:
        if failed == good:
            return None
        share = 1.0 / max(1, len(knob.choices))
        return Atom(f"{knob.name} == {_literal(failed)}", 1.0, share)
    distance = abs(_norm(knob, failed) - _norm(knob, good))
    if distance <= 0.02:
        return None
    f, g = float(failed), float(good)
    middle = math.sqrt(f * g) if knob.log and f > 0 and g > 0 else (f + g) / 2
    if knob.type == "int":
        middle = math.floor(middle) + 1 if f > g else math.ceil(middle) - 1
    if f > g:
        return Atom(f"{knob.name} >= {middle!r}", distance, 1.0 - _norm(knob, middle))
    return Atom(f"{knob.name} <= {middle!r}", distance, _norm(knob, middle))


def propose_forbid(
    failed: Mapping[str, Any],
    goods: Sequence[Mapping[str, Any]],
    space: SearchSpace,
    rules: RuleSet,
) -> str | None:
    """The expression of a forbid rule for the failed config, or None if nothing can separate
    it from the good ones (the same config ran well: the failure was not the config's)."""
    tuned = list(space.tuned)
    if goods:
        def distance(good: Mapping[str, Any]) -> float:
            return sum(
                abs(_norm(k, failed[k.name]) - _norm(k, good[k.name])) if k.is_numeric
                else float(failed[k.name] != good[k.name])
                for k in tuned
            )
        nearest = min(goods, key=distance)
        atoms = [a for k in tuned if (a := _atom(k, failed[k.name], nearest[k.name])) is not None]
        if not atoms:
            return None
    else:  # nothing ran well yet: forbid the failed config's own corner of each knob
        atoms = [a for k in tuned if (a := _atom(k, failed[k.name], space.spec[k.name].default))]
        atoms = atoms or [Atom(f"{k.name} == {_literal(failed[k.name])}", 0.0, 0.0) for k in tuned]
    frame = pd.DataFrame(list(goods)) if goods else None
    size = min(2, len(atoms))
    # the knobs where the failure differs most from what ran well are the likely cause; of
    # those, the widest region is the most useful to forbid
    candidates = sorted(itertools.combinations(atoms, size),
                        key=lambda c: (-sum(a.distance for a in c), -math.prod(a.share for a in c)))
    for combo in [*candidates, tuple(atoms)]:
        text = " and ".join(a.text for a in combo)
        if frame is None or not _matches_any(text, frame, rules):
            return text
    exact = " and ".join(f"{k.name} == {_literal(failed[k.name])}" for k in tuned)
    return None if frame is not None and _matches_any(exact, frame, rules) else exact


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

    def add(self, rule: Rule) -> None:
        self._write([*self.documents(), rule.to_dict()])

    def set_status(self, rule_id: str, status: str) -> dict[str, Any]:
        docs = self.documents()
        for doc in docs:
            if doc.get("id") == rule_id:
                doc["status"] = status
                self._write(docs)
                return doc
        known = ", ".join(d.get("id", "?") for d in docs) or "none"
        raise RuleError(f"{display_path(self.path)}: no learned rule '{rule_id}'; known: {known}")


def learned_rule(
    expression: str, *, rules: RuleSet, study: str, trial: int, failure_class: str, message: str
) -> Rule:
    """A proposed forbid rule with its provenance."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    doc = {
        "id": f"learned-{study}-{trial}", "kind": "forbid", "when": expression,
        "severity": "error", "status": "proposed",
        "message": f"trial {trial} of {study} ended as {failure_class}: {message[:160]}",
        "provenance": {"study": study, "trial": trial, "failure_class": failure_class,
                       "time": now},
    }
    return rule_from_dict(doc, "learned", rules.spec)
