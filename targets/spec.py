"""Knob specs: the YAML description of a target's knobs, parsed into validated ``Knob`` objects.

A spec file looks like::

    target: sqlite
    knobs:
      cache_size:
        type: int            # int | float | bool | categorical
        range: [-2000000, -16]  # hard limits (int/float); what tuning may ever try
        default: -2000
        log: false           # sample on a log scale (needs a positive range)
        unit: KiB
        restart: false       # does a change need a restart of the system?
        description: Page cache size; negative values are KiB.
      journal_mode:
        type: categorical
        values: [delete, truncate, persist, memory, wal, "off"]
        default: delete

Every error names the file, the knob and the field, e.g.
``targets/specs/sqlite.yaml: knob 'cache_size': default 5000000 is outside range [-2000000, 0]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from targets.common.errors import ConfigError, SpecError, check_fields, did_you_mean, fmt_value
from targets.common.files import SPEC_FILE, display_path, excerpt
from targets.common.yamlfiles import load_yaml

KNOB_TYPES = ("int", "float", "bool", "categorical")
KNOB_FIELDS = ("type", "range", "values", "default", "log", "unit", "description", "restart")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
#: An integer range from at least 1 to at least this many times its low end (threads 1-64,
#: Redis's hz 1-500) is wide: such counts act by ratios even where the spec says linear. The
#: surrogate searches them in log space (``tuners.encoding``); range hints judge by ratio.
WIDE_RATIO = 32

Scalar = int | float | bool | str


def wide_range(low: float, high: float) -> bool:
    """Whether the integer range [``low``, ``high``] is wide (``WIDE_RATIO``)."""
    return low >= 1 and high >= WIDE_RATIO * low


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Knob:
    """One tunable knob: its type, hard limits or values, default, and how to sample it."""

    name: str
    type: str
    default: Scalar
    low: float | None = None
    high: float | None = None
    values: tuple[Scalar, ...] = ()
    log: bool = False
    unit: str = ""
    description: str = ""
    restart: bool = False

    @property
    def is_numeric(self) -> bool:
        return self.type in ("int", "float")

    @property
    def wide(self) -> bool:
        """A linear integer knob over a wide range (``wide_range``)."""
        return (self.type == "int" and not self.log and self.low is not None
                and self.high is not None and wide_range(self.low, self.high))

    @property
    def choices(self) -> tuple[Scalar, ...]:
        """The values of a bool or categorical knob."""
        return (False, True) if self.type == "bool" else self.values

    def position(self, value: Any, *, by_ratio: bool = False) -> float:
        """Where ``value`` lies in the knob's range, 0 at ``low`` and 1 at ``high``, on the log
        scale for log knobs, and for wide ones with ``by_ratio`` (outside the range: below 0 or
        above 1); 0 for other knobs."""
        if not self.is_numeric:
            return 0.0
        assert self.low is not None and self.high is not None
        low, high, v = float(self.low), float(self.high), float(value)
        if self.log or (by_ratio and self.wide):
            low, high, v = math.log(low), math.log(high), math.log(max(v, 1e-300))
        return (v - low) / (high - low) if high > low else 0.0

    def value_at(self, position: float) -> float:
        """The value at ``position`` (clipped to 0..1) of a numeric knob's range: the inverse
        of ``position``."""
        assert self.low is not None and self.high is not None
        low, high, p = float(self.low), float(self.high), min(1.0, max(0.0, position))
        if p in (0.0, 1.0):  # the bounds themselves, not exp(log(bound)) off by a rounding
            return high if p else low
        if self.log:
            return math.exp(math.log(low) + p * (math.log(high) - math.log(low)))
        return low + p * (high - low)

    def domain_text(self) -> str:
        """The knob's limits as shown in messages and tables: ``[low, high]`` or ``{a, b}``."""
        if self.is_numeric:
            return f"[{fmt_value(self.low)}, {fmt_value(self.high)}]"
        return "{" + ", ".join(fmt_value(v) for v in self.choices) + "}"

    def problem_with(self, value: Any) -> str | None:
        """Why ``value`` is not a valid value of this knob, or None when it is."""
        if self.type == "int":
            if not _is_int(value):
                return f"{excerpt(value)} is not an integer"
        elif self.type == "float":
            if not _is_number(value):
                return f"{excerpt(value)} is not a finite number"
        elif self.type == "bool":
            if not isinstance(value, bool):
                return f"{excerpt(value)} is not true or false"
            return None
        else:
            if not any(value == v and type(value) is type(v) for v in self.values):
                return f"{excerpt(value)} is not one of {self.domain_text()}"
            return None
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return f"{excerpt(value)} is outside range {self.domain_text()}"
        return None

    def coerce(self, value: Any) -> Scalar:
        """Turn a value read from text or JSON into this knob's Python type, when it is lossless."""
        if self.type == "float" and _is_int(value):
            return float(value)
        if self.type == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and self.type != "categorical":
            text = value.strip().lower()
            if self.type == "bool" and text in (
                "true",
                "false",
                "on",
                "off",
                "1",
                "0",
                "yes",
                "no",
            ):
                return text in ("true", "on", "1", "yes")
            try:
                return int(text) if self.type == "int" else float(text)
            except ValueError:
                return value
        if self.type == "categorical" and not any(value == v for v in self.values):
            for v in self.values:  # "4096" given for an int-valued categorical knob
                if str(v) == str(value):
                    return v
        return value


