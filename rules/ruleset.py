"""Rule files and rule sets: what may run, what must be reported, and what to do after a change.

A rule file (YAML) holds ``rules:``, each with an ``id`` and a ``kind``:

- ``constraint``: ``expr`` must hold for a config (``shared_buffers <= 0.4 * machine.memory_mb``);
- ``forbid``: a config matching ``when`` is known to be bad (a hang, a refusal, a policy);
- ``trigger``: ``when`` over ``before.*``/``after.*`` measurements of an actuation fires an
  ``action`` (``rollback``, ``retune``, ``alert``).

``severity: error`` (default) blocks a config, ``warn`` reports it. A rule with a ``policy`` (e.g.
``durability``) applies only to jobs that turn that policy on. Every error in a file names the
file, line, column and rule, and suggests a fix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import yaml

from rules.language import BOOL, NUMBER, STRING, Expression, RuleError, compile_expression
from targets.base import Target
from targets.common.errors import did_you_mean, fmt_value
from targets.common.files import UniqueKeyLoader, display_path, yaml_problem
from targets.spec import KnobSpec

KINDS = ("constraint", "forbid", "trigger")
SEVERITIES = ("error", "warn")
ACTIONS = ("rollback", "retune", "alert")
FIELDS = (
    "id",
    "kind",
    "expr",
    "when",
    "severity",
    "message",
    "action",
    "policy",
    "status",
    "provenance",
)
SETS_DIR = Path(__file__).resolve().parent / "sets"


def machine_facts(path: str | os.PathLike[str] = ".") -> dict[str, float]:
    """This machine's memory, cores and free disk (at ``path``), as ``machine.*`` symbols."""
    memory = float(psutil.virtual_memory().total)
    disk = float(shutil.disk_usage(Path(path) if Path(path).exists() else ".").free)
    return {
        "machine.memory": memory,
        "machine.memory_mb": memory / 2**20,
        "machine.cores": float(os.cpu_count() or 1),
        "machine.disk": disk,
        "machine.disk_mb": disk / 2**20,
    }


@dataclass(frozen=True)
class Rule:
    """One rule, checked and compiled."""

    id: str
    kind: str
    expression: Expression
    severity: str = "error"
    message: str = ""
    action: str | None = None
    policy: str | None = None
    status: str = "active"  # learned rules: proposed | accepted
    provenance: Mapping[str, Any] | None = None
    source: str = ""

    def matches(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        """Rows this rule objects to: a failing constraint, a forbidden config, a fired trigger."""
        value = self.expression.evaluate(columns, n)
        return ~value if self.kind == "constraint" else value

    def to_dict(self) -> dict[str, Any]:
        text_field = "expr" if self.kind == "constraint" else "when"
        doc: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            text_field: self.expression.text,
            "severity": self.severity,
            "message": self.message,
        }
        for key in ("action", "policy"):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        if self.provenance:
            doc["status"] = self.status
            doc["provenance"] = dict(self.provenance)
        return doc


@dataclass
class Failure:
    """A rule a config did not pass, with the values that made it fail."""

    rule: str
    severity: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        values = ", ".join(f"{k}={fmt_value(v)}" for k, v in self.values.items())
        return f"{self.rule} ({self.severity}): {self.message}" + (f" [{values}]" if values else "")


@dataclass
class Verdict:
    """Every rule a config failed; ``blocked`` when any of them is an error."""

    failures: list[Failure] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return any(f.severity == "error" for f in self.failures)

    @property
    def errors(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "error"]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "warn"]


