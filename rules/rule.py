"""One rule, and what checking a config against rules says: ``Rule``, ``Failure``, ``Verdict``;
the names a rule's expression may use (``config_symbols``, ``trigger_symbols``, ``machine_facts``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from rules.language import BOOL, NUMBER, STRING, Expression
from targets.base import Target
from targets.common.errors import fmt_value
from targets.spec import KnobSpec

__all__ = [
    "ACTIONS", "FIELDS", "KINDS", "SEVERITIES", "Failure", "Rule", "Verdict", "config_symbols",
    "machine_facts", "trigger_symbols",
]

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
