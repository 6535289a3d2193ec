"""Points entered by people: an expert's CSV of configs and measurements, checked like any trial.

Each row of the CSV is a config (columns named like the target's knobs; a knob left out is at
its default) and what was measured with it (columns named like the target's metrics), optionally
the ``instance`` and ``workload.<feature>`` columns (the target's workload features). A row whose
config does not fit the knob spec, whose metrics or workload values are not numbers (or are
outside the target's workload limits), whose instance is not a name ``--instance`` takes, that
repeats an earlier row exactly, or that fails the target's measurement gate is rejected with its
reasons; the others are kept with ``source = expert``. Expert rows never reach model training
unless it is asked for (``--use-expert-data``): hand-picked points bias models.

A file that cannot be read as the target's CSV is an error for the whole file (exit 2): over
``KNOBFLOW_MAX_IMPORT_FILE_BYTES`` (4 MiB) or ``KNOBFLOW_MAX_IMPORT_ROWS`` rows (20,000), not a
regular file, a header naming a column twice or one the target does not have, another delimiter
than the comma, a row with more or fewer fields than the header, no rows at all.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from targets.base import Target
from targets.common.errors import ConfigError, KnobflowError, did_you_mean, fmt_value
from targets.common.files import IMPORT_FILE, display_path, env_limit, excerpt, read_user_file
from tasks.gate import validate_rows
from tuners.trials import as_table, trial_row

__all__ = ["MAX_IMPORT_ROWS", "ROWS_VARIABLE", "ImportResult", "check_rows", "merge_expert_rows",
           "read_expert_csv"]

#: rows one CSV may hold, and the environment variable that raises the limit
MAX_IMPORT_ROWS, ROWS_VARIABLE = 20_000, "KNOBFLOW_MAX_IMPORT_ROWS"
#: an instance name, as a job's ``--instance`` takes it (``flows.spec``): no path separators,
#: no spreadsheet formula (``=``, ``+``, ``-``, ``@`` first)
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INSTANCE_MUST = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_DELIMITERS = (";", "\t", "|")


@dataclass
class ImportResult:
    """Rows kept (as trial-table rows) and rows rejected (CSV line number, reasons)."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, list[str]]] = field(default_factory=list)


@dataclass
class _Row:
    """One CSV row being checked: its line, text, config, metrics, workload features, reasons."""

    line: int
    raw: dict[str, str]
    config: dict[str, Any]
    measured: dict[str, float]
    features: dict[str, float]
    reasons: list[str]


def read_expert_csv(path: str | os.PathLike[str], target_cls: type[Target]) -> pd.DataFrame:
    """The CSV's rows as text, indexed by their line in the file; anything that keeps the file
    from being read as the target's CSV is an error for the whole file (exit 2)."""
    shown = display_path(path)
    text = read_user_file(path, IMPORT_FILE, KnobflowError, encoding="utf-8-sig")  # Excel's BOM
    header, rows = _records(text, shown)
    _check_header(header, shown, target_cls)
    if not rows:
        raise KnobflowError(
            f"{shown}: no rows under the header; add one row per measured config (its knobs and "
            "metrics)"
        )
    limit = env_limit(ROWS_VARIABLE, MAX_IMPORT_ROWS)
    if len(rows) > limit:
        raise KnobflowError(
            f"{shown}:{rows[limit][0]}: the file holds {len(rows)} rows, more than the {limit} "
            "an import may hold; split it into several files, or raise the limit with the "
            f"environment variable {ROWS_VARIABLE}"
        )
    return pd.DataFrame([fields for _, fields in rows], columns=header,
                        index=[line for line, _ in rows], dtype=str)


