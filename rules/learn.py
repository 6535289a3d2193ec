"""Rules learned from failures: when a trial crashes or hangs, forbid the region that caused it;
when a live actuation is rolled back, forbid its config (``LearnedRules.add_actuation``).

The region is a pair of conditions on two tuned knobs, each on the failure's side of the default
config (which ran): a threshold half-way between the failed value and the closest value that ran
well on that knob, or equality for categorical knobs (``threads >= 49 and compress == true``).
The pair must hold no config that ran well; among the pairs that do, the one that also holds the
most earlier failures of the same kind comes first, then one with a numeric threshold, then the
knobs where the failure moved farthest from the default, then the widest region. Failing all
pairs, the failed config itself is forbidden. Proposed rules apply at once, to the rest of the
job and to later jobs of the service, and are stored with their provenance (trial, failure class,
time) for an operator to list, accept or drop.

Where they are kept (the home, or the shared records every host reads): ``rules.learned_doc``.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rules.language import RuleError
from rules.learned_doc import LearnedDocument
from rules.learned_doc import learned_path as learned_path  # re-exported
from rules.parse import rule_from_dict
from rules.rule import Rule
from rules.ruleset import RuleSet
from targets.common.files import display_path
from targets.common.records import Records
from targets.spec import Knob, KnobSpec
from tuners.space import SearchSpace

LEARN_FROM = ("crash", "timeout", "out_of_memory")


@dataclass(frozen=True)
class Condition:
    """One condition of a learned rule on one knob: ``knob >= threshold`` (side "up"),
    ``knob <= threshold`` ("down") or ``knob == value`` ("eq")."""

    knob: Knob
    side: str
    value: Any

    @property
    def text(self) -> str:
        op = {"up": ">=", "down": "<=", "eq": "=="}[self.side]
        value = _literal(self.value) if self.side == "eq" else repr(self.value)
        return f"{self.knob.name} {op} {value}"

    @property
    def share(self) -> float:
        """The share of the knob's range (or values) the condition covers."""
        if self.side == "eq":
            return 1.0 / max(1, len(self.knob.choices))
        n = min(1.0, max(0.0, self.knob.position(self.value)))
        return 1.0 - n if self.side == "up" else n


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else repr(float(value))


def _side(knob: Knob, failed: Any, default: Any) -> str | None:
    """Where a condition on ``knob`` points: away from the default, which is known to run
    (numeric knobs); None when the failed value is the default's (nothing to point at)."""
    if not knob.is_numeric:
        return "eq"
    if float(failed) == float(default):
        return None
    return "up" if float(failed) > float(default) else "down"


#: A threshold lies at most this far (a share of the knob's range) from the failed value: a
#: region reaching farther would rest on too few configs that ran.
REACH = 0.15


def _threshold(knob: Knob, side: str, edge: float, known: Sequence[float]) -> float | int:
    """The threshold half-way (geometric for log knobs) from ``edge``, the innermost failed
    value, to the closest value on its inner side among ``known`` (values that ran well), but at
    most ``REACH`` of the range away; rounded to as few digits as keep it near there."""
    inner = [x for x in known if (x < edge if side == "up" else x > edge)]
    good = (max(inner) if side == "up" else min(inner)) if inner else (
        float(knob.low) if side == "up" else float(knob.high))
    geometric = knob.log and edge > 0 and good > 0
    middle = math.sqrt(edge * good) if geometric else (edge + good) / 2
    limit = knob.value_at(knob.position(edge) + (-REACH if side == "up" else REACH))
    middle = max(middle, limit) if side == "up" else min(middle, limit)
    if knob.type == "int":
        return int(math.floor(middle) + 1 if side == "up" else math.ceil(middle) - 1)
    low, high = sorted(((good + middle) / 2, (middle + edge) / 2))  # near the middle
    for digits in range(1, 18):
        rounded = float(f"{middle:.{digits}g}")
        if low < rounded < high:
            return rounded
    return middle


