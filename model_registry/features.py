"""The model inputs shared by training, the champion and transfer: ``feature_frame``.

One row per config: ``knob.<name>`` columns for every knob of the spec (sorted), then
``workload.<feature>`` columns (sorted). Numbers are floats, bools 0/1, categories their spec
value as text; a knob a row lacks gets its default. Training fits on it (``tasks/train.py``),
the champion predicts on it (``model_registry/registry.py``), transfer ranks candidates with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from targets.spec import Knob, KnobSpec

__all__ = ["categorical_columns", "feature_frame", "workload_columns"]


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _category(value: Any, knob: Knob) -> Any:
    """The spec's own value for ``value`` (4096.0 read back from Parquet is the choice 4096)."""
    for same in (
        lambda c: c == value and type(c) is type(value),
        lambda c: c == value,
        lambda c: str(c) == str(value),
    ):
        for choice in knob.values:
            if same(choice):
                return choice
    return value


def _knob_column(values: Sequence[Any], knob: Knob) -> pd.Series:
    """One knob's values as model input: numbers as floats, bools as 0/1, categories as text;
    a missing value is the knob's default."""
    coerced = [knob.default if _missing(v) else knob.coerce(v) for v in values]
    if knob.type == "categorical":
        return pd.Series([str(_category(v, knob)) for v in coerced], dtype=object)
    if knob.type == "bool":
        return pd.Series([1.0 if v is True or v == 1 else 0.0 for v in coerced], dtype=float)
    numbers = pd.to_numeric(pd.Series(coerced, dtype=object), errors="coerce")
    return numbers.fillna(float(knob.default)).astype(float)


def feature_frame(
    configs: pd.DataFrame,
    spec: KnobSpec,
    workload: Mapping[str, float] | pd.DataFrame,
) -> pd.DataFrame:
    """Model inputs for ``configs``: ``knob.<name>`` for every knob of ``spec`` in sorted order
    (a knob ``configs`` lacks gets its default; bools as 0/1 floats, ints and floats as floats,
    categoricals as strings), then ``workload.<feature>`` sorted: one fingerprint broadcast to
    every row, or a frame of per-row features (``workload.*`` or plain columns, matched by
    position). ``configs`` may name its knobs ``knob.<name>`` or plainly ``<name>``."""
    n = len(configs)
    columns: dict[str, pd.Series] = {}
    for name in sorted(spec.names):
        knob = spec[name]
        for col in (f"knob.{name}", name):
            if col in configs.columns:
                values = list(configs[col])
                break
        else:
            values = [knob.default] * n
        columns[f"knob.{name}"] = _knob_column(values, knob)
    if isinstance(workload, pd.DataFrame):
        if len(workload) != n:
            raise ValueError(f"workload frame has {len(workload)} rows for {n} configs")
        feats = {
            c.removeprefix("workload."): pd.to_numeric(workload[c], errors="coerce")
            for c in workload.columns
        }
        for feat in sorted(feats):
            columns[f"workload.{feat}"] = pd.Series(
                feats[feat].to_numpy(dtype=float), dtype=float
            )
    else:
        for feat in sorted(workload):
            columns[f"workload.{feat}"] = pd.Series([float(workload[feat])] * n, dtype=float)
    frame = pd.DataFrame(columns)
    frame.index = configs.index
    return frame


def categorical_columns(spec: KnobSpec) -> list[str]:
    return sorted(f"knob.{k.name}" for k in spec if k.type == "categorical")


def workload_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """The numeric ``workload.*`` columns of trial-table rows that hold any value."""
    cols = sorted(c for c in rows.columns if c.startswith("workload."))
    numeric = rows[cols].apply(pd.to_numeric, errors="coerce") if cols else rows[cols]
    return numeric.loc[:, numeric.notna().any()] if cols else numeric
