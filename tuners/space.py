"""Search spaces: the knobs a job tunes, over which (expert) ranges, as Optuna distributions.

A job tunes all of a target's knobs over their spec ranges unless a search-space file narrows
them::

    knobs:                  # only these are tuned; the others stay at their defaults
      cache_size: {range: [-200000, -2000]}
      journal_mode: {values: [wal, delete]}
      synchronous: {}       # tuned over its whole spec domain
    fixed:                  # set on every trial, never tuned
      temp_store: memory

An override must lie inside the knob's hard limits: a range that reaches outside them is an
error, never a silent clamp. A space file is read bounded (``KNOBFLOW_MAX_SPACE_FILE_BYTES``,
64 KiB), an empty one is an error (``{}`` says "every knob"), and every error names the file,
line and column of the key at fault: ``space.yaml:3:13: knob 'threads': range [1, 128] is
outside the knob's limits [1, 64]; narrow it to fit inside``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from targets.common.errors import SpecError, check_fields, did_you_mean, fmt_value
from targets.common.files import SPACE_FILE, excerpt
from targets.common.yamlfiles import read_yaml
from targets.spec import Knob, KnobSpec, Scalar, parse_range

_OVERRIDE_FIELDS = ("range", "values", "log")


@dataclass(frozen=True)
class SearchSpace:
    """The knobs a job tunes (with their narrowed domains) and the knobs it pins."""

    spec: KnobSpec
    tuned: tuple[Knob, ...]
    fixed: dict[str, Scalar] = field(default_factory=dict)

    @classmethod
    def full(cls, spec: KnobSpec) -> SearchSpace:
        """Every knob of the spec over its whole domain."""
        return cls(spec=spec, tuned=tuple(spec.knobs))

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.tuned]

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the tuned knobs."""
        dists: dict[str, BaseDistribution] = {}
        for k in self.tuned:
            if k.type == "int":
                dists[k.name] = IntDistribution(int(k.low), int(k.high), log=k.log)
            elif k.type == "float":
                dists[k.name] = FloatDistribution(float(k.low), float(k.high), log=k.log)
            else:
                dists[k.name] = CategoricalDistribution(list(k.choices))
        return dists

    def config(self, params: Mapping[str, Any]) -> dict[str, Scalar]:
        """The full config of a trial: defaults, then the fixed knobs, then the tuned values."""
        return {**self.spec.defaults(), **self.fixed, **params}

    def default_params(self) -> dict[str, Scalar] | None:
        """The defaults of the tuned knobs, or None if a narrowed range excludes one of them."""
        params = {k.name: self.spec[k.name].default for k in self.tuned}
        if any(k.problem_with(params[k.name]) for k in self.tuned):
            return None
        return params

    def project(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Another job's config as params of this space (transfer): numeric values clipped into
        the ranges, categories kept only if the space allows them; None if it cannot be
        expressed."""
        params: dict[str, Any] = {}
        for knob in self.tuned:
            if config.get(knob.name) is None:
                return None
            value = _projected(knob, config[knob.name])
            if value is None or knob.problem_with(value):
                return None
            params[knob.name] = value
        return params

    def to_dict(self) -> dict[str, Any]:
        """The space as a search-space document (what a job records and ``--resume`` reloads)."""
        knobs: dict[str, Any] = {}
        for k in self.tuned:
            knobs[k.name] = (
                {"range": [k.low, k.high], "log": k.log}
                if k.is_numeric
                else {"values": list(k.choices)}
            )
        return {"knobs": knobs, "fixed": dict(self.fixed)}


def _narrow(knob: Knob, body: Any, at: Callable[..., str]) -> Knob:
    """Apply one override entry to a knob; anything outside the knob's limits is an error.
    ``at(field)`` is the prefix of a message about one of the entry's fields (``at()``: the
    entry's own), ``file:line:col: knob 'name'``."""
    if body is None:
        return knob
    if not isinstance(body, Mapping):
        raise SpecError(
            f"{at()}: must be a mapping such as {{range: [low, high]}} or {{values: [...]}}"
        )
    unknown = [key for key in body if key not in _OVERRIDE_FIELDS][:1]
    check_fields({k: None for k in unknown}, _OVERRIDE_FIELDS, at(*unknown), SpecError)
    if knob.is_numeric:
        return _narrow_range(knob, body, at)
    if "range" in body or "log" in body:
        bad = "range" if "range" in body else "log"
        raise SpecError(
            f"{at(bad)}: field '{bad}' does not apply to a {knob.type} knob; use 'values'"
        )
    if "values" not in body:
        return knob
    values = body["values"]
    if not isinstance(values, list) or not values:
        raise SpecError(f"{at('values')}: field 'values' must be a non-empty list")
    chosen: list[Scalar] = []
    for index, raw in enumerate(values):
        value = knob.coerce(raw)
        problem = knob.problem_with(value)
        if problem:
            raise SpecError(f"{at('values', index)}: field 'values': {problem}")
        if value not in chosen:
            chosen.append(value)
    if len(chosen) == 1 and len(knob.choices) > 1:
        raise SpecError(
            f"{at('values')}: only one value left to tune; move the knob to 'fixed' instead"
        )
    if knob.type == "bool":
        return knob
    return replace(knob, values=tuple(chosen))


def _narrow_range(knob: Knob, body: Mapping[str, Any], at: Callable[..., str]) -> Knob:
    """An int or float knob narrowed by ``range`` and ``log``."""
    if "values" in body:
        raise SpecError(f"{at('values')}: knob is {knob.type}: narrow it with 'range: [low, high]'")
    log = body.get("log", knob.log)
    if not isinstance(log, bool):
        raise SpecError(f"{at('log')}: field 'log' must be true or false, got {excerpt(log)}")
    assert knob.low is not None and knob.high is not None
    low, high = knob.low, knob.high
    if "range" in body:
        raw = body["range"]
        if knob.type == "float" and isinstance(raw, list):
            raw = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in raw]
        low, high = parse_range(raw, knob.type, at("range"))
        if low < knob.low or high > knob.high:
            raise SpecError(
                f"{at('range')}: range [{fmt_value(low)}, {fmt_value(high)}] is outside the "
                f"knob's limits {knob.domain_text()}; narrow it to fit inside"
            )
    if log and low <= 0:
        raise SpecError(
            f"{at('log' if 'log' in body else 'range')}: log scale needs a positive range, got "
            f"[{fmt_value(low)}, {fmt_value(high)}]; raise the lower bound above 0 or set "
            "'log: false'"
        )
    return replace(knob, low=low, high=high, log=log)