def config_symbols(
    spec: KnobSpec, workload: Mapping[str, Any] | None = None
) -> tuple[dict[str, str], dict[str, tuple[Any, ...]]]:
    """Names a config rule may use (knobs, machine.*, workload.*), and categorical values."""
    symbols: dict[str, str] = {}
    choices: dict[str, tuple[Any, ...]] = {}
    for knob in spec:
        if knob.type == "bool":
            symbols[knob.name] = BOOL
        elif knob.type == "categorical" and all(isinstance(v, str) for v in knob.values):
            symbols[knob.name] = STRING
        else:
            symbols[knob.name] = NUMBER
        if knob.type == "categorical":
            choices[knob.name] = knob.values
    symbols.update(dict.fromkeys(machine_facts(), NUMBER))
    for key, value in (workload or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            symbols[f"workload.{key}"] = NUMBER
        elif isinstance(value, str):
            symbols[f"workload.{key}"] = STRING
    return symbols, choices


def trigger_symbols(target_cls: type[Target]) -> dict[str, str]:
    symbols = {f"{when}.{m}": NUMBER for m in target_cls.metrics for when in ("before", "after")}
    symbols.update(dict.fromkeys(machine_facts(), NUMBER))
    return symbols


class _Locator:
    """Turns an offset in a rule's text into ``file:line:col: rule 'id'`` (YAML marks)."""

    def __init__(self, source: str, node: yaml.Node | None, rule_id: str) -> None:
        self.source, self.node, self.rule_id = source, node, rule_id

    def __call__(self, offset: int) -> str:
        node = self.node
        if node is None:
            return f"{self.source}: rule '{self.rule_id}'"
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        style = getattr(node, "style", None)  # (a list or a mapping has none)
        if style in ("'", '"'):
            col += 1
        if style in ("|", ">"):  # a block scalar starts on the next line
            line, col = _block_position(node, offset)
        else:
            col += offset
        return f"{self.source}:{line}:{col}: rule '{self.rule_id}'"


def _block_position(node: yaml.ScalarNode, offset: int) -> tuple[int, int]:
    """Line and column of ``offset`` in a block scalar's text, counted on the file's own lines
    (each one indented, after the ``|`` or ``>`` line)."""
    mark = node.start_mark
    lines = (mark.buffer or "")[mark.pointer : node.end_mark.pointer].split("\n")[1:]
    while lines and not lines[-1].strip():
        lines.pop()
    indent = next((len(s) - len(s.lstrip(" ")) for s in lines if s.strip()), mark.column + 2)
    for number, source_line in enumerate(lines):
        content = source_line[indent:]
        if offset <= len(content) or number == len(lines) - 1:
            return mark.line + 2 + number, indent + 1 + offset
        offset -= len(content) + 1
    return mark.line + 2, indent + 1 + offset


def parse_rules(
    text: str,
    source: str,
    spec: KnobSpec,
    target_cls: type[Target] | None = None,
    workload: Mapping[str, Any] | None = None,
) -> list[Rule]:
    """Parse and check a rule file's text; every error names file, line, column and rule."""
    loader = None
    try:
        loader = UniqueKeyLoader(text)
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}{yaml_problem(exc, text)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if isinstance(data, Mapping) and "rules" in data and not isinstance(data["rules"], list):
        node = next(v for k, v in root.value if k.value == "rules")
        raise RuleError(
            f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: field 'rules' "
            "must be a list of rules, each starting with '- id: ...'"
        )
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
        raise RuleError(f"{source}: a rule file is a mapping with a 'rules:' list")
    for key in data:
        if key not in ("target", "rules"):
            raise RuleError(
                f"{source}: unknown top-level field '{key}'"
                f"{did_you_mean(str(key), ('target', 'rules'))}; fields are target, rules"
            )
    if data.get("target") not in (None, spec.target):
        raise RuleError(f"{source}: the file is for target '{data['target']}', not '{spec.target}'")
    rules_node = next(v for k, v in root.value if k.value == "rules")
    symbols, choices = config_symbols(spec, workload)
    seen: dict[str, str] = {}
    rules = []
    for index, (body, node) in enumerate(zip(data["rules"], rules_node.value, strict=True)):
        at = f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
        rule = _parse_rule(body, node, at, source, index, symbols, choices, target_cls)
        if rule.id in seen:
            raise RuleError(
                f"{at}: rule '{rule.id}': the id is used twice (first at {seen[rule.id]}); "
                "give each rule its own id"
            )
        seen[rule.id] = at.removeprefix(f"{source}:")
        rules.append(rule)
    return rules


def _parse_rule(
    body: Any,
    node: yaml.Node | None,
    at: str,
    source: str,
    index: int,
    symbols: Mapping[str, str],
    choices: Mapping[str, tuple[Any, ...]],
    target_cls: type[Target] | None,
) -> Rule:
    if not isinstance(body, Mapping):
        raise RuleError(f"{at}: rule {index + 1} must be a mapping with id, kind and expr/when")
    rule_id = body.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise RuleError(
            f"{at}: rule {index + 1}: field 'id' is missing; give it a name, e.g. "
            "'id: cache-fits-memory'"
        )
    here = f"{at}: rule '{rule_id}'"
    for key in body:
        if key not in FIELDS:
            raise RuleError(f"{here}: unknown field '{key}'{did_you_mean(str(key), FIELDS)}")
    kind = body.get("kind")
    if kind not in KINDS:
        raise RuleError(
            f"{here}: field 'kind' must be one of {', '.join(KINDS)}, got "
            f"{fmt_value(kind)}{did_you_mean(str(kind), KINDS)}"
        )
    text_field = "expr" if kind == "constraint" else "when"
    wrong = "when" if kind == "constraint" else "expr"
    if wrong in body:
        raise RuleError(f"{here}: a {kind} uses '{text_field}', not '{wrong}'")
    if text_field not in body:
        raise RuleError(
            f"{here}: field '{text_field}' is missing; give the condition, e.g. "
            f"'{text_field}: a <= b'"
        )
    severity = body.get("severity", "error")
    if severity not in SEVERITIES:
        raise RuleError(
            f"{here}: field 'severity' must be error or warn, got {fmt_value(severity)}"
        )
    action = body.get("action")
    if kind == "trigger" and action not in ACTIONS:
        raise RuleError(
            f"{here}: a trigger needs 'action', one of {', '.join(ACTIONS)}; got "
            f"{fmt_value(action)}"
        )
    if kind != "trigger" and action is not None:
        raise RuleError(f"{here}: field 'action' belongs to triggers only")
    for key in ("message", "policy", "status"):
        if key in body and not isinstance(body[key], str):
            raise RuleError(f"{here}: field '{key}' must be text")
    value_node = (
        next((v for k, v in node.value if k.value == text_field), None)
        if node is not None
        else None
    )
    if kind == "trigger":
        if target_cls is None:
            raise RuleError(
                f"{here}: triggers need the target's metrics; check the file with its target"
            )
        symbols, choices = trigger_symbols(target_cls), {}
    expression = compile_expression(
        body.get(text_field), symbols, _Locator(source, value_node, rule_id), choices
    )
    return Rule(
        id=rule_id,
        kind=kind,
        expression=expression,
        severity=severity,
        message=body.get("message") or f"{text_field}: {expression.text}",
        action=action,
        policy=body.get("policy"),
        status=body.get("status", "active"),
        provenance=body.get("provenance"),
        source=at,
    )


def rule_from_dict(
    body: Mapping[str, Any], source: str, spec: KnobSpec, target_cls: type[Target] | None = None
) -> Rule:
    """A rule from a mapping (e.g. a learned rule), checked like one read from a file."""
    symbols, choices = config_symbols(spec)
    return _parse_rule(body, None, source, source, 0, symbols, choices, target_cls)


def load_rule_file(
    path: str | os.PathLike[str],
    spec: KnobSpec,
    target_cls: type[Target] | None = None,
    workload: Mapping[str, Any] | None = None,
) -> list[Rule]:
    shown = display_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError(f"{shown}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{shown}: cannot read: {exc}") from None
    if workload is None and target_cls is not None:
        workload = dict(target_cls.workload_defaults)
    return parse_rules(text, shown, spec, target_cls, workload)


def shipped_rules_path(target_cls: type[Target]) -> Path | None:
    """The rule set knobflow ships for a target, if any (``rules/sets/<target>.yaml``)."""
    path = SETS_DIR / f"{target_cls.name}.yaml"
    return path if path.exists() else None


@dataclass
class RuleSet:
    """The rules of a job: shipped for the target, the operator's files, and learned ones."""

    spec: KnobSpec
    rules: list[Rule]
    facts: dict[str, float] = field(default_factory=machine_facts)
    workload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_target(
        cls,
        target_cls: type[Target],
        files: Sequence[str] = (),
        policies: Iterable[str] = (),
        learned: Sequence[Rule] = (),
        workload: Mapping[str, Any] | None = None,
        shipped: bool = True,
        all_policies: bool = False,
    ) -> RuleSet:
        """The rules for a job on ``target_cls``: rules with a policy apply only when the job
        turns the policy on (``all_policies``: every one, e.g. to list them)."""
        spec = target_cls.knob_spec()
        workload = {**target_cls.workload_defaults, **(workload or {})}
        paths = ([shipped_rules_path(target_cls)] if shipped else []) + [Path(f) for f in files]
        rules: list[Rule] = []
        for path in paths:
            if path is not None:
                rules += load_rule_file(path, spec, target_cls, workload)
        wanted = set(policies)
        rules = [r for r in rules if all_policies or r.policy is None or r.policy in wanted]
        rules += [r for r in learned if r.status != "dropped"]
        return cls(spec=spec, rules=rules, workload=workload)

    @property
    def config_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.kind != "trigger"]

    @property
    def triggers(self) -> list[Rule]:
        return [r for r in self.rules if r.kind == "trigger"]

    def add(self, rule: Rule) -> None:
        """Apply ``rule`` from now on; it replaces a rule with its id (a widened learned rule)."""
        # a new list: checks running now keep theirs
        self.rules = [*(r for r in self.rules if r.id != rule.id), rule]

    def columns(self, frame: pd.DataFrame) -> dict[str, Any]:
        columns: dict[str, Any] = dict(self.facts)
        columns.update({f"workload.{k}": v for k, v in self.workload.items()})
        defaults = self.spec.defaults()
        for knob in self.spec:
            values = (
                frame[knob.name]
                if knob.name in frame
                else pd.Series([defaults[knob.name]] * len(frame))
            )
            dtype = (
                bool
                if knob.type == "bool"
                else (
                    object
                    if knob.type == "categorical" and any(isinstance(v, str) for v in knob.values)
                    else float
                )
            )
            columns[knob.name] = values.to_numpy(dtype=dtype)
        return columns

    def check_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Vectorised: one bool column per config rule (True: the row fails it), and
        ``blocked`` (an error rule failed) — for many candidates at once."""
        columns = self.columns(frame)
        out = {r.id: r.matches(columns, len(frame)) for r in self.config_rules}
        errors = [out[r.id] for r in self.config_rules if r.severity == "error"]
        out["blocked"] = np.logical_or.reduce(errors) if errors else np.zeros(len(frame), bool)
        return pd.DataFrame(out, index=frame.index)

    def check(self, config: Mapping[str, Any]) -> Verdict:
        """Every config rule ``config`` fails, with the values involved."""
        full = self.spec.full_config(config)
        columns = self.columns(pd.DataFrame([full]))
        verdict = Verdict()
        for rule in self.config_rules:
            if rule.matches(columns, 1)[0]:
                values = {n: full.get(n, columns.get(n)) for n in sorted(rule.expression.names)}
                verdict.failures.append(Failure(rule.id, rule.severity, rule.message, values))
        return verdict

    def fired_triggers(
        self, before: Mapping[str, float], after: Mapping[str, float]
    ) -> list[Failure]:
        """Triggers whose condition holds for measurements before and after an actuation."""
        columns: dict[str, Any] = dict(self.facts)
        columns.update({f"before.{k}": float(v) for k, v in before.items()})
        columns.update({f"after.{k}": float(v) for k, v in after.items()})
        fired = []
        for rule in self.triggers:
            if any(n not in columns for n in rule.expression.names):
                continue  # a metric this actuation did not measure
            if rule.matches(columns, 1)[0]:
                values = {n: columns[n] for n in sorted(rule.expression.names)}
                fired.append(
                    Failure(rule.id, rule.severity, f"{rule.action}: {rule.message}", values)
                )
        return fired