def _region(
    combo: Sequence[Knob],
    sides: Mapping[str, str],
    positives: Sequence[Mapping[str, Any]],
    goods: Sequence[Mapping[str, Any]],
    default: Mapping[str, Any],
) -> list[Condition] | None:
    """The conditions on ``combo`` that hold for every config of ``positives`` (the failed one
    first) and for no config of ``goods``; None if the knobs cannot separate them.

    A categorical knob keeps the failed value. A numeric knob's threshold lies half-way between
    the innermost positive and the closest value on that knob among the good configs that share
    the categorical values (they are the ones the threshold must keep out; if none lies on the
    inner side, among all good configs and the default). Either way a good config that shares
    the categorical values is inside the region only if it lies beyond the positives on every
    numeric knob of ``combo``: that is the check."""
    failed = positives[0]
    cats = [k for k in combo if not k.is_numeric]
    nums = [k for k in combo if k.is_numeric]
    if any(p[k.name] != failed[k.name] for p in positives for k in cats):
        return None
    edges = {}
    for k in nums:
        values = [float(p[k.name]) for p in positives]
        edges[k.name] = min(values) if sides[k.name] == "up" else max(values)

    def inner(x: float, k: Knob) -> bool:
        return x < edges[k.name] if sides[k.name] == "up" else x > edges[k.name]

    through = [g for g in goods if all(g[k.name] == failed[k.name] for k in cats)]
    if any(not any(inner(float(g[k.name]), k) for k in nums) for g in through):
        return None
    conditions = []
    for k in combo:
        if not k.is_numeric:
            conditions.append(Condition(k, "eq", failed[k.name]))
            continue
        known = [float(g[k.name]) for g in through]
        if not cats or not any(inner(x, k) for x in known):
            known = [float(g[k.name]) for g in goods] + [float(default[k.name])]
        conditions.append(Condition(k, sides[k.name],
                                    _threshold(k, sides[k.name], edges[k.name], known)))
    return conditions


def propose_forbid(
    failed: Mapping[str, Any],
    goods: Sequence[Mapping[str, Any]],
    space: SearchSpace,
    rules: RuleSet,
    failures: Sequence[Mapping[str, Any]] = (),
) -> str | None:
    """The expression of a forbid rule for the failed config, or None if a config that ran well
    is (nearly) the same one, or if it is the default config: the failure was not the config's.

    The rule is one or two conditions, each on the failure's side of the default config, which
    ran: ``threads >= 49 and compress == true``. A threshold lies half-way between the failed
    value and the closest value that ran well on that knob (see ``_region``), at most ``REACH``
    of the range from the failed value; the rule must hold no config that ran well (``goods``).
    Among the rules that qualify, the one that also holds the most earlier ``failures`` of the
    same kind (thresholds moved to take them in) comes first, then one with a numeric threshold,
    then the knobs where the failure moved farthest from the default (the likely cause: so a
    pair before one of its conditions alone), then the widest region. If none qualifies, the
    failed config itself is forbidden.
    """
    tuned = list(space.tuned)
    default = {**space.spec.defaults(), **space.fixed}
    if any(_same(failed, other, tuned) for other in [default, *goods]):
        return None  # it is the default, or the same config ran well: nothing to learn
    sides = {k.name: s for k in tuned if (s := _side(k, failed[k.name], default[k.name]))}
    usable = [k for k in tuned if k.name in sides]
    moved = {k.name: abs(k.position(failed[k.name]) - k.position(default[k.name])) if k.is_numeric
             else float(failed[k.name] != default[k.name]) for k in tuned}
    candidates: list[tuple[int, bool, float, float, str]] = []
    combos = itertools.chain.from_iterable(itertools.combinations(usable, n) for n in (1, 2))
    for combo in combos:
        if not any(moved[k.name] for k in combo):
            continue  # only default values: no knob that moved to blame
        positives = [failed]
        region = _region(combo, sides, positives, goods, default)
        if region is None:
            continue
        for earlier in failures:  # take in earlier failures of the same kind where possible
            if any(_side(k, earlier[k.name], default[k.name]) != sides[k.name] for k in combo):
                continue
            wider = _region(combo, sides, [*positives, earlier], goods, default)
            if wider is not None:
                positives, region = [*positives, earlier], wider
        candidates.append((
            len(positives) - 1,
            any(k.is_numeric for k in combo),
            round(sum(moved[k.name] for k in combo), 9),
            math.prod(c.share for c in region),
            " and ".join(c.text for c in region),
        ))
    frame = pd.DataFrame(list(goods)) if goods else None
    for *_, text in sorted(candidates, reverse=True):
        if frame is None or not _matches_any(text, frame, rules):  # a safety net
            return text
    exact = " and ".join(f"{k.name} == {_literal(failed[k.name])}" for k in tuned)
    return None if frame is not None and _matches_any(exact, frame, rules) else exact