def _records(text: str, shown: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the rows (with their line) of a CSV; a row with another number of fields
    than the header is an error naming its line (pandas shifted its columns)."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if not fields:  # a blank line
                continue
            if header is None:
                header = fields
            elif len(fields) != len(header):
                raise _field_count(shown, reader.line_num, len(fields), len(header))
            else:
                rows.append((reader.line_num, fields))
    except csv.Error as exc:
        raise KnobflowError(f"{shown}:{reader.line_num}: not a readable CSV: {exc}") from None
    if header is None:
        raise KnobflowError(
            f"{shown}: the file is empty; its first line names the columns (knobs, metrics, "
            "'instance', 'workload.<feature>'), then one row per measured config"
        )
    return header, rows


def _field_count(shown: str, line: int, fields: int, columns: int) -> KnobflowError:
    fix = ("quote a value that holds a comma (\"a,b\"), or remove the extra field"
           if fields > columns else
           "give every column a field (an empty field, two commas, leaves a knob at its default)")
    return KnobflowError(
        f"{shown}:{line}: the row has {fields} fields, but the header names {columns} columns; "
        f"{fix}"
    )


def _check_header(header: list[str], shown: str, target_cls: type[Target]) -> None:
    """Every column named once, each a knob, a metric, 'instance' or a workload feature."""
    if len(header) == 1:
        delimiter = next((d for d in _DELIMITERS if d in header[0]), None)
        if delimiter is not None:
            raise KnobflowError(
                f"{shown}: the header is one column, {excerpt(header[0])}: its columns are "
                f"separated by {delimiter!r}; separate them with commas (save the file as "
                "comma-separated values)"
            )
    seen: dict[str, int] = {}
    for number, column in enumerate(header, 1):
        if not column.strip():
            raise KnobflowError(
                f"{shown}: column {number} of the header has no name; name it, or remove the "
                "comma before it"
            )
        if column in seen:
            raise KnobflowError(
                f"{shown}: column {excerpt(column)} is named twice in the header (columns "
                f"{seen[column]} and {number}); keep one of them"
            )
        seen[column] = number
    known = [*target_cls.knob_spec().names, *target_cls.metrics, "instance"]
    workload = [f"workload.{name}" for name in _features(target_cls)]
    for column in header:
        if column.startswith("workload.") and column not in workload:
            raise KnobflowError(
                f"{shown}: unknown column {excerpt(column)}{did_you_mean(column, workload)}; the "
                f"workload features of target '{target_cls.name}' are {', '.join(workload)}"
            )
        if column not in known and column not in workload:
            raise KnobflowError(
                f"{shown}: unknown column {excerpt(column)}{did_you_mean(column, known)}; "
                f"columns are the knobs and metrics of target '{target_cls.name}', 'instance' "
                "and 'workload.<feature>'"
            )
    if not any(m in header for m in target_cls.metrics):
        raise KnobflowError(
            f"{shown}: no metric column; add at least one of {', '.join(target_cls.metrics)}"
        )


def _features(target_cls: type[Target]) -> list[str]:
    """The target's workload features (what a ``workload.<feature>`` column may name)."""
    return list(target_cls.workload_features(dict(target_cls.workload_defaults)))


def check_rows(path: str | os.PathLike[str], target_cls: type[Target]) -> ImportResult:
    """Check every row of an expert CSV; what may be kept, and why the rest may not."""
    frame = read_expert_csv(path, target_cls)
    result = ImportResult()
    rows: list[_Row] = []
    first: dict[tuple[str, ...], int] = {}
    for line, raw in zip(frame.index, frame.to_dict(orient="records"), strict=True):
        original = first.setdefault(tuple(raw.values()), int(line))
        if original != line:
            result.rejected.append((int(line), [
                f"an exact copy of line {original}; a measurement counts once: remove the copy"
            ]))
            continue
        rows.append(_checked_row(int(line), raw, target_cls))
    _gate(rows, target_cls, Path(path).name, result)
    result.rejected.sort(key=lambda item: item[0])
    return result


def _checked_row(line: int, raw: dict[str, str], target_cls: type[Target]) -> _Row:
    """A row's config, metrics, workload features and instance, each checked."""
    spec = target_cls.knob_spec()
    reasons: list[str] = []
    knobs = {k: v for k, v in raw.items() if k in spec and v != ""}
    try:
        config = spec.full_config(spec.validate_config(knobs, f"line {line}"))
    except ConfigError as exc:
        reasons.append(str(exc).removeprefix(f"line {line}: "))
        config = {}
    measured: dict[str, float] = {}
    for metric in target_cls.metrics:
        text = raw.get(metric, "")
        measured[f"metric.{metric}"] = math.nan
        if text != "":
            try:
                measured[f"metric.{metric}"] = float(text)
            except ValueError:
                reasons.append(f"metric.{metric}: must be a number (got {excerpt(text)})")
    features = _workload(raw, target_cls, reasons)
    instance = raw.get("instance", "")
    if instance and not _INSTANCE.match(instance):
        reasons.append(f"instance: {excerpt(instance)} is not an instance name; use "
                       f"{_INSTANCE_MUST}")
    return _Row(line, raw, config, measured, features, reasons)


def _workload(raw: dict[str, str], target_cls: type[Target], reasons: list[str]
              ) -> dict[str, float]:
    """A row's workload features: finite numbers within the target's workload limits, whole
    numbers where the parameter is an integer; what is wrong goes to ``reasons``."""
    features: dict[str, float] = {}
    for column, text in raw.items():
        if not column.startswith("workload.") or text == "":
            continue
        name = column.removeprefix("workload.")
        try:
            value = float(text)
        except ValueError:
            reasons.append(f"{column}: must be a number (got {excerpt(text)})")
            continue
        default = target_cls.workload_defaults.get(name)
        low, high = target_cls.workload_limits.get(name, (-math.inf, math.inf))
        if not math.isfinite(value):
            reasons.append(f"{column}: must be a finite number (got {excerpt(text)})")
        elif isinstance(default, int) and not isinstance(default, bool) and (
            not value.is_integer()
        ):
            reasons.append(f"{column}: must be a whole number (got {excerpt(text)})")
        elif not low <= value <= high:
            reasons.append(f"{column}: {fmt_value(value)} is outside [{fmt_value(low)}, "
                           f"{fmt_value(high)}], the workload limits of target "
                           f"'{target_cls.name}'")
        else:
            features[name] = value
    return features


def _gate(rows: list[_Row], target_cls: type[Target], name: str, result: ImportResult) -> None:
    """The measurement gate over the rows that are left; the rows that pass every check are
    kept as trial-table rows."""
    objective = target_cls.default_objective
    frame = pd.DataFrame([row.measured for row in rows])
    gate = validate_rows(target_cls, frame) if not frame.empty else None
    for index, row in enumerate(rows):
        said = {r.split(":")[0] for r in row.reasons}  # a column already explained: once
        reasons = row.reasons + [
            r for r in (gate.reasons[index] if gate else []) if r.split(":")[0] not in said
        ]
        value = row.measured.get(f"metric.{objective}")
        if (value is None or math.isnan(value)) and not any(
            r.startswith(f"metric.{objective}:") for r in reasons
        ):
            reasons.append(f"metric.{objective}: the objective was not measured")
        if reasons:
            result.rejected.append((row.line, reasons))
            continue
        record = {
            "status": "ok", "value": value, "config": row.config,
            "instance": row.raw.get("instance", ""), "workload_features": row.features,
            "row": row.measured,
        }
        result.kept.append(trial_row(
            record, service=target_cls.name, target=target_cls.name, study=f"expert:{name}",
            trial=f"line-{row.line}", objective=objective,
            direction=target_cls.metrics[objective], source="expert",
        ))


def merge_expert_rows(existing: pd.DataFrame, kept: list[dict[str, Any]], study: str
                      ) -> pd.DataFrame:
    """The expert table with this file's rows replaced by ``kept`` (re-importing is idempotent)."""
    others = existing[existing["study"] != study] if not existing.empty else existing
    return as_table([*others.to_dict(orient="records"), *kept])
