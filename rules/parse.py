"""Reading rule files: YAML text to checked, compiled rules, every mistake located.

Every error names the file, line, column and rule and says what to do (``file:line:col: rule
'id': ...``); a learned rule read from a mapping is checked the same way (``rule_from_dict``).
A file is bounded before it is read: at most ``KNOBFLOW_MAX_RULE_FILE_BYTES`` bytes (1 MiB unless
set) and ``KNOBFLOW_MAX_RULES`` rules (1,000 unless set).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rules.language import RuleError, compile_expression
from rules.rule import ACTIONS, FIELDS, KINDS, SEVERITIES, Rule, config_symbols, trigger_symbols
from targets.base import Target
from targets.common.errors import did_you_mean, fmt_value
from targets.common.files import display_path, env_limit
from targets.common.yamlfiles import parse_document
from targets.spec import KnobSpec

__all__ = ["MAX_RULES", "MAX_RULE_FILE_BYTES", "load_rule_file", "parse_rules", "rule_from_dict"]

#: the bounds of one rule file, and the environment variables that raise them
MAX_RULES, MAX_RULE_FILE_BYTES = 1000, 1 << 20
RULES_VARIABLE, BYTES_VARIABLE = "KNOBFLOW_MAX_RULES", "KNOBFLOW_MAX_RULE_FILE_BYTES"


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
    data, root = parse_document(text, source, RuleError)
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
    _check_rule_count(data["rules"], rules_node, source)
    symbols, choices = config_symbols(spec, workload)
    triggers = trigger_symbols(target_cls) if target_cls is not None else None  # once a file
    seen: dict[str, str] = {}
    rules = []
    for index, (body, node) in enumerate(zip(data["rules"], rules_node.value, strict=True)):
        at = f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
        rule = _parse_rule(body, node, at, source, index, (symbols, choices), triggers)
        if rule.id in seen:
            raise RuleError(
                f"{at}: rule '{rule.id}': the id is used twice (first at {seen[rule.id]}); "
                "give each rule its own id"
            )
        seen[rule.id] = at.removeprefix(f"{source}:")
        rules.append(rule)
    return rules


def _check_rule_count(bodies: list[Any], nodes: yaml.SequenceNode, source: str) -> None:
    """At most MAX_RULES rules (or ``$KNOBFLOW_MAX_RULES``) in one file; the first one past the
    limit is named."""
    limit = _limit(RULES_VARIABLE, MAX_RULES)
    if len(bodies) <= limit:
        return
    node, body = nodes.value[limit], bodies[limit]
    rule_id = body.get("id") if isinstance(body, Mapping) else None
    named = f" rule '{rule_id}':" if isinstance(rule_id, str) else ""
    raise RuleError(
        f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}:{named} the file holds "
        f"{len(bodies)} rules, more than the {limit} a rule file may hold; split it into "
        f"several files, or raise the limit with the environment variable {RULES_VARIABLE}"
    )


def _limit(variable: str, default: int) -> int:
    return env_limit(variable, default, RuleError)


def _parse_rule(
    body: Any,
    node: yaml.Node | None,
    at: str,
    source: str,
    index: int,
    names: tuple[Mapping[str, str], Mapping[str, tuple[Any, ...]]],
    triggers: Mapping[str, str] | None,
) -> Rule:
    """One rule; ``names`` are the config rules' (symbols, categorical values), ``triggers`` the
    trigger rules' symbols (None: the target is not known)."""
    symbols, choices = names
    if not isinstance(body, Mapping):
        raise RuleError(f"{at}: rule {index + 1} must be a mapping with id, kind and expr/when")
    rule_id = body.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise RuleError(
            f"{at}: rule {index + 1}: field 'id' is missing; give it a name, e.g. "
            "'id: cache-fits-memory'"
        )
    here = f"{at}: rule '{rule_id}'"
    kind, text_field, severity, action = _rule_fields(body, here)
    value_node = (
        next((v for k, v in node.value if k.value == text_field), None)
        if node is not None
        else None
    )
    if kind == "trigger":
        if triggers is None:
            raise RuleError(
                f"{here}: triggers need the target's metrics; check the file with its target"
            )
        symbols, choices = triggers, {}
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


def _rule_fields(body: Mapping[str, Any], here: str) -> tuple[str, str, str, str | None]:
    """A rule's kind, the field holding its text (``expr`` or ``when``), severity and action,
    each checked."""
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
    return kind, text_field, severity, action


def rule_from_dict(
    body: Mapping[str, Any], source: str, spec: KnobSpec, target_cls: type[Target] | None = None
) -> Rule:
    """A rule from a mapping (e.g. a learned rule), checked like one read from a file."""
    triggers = trigger_symbols(target_cls) if target_cls is not None else None
    return _parse_rule(body, None, source, source, 0, config_symbols(spec), triggers)


def load_rule_file(
    path: str | os.PathLike[str],
    spec: KnobSpec,
    target_cls: type[Target] | None = None,
    workload: Mapping[str, Any] | None = None,
) -> list[Rule]:
    """The checked rules of the file at ``path``; the file's size is checked before it is read."""
    shown = display_path(path)
    limit = _limit(BYTES_VARIABLE, MAX_RULE_FILE_BYTES)
    try:
        status = Path(path).stat()
        if stat.S_ISFIFO(status.st_mode) or stat.S_ISSOCK(status.st_mode):
            raise RuleError(f"{shown}: cannot read: it is a pipe or a socket, not a file; save "
                            "the rules as a regular file and name that")
        size = status.st_size
        if size > limit:
            raise _too_big(shown, size, limit)
        with open(path, encoding="utf-8") as fh:  # text mode: \r\n is read as \n
            text = fh.read(limit + 1)  # no more, whatever stat said (/dev/zero, a growing file)
    except FileNotFoundError:
        raise RuleError(f"{shown}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{shown}: cannot read: {exc}") from None
    if len(text) > limit:
        raise _too_big(shown, None, limit)
    if workload is None and target_cls is not None:
        workload = dict(target_cls.workload_defaults)
    return parse_rules(text, shown, spec, target_cls, workload)


def _too_big(shown: str, size: int | None, limit: int) -> RuleError:
    """The file is over the byte limit (``size`` from stat, None if only reading showed it)."""
    over = f"{size} bytes, more than" if size is not None else "more than"
    return RuleError(
        f"{shown}: the file is {over} the {limit} bytes a rule file may hold; split it into "
        f"several files, or raise the limit with the environment variable {BYTES_VARIABLE}"
    )