def forbids(expression: str, config: Mapping[str, Any], rules: RuleSet) -> bool:
    """Whether a forbid rule of ``expression`` would block ``config``."""
    return _matches_any(expression, pd.DataFrame([rules.spec.full_config(config)]), rules)


def _same(a: Mapping[str, Any], b: Mapping[str, Any], tuned: Sequence[Knob]) -> bool:
    """Whether two configs are (nearly) the same on the tuned knobs."""
    return all(a[k.name] == b[k.name] if not k.is_numeric
               else abs(k.position(a[k.name]) - k.position(b[k.name])) <= 0.02 for k in tuned)


def _matches_any(text: str, frame: pd.DataFrame, rules: RuleSet) -> bool:
    probe = rule_from_dict({"id": "probe", "kind": "forbid", "when": text}, "learned", rules.spec)
    return bool(probe.matches(rules.columns(frame), len(frame)).any())


class LearnedRules:
    """The learned rules of one service: proposals with provenance, and their status."""

    def __init__(self, path: Path, spec: KnobSpec, store: Records | None = None,
                 key: str = "") -> None:
        self.doc, self.spec = LearnedDocument(path, store, key), spec
        self.path, self.store = self.doc.path, self.doc.store

    @classmethod
    def of(cls, home: Path, service: str, spec: KnobSpec) -> LearnedRules:
        """``service``'s rules: in the shared records when the settings have them, else home."""
        doc = LearnedDocument.of(home, service)
        return cls(doc.path, spec, doc.store, doc.key)

    def documents(self) -> list[dict[str, Any]]:
        text = self.doc.text()
        if text is None:
            return []
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
            raise RuleError(f"{display_path(self.path)}: a learned-rules file has a 'rules:' list")
        return list(data.get("rules", []))

    def rules(self) -> list[Rule]:
        """The learned rules that apply (proposed and accepted; dropped ones do not)."""
        shown = display_path(self.path)
        return [rule_from_dict(doc, shown, self.spec) for doc in self.documents()
                if doc.get("status") != "dropped"]

    def _write(self, docs: list[dict[str, Any]]) -> None:
        self.doc.write("# Rules knobflow learned from crashed and hung trials; review them with\n"
                       "# `knobflow rules list|accept|drop`.\n"
                       + yaml.safe_dump({"rules": docs}, sort_keys=False))

    def add(self, expression: str, *, rules: RuleSet, study: str, trial: int,
            failure_class: str, message: str) -> Rule:
        """Store a proposed forbid rule with its provenance, under the next short id
        (``learned-N``: operators type it to accept or drop the rule).

        A proposal that only widens a rule still proposed (the same knobs and sides, thresholds
        at least as far: ``threads >= 50`` after ``threads >= 52``) replaces that rule's
        condition under its id, the trial kept in its provenance's ``widened_by``; one already
        held by a rule that applies changes nothing and returns that rule. An accepted rule is
        never changed: a wider proposal beside it is a new rule."""
        with self.doc.lock():
            docs = self.documents()
            wanted = _conditions(expression)
            for doc in docs if wanted is not None else []:
                if doc.get("kind") != "forbid" or doc.get("status") == "dropped":
                    continue
                held = _conditions(str(doc.get("when", "")))
                if held is None:
                    continue
                if _within(wanted, held):  # nothing new: this rule forbids it already
                    return rule_from_dict(doc, display_path(self.path), self.spec)
                if doc.get("status") == "proposed" and _within(held, wanted):
                    doc["when"] = expression
                    provenance = doc.setdefault("provenance", {})
                    provenance.setdefault("widened_by", []).append({
                        "study": study, "trial": trial, "failure_class": failure_class,
                        "time": datetime.now(UTC).isoformat(timespec="seconds")})
                    rule = rule_from_dict(doc, display_path(self.path), self.spec)
                    self._write(docs)
                    return rule
            rule = learned_rule(expression, rule_id=_next_id(docs), rules=rules, study=study,
                                trial=trial,
                                failure_class=failure_class, message=message)
            self._write([*docs, rule.to_dict()])
        return rule

    def add_actuation(self, changes: Mapping[str, Any], *, rules: RuleSet, instance: str,
                      actuation: str, reason: str) -> Rule:
        """Store the config of a rolled-back actuation as a proposed forbid rule: ``knob ==
        value`` for each knob it changed, its provenance the actuation (no study or trial).
        A config that a learned rule on those knobs forbids already returns that rule."""
        config = self.spec.validate_config(changes, f"actuation {actuation}")
        if not config:
            raise RuleError(f"actuation {actuation} changed no knob: there is nothing to forbid")
        expression = " and ".join(f"{k} == {_literal(v)}" for k, v in sorted(config.items()))
        with self.doc.lock():
            for held in self.rules():
                if (held.kind == "forbid" and held.expression.names <= set(config)
                        and forbids(held.expression.text, config, rules)):
                    return held
            docs = self.documents()
            doc = {"id": _next_id(docs), "kind": "forbid", "when": expression,
                   "severity": "error", "status": "proposed",
                   "message": f"actuation {actuation} on instance {instance} was rolled back: "
                              f"{reason[:160]}",
                   "provenance": {"actuation": actuation, "instance": instance, "reason": reason,
                                  "time": datetime.now(UTC).isoformat(timespec="seconds")}}
            rule = rule_from_dict(doc, display_path(self.path), self.spec)
            self._write([*docs, rule.to_dict()])
        return rule

    def set_status(self, rule_id: str, status: str) -> dict[str, Any]:
        with self.doc.lock():
            docs = self.documents()
            for doc in docs:
                if doc.get("id") == rule_id:
                    doc["status"] = status
                    self._write(docs)
                    return doc
        known = ", ".join(d.get("id", "?") for d in docs) or "none"
        raise RuleError(f"{display_path(self.path)}: no learned rule '{rule_id}'; known: {known}")