#: where a key of a search-space document is: ``file:line:col`` (or the name of an option)
Locate = Callable[..., str]


def parse_space(
    data: Any, spec: KnobSpec, source: str, at: Locate | None = None
) -> SearchSpace:
    """Validate a search-space document against ``spec``; ``at(*keys)`` says where a key is
    (``file:line:col``; without it every error names ``source``)."""
    where: Locate = at or (lambda *keys: source)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{where()}: a search space must be a mapping with 'knobs' and/or 'fixed'")
    unknown = [key for key in data if key not in ("knobs", "fixed")][:1]
    check_fields({k: None for k in unknown}, ("knobs", "fixed"), where(*unknown), SpecError,
                 "top-level field")
    knobs = data.get("knobs")
    fixed_raw = {} if data.get("fixed") is None else data["fixed"]
    if knobs is not None and (not isinstance(knobs, Mapping) or not knobs):
        raise SpecError(
            f"{where('knobs')}: field 'knobs' must be a non-empty mapping of knob to override"
        )
    if not isinstance(fixed_raw, Mapping):
        raise SpecError(f"{where('fixed')}: field 'fixed' must be a mapping of knob to value")
    fixed = _fixed(fixed_raw, spec, where)
    if knobs is None:
        tuned = tuple(k for k in spec.knobs if k.name not in fixed)
    else:
        tuned_list = []
        for name, body in knobs.items():
            here = where("knobs", name)
            knob = _lookup(spec, name, here)
            if knob.name in fixed:
                raise SpecError(
                    f"{here}: knob '{name}' is both tuned and fixed; keep it in one section"
                )
            tuned_list.append(_narrow(
                knob, body, lambda *field, n=name: f"{where('knobs', n, *field)}: knob '{n}'"))
        tuned = tuple(tuned_list)
    if not tuned:
        raise SpecError(f"{where('knobs' if knobs is not None else 'fixed')}: no knob left to "
                        "tune; list at least one under 'knobs'")
    return SearchSpace(spec=spec, tuned=tuned, fixed=fixed)


def _fixed(fixed_raw: Mapping[Any, Any], spec: KnobSpec, where: Locate) -> dict[str, Scalar]:
    """The pinned knobs of a search space, each value checked against its knob."""
    fixed: dict[str, Scalar] = {}
    for name, raw in fixed_raw.items():
        here = where("fixed", name)
        knob = _lookup(spec, name, here)
        value = knob.coerce(raw)
        problem = knob.problem_with(value)
        if problem:
            raise SpecError(f"{here}: fixed knob '{name}': {problem}")
        fixed[knob.name] = value
    return fixed


def _lookup(spec: KnobSpec, name: Any, source: str) -> Knob:
    if not isinstance(name, str) or name not in spec:
        raise SpecError(
            f"{source}: unknown knob {excerpt(str(name))} for target '{spec.target}'"
            f"{did_you_mean(str(name), spec.names)}"
        )
    return spec[name]


def load_space(path: str | os.PathLike[str], spec: KnobSpec) -> SearchSpace:
    """Load a search-space file (``--space FILE``, at most ``KNOBFLOW_MAX_SPACE_FILE_BYTES``)
    and validate it against ``spec``; every error names the file, line and column."""
    doc = read_yaml(path, SPACE_FILE, SpecError, empty=(
        "list the knobs to tune under 'knobs:', or leave out --space to tune every knob"))
    return parse_space(doc.data, spec, doc.source, doc.at)


def space_for_knobs(spec: KnobSpec, names: Sequence[str], source: str = "--knobs") -> SearchSpace:
    """Tune only ``names`` over their whole domains (the ``--knobs a,b`` shortcut)."""
    return parse_space({"knobs": {n: None for n in names}}, spec, source)


def _projected(knob: Knob, value: Any) -> Any:
    """``value`` as a value of ``knob``: a number clipped into its range (None if not a number)."""
    if knob.is_numeric:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if math.isnan(number):
            return None
        number = min(max(number, float(knob.low)), float(knob.high))
        return round(number) if knob.type == "int" else number
    if knob.type == "bool":
        return bool(value) if not isinstance(value, str) else value.lower() == "true"
    return value