@dataclass(frozen=True)
class KnobSpec:
    """The knobs of one target, in file order, with the file they came from."""

    target: str
    knobs: tuple[Knob, ...]
    source: str = "<memory>"
    _by_name: dict[str, Knob] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {k.name: k for k in self.knobs})

    def __iter__(self) -> Iterator[Knob]:
        return iter(self.knobs)

    def __len__(self) -> int:
        return len(self.knobs)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Knob:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def defaults(self) -> dict[str, Scalar]:
        """The default config: every knob at its default."""
        return {k.name: k.default for k in self.knobs}

    def knob(self, name: str, where: str) -> Knob:
        """The knob called ``name``; an unknown name is a ConfigError naming ``where``."""
        if name not in self._by_name:
            raise ConfigError(
                f"{where}: unknown knob {excerpt(name)} for target '{self.target}'"
                f"{did_you_mean(name, self.names)}"
            )
        return self._by_name[name]

    def validate_config(self, config: Mapping[str, Any], where: str) -> dict[str, Scalar]:
        """Check a (partial) config against the spec; return it coerced to the knob types."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"{where}: a config must be a mapping of knob to value")
        clean: dict[str, Scalar] = {}
        for name, raw in config.items():
            knob = self.knob(str(name), where)
            value = knob.coerce(raw)
            problem = knob.problem_with(value)
            if problem:
                raise ConfigError(f"{where}: knob '{name}': {problem}")
            clean[knob.name] = value
        return clean

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Scalar]:
        """Defaults overlaid with ``config`` (assumed valid)."""
        return {**self.defaults(), **config}

    def fingerprint(self) -> str:
        """A short hash of the spec's content, stable across file moves (for provenance)."""
        payload = json.dumps(
            [[k.name, k.type, k.low, k.high, list(k.values), k.default, k.log] for k in self.knobs],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _parse_knob(name: Any, body: Any, where: str) -> Knob:
    """Validate one knob entry of a spec file."""
    at, common = _knob_fields(name, body, where)
    knob = _typed_knob(str(common["type"]), body, at, common)
    if knob.log and not knob.is_numeric:
        raise SpecError(f"{at}: field 'log' applies to int/float knobs only; remove it")
    if knob.type == "float" and _is_int(knob.default):
        knob = Knob(**{**knob.__dict__, "default": float(knob.default)})
    problem = knob.problem_with(knob.default)
    if problem:
        raise SpecError(f"{at}: default {problem}")
    return knob


def _knob_fields(name: Any, body: Any, where: str) -> tuple[str, dict[str, Any]]:
    """Where a knob's errors point (``at``) and the fields every knob type has, checked."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(
            f"{where}: knob name {excerpt(name)} must start with a letter or '_' and hold "
            "only letters, digits, '_' and '.'"
        )
    at = f"{where}: knob '{name}'"
    if not isinstance(body, Mapping):
        raise SpecError(f"{at}: must be a mapping with at least 'type' and 'default'")
    check_fields(body, KNOB_FIELDS, at, SpecError)
    ktype = body.get("type")
    if ktype not in KNOB_TYPES:
        got = "missing" if ktype is None else f"{excerpt(ktype)}"
        raise SpecError(f"{at}: field 'type' is {got}; use one of {', '.join(KNOB_TYPES)}")
    if "default" not in body:
        raise SpecError(
            f"{at}: field 'default' is missing; add the value the system uses by default"
        )
    for flag in ("log", "restart"):
        if flag in body and not isinstance(body[flag], bool):
            raise SpecError(
                f"{at}: field '{flag}' must be true or false, got {excerpt(body[flag])}"
            )
    for text in ("unit", "description"):
        if text in body and not isinstance(body[text], str):
            raise SpecError(f"{at}: field '{text}' must be a string, got {excerpt(body[text])}")
    common = {
        "name": name,
        "type": ktype,
        "default": body["default"],
        "log": bool(body.get("log", False)),
        "unit": body.get("unit", ""),
        "description": " ".join(str(body.get("description", "")).split()),
        "restart": bool(body.get("restart", False)),
    }
    return at, common


def _typed_knob(ktype: str, body: Mapping[str, Any], at: str, common: dict[str, Any]) -> Knob:
    """The knob of its type: a range for int and float, none for bool, values otherwise."""
    if ktype in ("int", "float"):
        if "values" in body:
            raise SpecError(
                f"{at}: field 'values' is for categorical knobs; use 'range: [low, high]'"
            )
        low, high = parse_range(body.get("range"), ktype, at)
        knob = Knob(low=low, high=high, **common)
        if knob.log and low <= 0:
            raise SpecError(
                f"{at}: log scale needs a positive range, got {knob.domain_text()}; "
                "raise the lower bound above 0 or set 'log: false'"
            )
    elif ktype == "bool":
        for bad in ("range", "values"):
            if bad in body:
                raise SpecError(f"{at}: field '{bad}' does not apply to a bool knob; remove it")
        knob = Knob(**common)
    else:
        if "range" in body:
            raise SpecError(f"{at}: field 'range' is for int/float knobs; use 'values: [...]'")
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{at}: field 'values' must be a non-empty list of the allowed values")
        for v in values:
            if not isinstance(v, (str, int, float, bool)):
                raise SpecError(f"{at}: field 'values': {excerpt(v)} is not a scalar")
        # Optuna matches choices by ==: 1 and true, or 2 and 2.0, would be one choice to it
        if any(a == b for i, a in enumerate(values) for b in values[i + 1 :]):
            raise SpecError(f"{at}: field 'values' lists a value twice; list each once")
        knob = Knob(values=tuple(values), **common)
    return knob


def parse_range(raw: Any, ktype: str, at: str) -> tuple[float, float]:
    """Validate a ``range: [low, high]`` field of an int or float knob."""
    if raw is None:
        raise SpecError(f"{at}: field 'range' is missing; add 'range: [low, high]'")
    if not isinstance(raw, list) or len(raw) != 2:
        raise SpecError(f"{at}: field 'range' must be a list [low, high], got {excerpt(raw)}")
    low, high = raw
    check = _is_int if ktype == "int" else _is_number
    for bound in (low, high):
        if not check(bound):
            kind = "integers" if ktype == "int" else "finite numbers"
            raise SpecError(f"{at}: field 'range' must hold two {kind}, got {excerpt(bound)}")
    if low >= high:
        raise SpecError(
            f"{at}: field 'range' [{fmt_value(low)}, {fmt_value(high)}] is empty or reversed; "
            "write it as [low, high] with low < high"
        )
    if ktype == "float":
        return float(low), float(high)
    return low, high


def parse_spec(data: Any, source: str) -> KnobSpec:
    """Validate the parsed YAML of a knob spec file."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: a knob spec must be a mapping with 'target' and 'knobs'")
    check_fields(data, ("target", "knobs"), source, SpecError, "top-level field")
    target = data.get("target")
    if not isinstance(target, str) or not target:
        raise SpecError(
            f"{source}: field 'target' is {'missing' if target is None else excerpt(target)}; "
            "name the target, e.g. 'target: sqlite'"
        )
    knobs = data.get("knobs")
    if not isinstance(knobs, Mapping) or not knobs:
        raise SpecError(
            f"{source}: field 'knobs' must be a non-empty mapping of knob name to fields"
        )
    return KnobSpec(
        target=target,
        knobs=tuple(_parse_knob(name, body, source) for name, body in knobs.items()),
        source=source,
    )


def load_spec(path: str | os.PathLike[str]) -> KnobSpec:
    """Load and validate a knob spec file (at most ``KNOBFLOW_MAX_SPEC_FILE_BYTES``, 1 MiB)."""
    return parse_spec(load_yaml(path, SpecError, SPEC_FILE), display_path(path))