def _next_id(docs: Sequence[Mapping[str, Any]]) -> str:
    """The next short id of a learned rule (``learned-N``: operators type it)."""
    taken = [int(str(d["id"]).rpartition("-")[2]) for d in docs
             if str(d.get("id", "")).startswith("learned-")
             and str(d["id"]).rpartition("-")[2].isdigit()]
    return f"learned-{max(taken, default=0) + 1}"


_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==)\s*(.+?)\s*$")


def _conditions(expression: str) -> dict[tuple[str, str], Any] | None:
    """A learned rule's conditions as {(knob, op): value}; None when the expression is not a
    conjunction of ``knob >= | <= | == literal`` (an operator wrote it: never merged)."""
    out: dict[tuple[str, str], Any] = {}
    for part in expression.split(" and "):
        match = _CONDITION.match(part)
        if match is None:
            return None
        knob, op, literal = match.groups()
        try:
            value = {"true": True, "false": False}.get(literal)
            value = ast.literal_eval(literal) if value is None else value
        except (ValueError, SyntaxError):
            return None
        if (knob, op) in out or not isinstance(value, str | int | float):
            return None
        out[knob, op] = value
    return out


def _within(inner: Mapping[tuple[str, str], Any], outer: Mapping[tuple[str, str], Any]) -> bool:
    """Whether the region of conditions ``inner`` lies inside that of ``outer`` (both on the same
    knobs with the same operators)."""
    if set(inner) != set(outer):
        return False
    for (knob, op), value in inner.items():
        bound = outer[knob, op]
        if op == "==":
            ok = value == bound
        else:
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool)
                          for v in (value, bound))
            ok = numeric and (value >= bound if op == ">=" else value <= bound)
        if not ok:
            return False
    return True


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
