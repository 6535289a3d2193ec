"""Points entered by people: an expert's CSV of configs and measurements, checked like any trial.

Each row of the CSV is a config (columns named like the target's knobs; a knob left out is at
its default) and what was measured with it (columns named like the target's metrics), optionally
the ``instance`` and ``workload.<feature>`` columns. A row whose config does not fit the knob
spec, whose metrics are not numbers, or that fails the target's measurement gate is rejected
with its reasons; the others are kept with ``source = expert``. Expert rows never reach model
training unless it is asked for (``--use-expert-data``): hand-picked points bias models.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from targets.base import Target
from targets.common.errors import ConfigError, KnobflowError, did_you_mean
from targets.common.files import display_path
from tasks.gate import validate_rows
from tuners.trials import as_table, trial_row


@dataclass
class ImportResult:
    """Rows kept (as trial-table rows) and rows rejected (CSV line number, reasons)."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, list[str]]] = field(default_factory=list)


def read_expert_csv(path: str | os.PathLike[str], target_cls: type[Target]) -> pd.DataFrame:
    """Read the CSV as text; an unknown column is an error for the whole file (exit 2)."""
    shown = display_path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise KnobflowError(f"{shown}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise KnobflowError(f"{shown}: not a readable CSV: {exc}") from None
    spec = target_cls.knob_spec()
    known = [*spec.names, *target_cls.metrics, "instance"]
    for column in frame.columns:
        if column not in known and not column.startswith("workload."):
            raise KnobflowError(
                f"{shown}: unknown column '{column}'{did_you_mean(column, known)}; columns are "
                f"the knobs and metrics of target '{target_cls.name}', 'instance' and "
                "'workload.<feature>'"
            )
    if not any(m in frame.columns for m in target_cls.metrics):
        raise KnobflowError(
            f"{shown}: no metric column; add at least one of {', '.join(target_cls.metrics)}"
        )
    return frame


def check_rows(path: str | os.PathLike[str], target_cls: type[Target]) -> ImportResult:
    """Check every row of an expert CSV; what may be kept, and why the rest may not."""
    frame = read_expert_csv(path, target_cls)
    spec = target_cls.knob_spec()
    objective = target_cls.default_objective
    name = Path(path).name
    result = ImportResult()
    # (CSV line, raw row, config, measured metrics, reasons so far)
    candidates: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any], list[str]]] = []
    for i, raw in enumerate(frame.to_dict(orient="records")):
        line = i + 2  # the header is line 1
        reasons: list[str] = []
        knobs = {k: v for k, v in raw.items() if k in spec and v != ""}
        try:
            config = spec.full_config(spec.validate_config(knobs, f"line {line}"))
        except ConfigError as exc:
            reasons.append(str(exc).removeprefix(f"line {line}: "))
            config = {}
        measured: dict[str, Any] = {}
        for metric in target_cls.metrics:
            text = raw.get(metric, "")
            if text == "":
                measured[f"metric.{metric}"] = math.nan
                continue
            try:
                measured[f"metric.{metric}"] = float(text)
            except ValueError:
                reasons.append(f"metric.{metric}: must be a number (got {text!r})")
                measured[f"metric.{metric}"] = math.nan
        candidates.append((line, raw, config, measured, reasons))
    rows = pd.DataFrame([c[3] for c in candidates])
    gate = validate_rows(target_cls, rows) if not rows.empty else None
    for index, (line, raw, config, measured, reasons) in enumerate(candidates):
        said = {r.split(":")[0] for r in reasons}  # a column already explained is not repeated
        reasons = reasons + [
            r for r in (gate.reasons[index] if gate else []) if r.split(":")[0] not in said
        ]
        value = measured.get(f"metric.{objective}")
        if (value is None or math.isnan(value)) and not any(
            r.startswith(f"metric.{objective}:") for r in reasons
        ):
            reasons.append(f"metric.{objective}: the objective was not measured")
        if reasons:
            result.rejected.append((line, reasons))
            continue
        record = {
            "status": "ok", "value": value, "config": config, "instance": raw.get("instance", ""),
            "workload_features": {
                k.removeprefix("workload."): float(v) for k, v in raw.items()
                if k.startswith("workload.") and v != ""
            },
            "row": measured,
        }
        result.kept.append(trial_row(
            record, service=target_cls.name, target=target_cls.name, study=f"expert:{name}",
            trial=f"line-{line}", objective=objective,
            direction=target_cls.metrics[objective], source="expert",
        ))
    return result


def merge_expert_rows(existing: pd.DataFrame, kept: list[dict[str, Any]], study: str
                      ) -> pd.DataFrame:
    """The expert table with this file's rows replaced by ``kept`` (re-importing is idempotent)."""
    others = existing[existing["study"] != study] if not existing.empty else existing
    return as_table([*others.to_dict(orient="records"), *kept])
