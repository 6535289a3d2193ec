"""The Great Expectations gate: which measurements may be learned from, and why not.

Each target has an expectation suite kept as a file (GE's own JSON: ``{"name", "expectations":
[{"type", "kwargs", "meta": {"why": ...}}]}``, see ``Target.expectations_path``) that the
measurement rows of its trials must pass: one row per trial from the tuner, many rows at once for
an expert's import. A failed expectation becomes a reason that names the column, what must hold
(the expectation's ``meta.why``) and the value found.

Great Expectations costs seconds to import: it is imported on the first validation, once per
process, and one suite and batch definition per suite file is reused for every trial. Rows that
pass are validated once with GE's verdict only; rows that fail, again in full, for their reasons.

During a validation, each expectation's ``configuration`` is made once and remembered
(``_remember_configurations``): GE rebuilds it from the expectation's fields every time it is
read, ~85 times per expectation in one run: a one-row validation took 42 ms, now 26 ms. Only
the thread inside ``_run`` remembers, and only until its run ends.

The graph of metrics each expectation needs is built once per suite and result format and kept
for the process (``_remember_graphs``): GE builds it anew for every batch, 42 % of a one-row
validation, though it depends on the suite, the batch's name and the result format only (the
batch's rows are read when the graph is resolved, not when it is built).

The gate's batches are not fingerprinted (``_skip_fingerprints``): GE hashes every cell of a
pandas batch for a marker that nothing reads, ~11 ms of a one-row validation's ~40 ms of CPU;
the row itself is kept with its trial.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from targets.base import Target
from targets.common.errors import KnobflowError
from targets.common.files import display_path

DEFAULT_SUITE = Path(__file__).resolve().parent / "expectations" / "default.json"

_lock = threading.Lock()
_context: Any = None
_validations: dict[Path, Any] = {}
#: per thread, inside ``_run``: the configurations made in the run (``memo``), the id of the
#: validation whose suite it runs (``graphs``; not None also tells ``_skip_fingerprints`` that
#: the batch is the gate's)
_made = threading.local()
#: each suite's metric graphs, per result format, batch and engine (``_remember_graphs``)
_graphs: dict[tuple[Any, ...], tuple[list[Any], list[Any]]] = {}


class SuiteError(KnobflowError):
    """An expectation suite file is missing or invalid."""


@dataclass
class GateResult:
    """Reasons each row failed (an empty list: the row passed), and GE's result as a dict."""

    reasons: list[list[str]]
    details: dict[str, Any]


def suite_path(target_cls: type[Target]) -> Path:
    path = target_cls.expectations_path()
    return path if path.exists() else DEFAULT_SUITE


def load_suite_document(path: Path) -> dict[str, Any]:
    """Read and check a suite file (GE's JSON); errors name the file and what to fix."""
    shown = display_path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{shown}: expectation suite not found") from None
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{shown}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("expectations"), list):
        raise SuiteError(f"{shown}: a suite must be an object with 'name' and 'expectations'")
    for i, exp in enumerate(doc["expectations"]):
        if not isinstance(exp, dict) or "type" not in exp or "kwargs" not in exp:
            raise SuiteError(f"{shown}: expectation {i} needs 'type' and 'kwargs'")
        if not exp.get("meta", {}).get("why"):
            raise SuiteError(
                f"{shown}: expectation {i} ({exp['type']}) needs meta.why: the reason a failed "
                "trial is given"
            )
    return doc


def import_now() -> None:
    """Import Great Expectations now rather than on the first validation (the command does
    it while Prefect's temporary server starts: the two then overlap)."""
    import great_expectations  # noqa: F401


def _validation(path: Path) -> Any:
    """The (cached) GE validation definition of the suite at ``path``."""
    global _context
    if path in _validations:
        return _validations[path]
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if _context is None:
        # "Created temporary directory ... for ephemeral docs site": noise to an operator
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        _context = gx.get_context(mode="ephemeral")
        _context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        _context.data_sources.add_pandas("knobflow")
        _remember_configurations()
        _remember_graphs()
        _skip_fingerprints()
    doc = load_suite_document(path)
    name = f"{doc.get('name', path.stem)}-{len(_validations)}"
    try:
        suite = gx.ExpectationSuite(name=name, expectations=doc["expectations"])
        suite = _context.suites.add(suite)
    except Exception as exc:  # an unknown expectation type or bad kwargs
        raise SuiteError(f"{display_path(path)}: {type(exc).__name__}: {exc}") from None
    asset = _context.data_sources.get("knobflow").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name)
    validation = _context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    _validations[path] = validation
    return validation


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:  # a column pair
        return f"{_shown(value[0])} vs {_shown(value[1])}"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return json.dumps(value, default=str) if not isinstance(value, str) else repr(value)


def validate_rows(target_cls: type[Target], rows: pd.DataFrame) -> GateResult:
    """Validate measurement rows against the target's suite; per row, why it failed."""
    path = suite_path(target_cls)
    with _lock:  # one GE context per process; trials of parallel instances take turns
        validation = _validation(path)
        for column in _columns(validation):
            if column not in rows.columns:
                rows = rows.assign(**{column: None})
        # rows that pass need no more than GE's verdict (BOOLEAN_ONLY skips the unexpected
        # values and indexes: ~40 % of a one-row run); rows that fail are run again in full to
        # name each failing row and value
        result = _run(validation, rows, "BOOLEAN_ONLY")
        if not result.success:
            result = _run(validation, rows, "COMPLETE")
    reasons: list[list[str]] = [[] for _ in range(len(rows))]
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = config.kwargs
        column = kwargs.get("column") or " vs ".join(
            str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
        )
        why = (config.meta or {}).get("why", config.type)
        indexes = item.result.get("unexpected_index_list")
        values = item.result.get("unexpected_list") or []
        if indexes is None:  # a table-level expectation: every row fails it
            for row in reasons:
                row.append(f"{column or 'table'}: {why}")
            continue
        for index, value in zip(indexes, values, strict=False):
            position = rows.index.get_loc(index)
            reasons[position].append(f"{column}: {why} (got {_shown(value)})")
    return GateResult(reasons=reasons, details=result.to_json_dict())


def _run(validation: Any, rows: pd.DataFrame, result_format: str) -> Any:
    """The suite's result on ``rows``. The batch is validated directly: the validation
    definition's ``run`` would also keep every result in the context's store (~10 % of a one-row
    run, and memory that grows with every trial of a long job)."""
    _made.memo = {}
    _made.graphs = id(validation)
    try:
        batch = validation.data.get_batch(batch_parameters={"dataframe": rows})
        return batch.validate(validation.suite, result_format=result_format)
    finally:
        _made.memo = _made.graphs = None


def _remember_configurations() -> None:
    """Make GE's ``Expectation.configuration`` remember what it made, for one validation run
    (``_run``) on the thread doing it; elsewhere it is GE's own. An expectation is a pydantic
    model that a run does not change (GE's validator changes deep copies of configurations), so
    within a run the configuration it would make again is the same; the memo holds each
    expectation it was made for, so no id is reused while it lasts.
    ``tests/tasks/test_gate.py`` checks that every case of the measurement corpus gets the same
    result both ways. A GE without the property as this one has it is left alone."""
    from great_expectations.expectations.expectation import Expectation

    made = Expectation.__dict__.get("configuration")
    if not isinstance(made, property) or made.fget is None or hasattr(made.fget, "knobflow"):
        return
    Expectation.configuration = _remembering(made.fget)  # type: ignore[method-assign]


def _remembering(make: Callable[[Any], Any]) -> property:
    """``make`` as a property that remembers its value per object in a run of ``_run``."""
    def configuration(self: Any) -> Any:
        memo: dict[int, tuple[Any, Any]] | None = getattr(_made, "memo", None)
        if memo is None:
            return make(self)
        hit = memo.get(id(self))
        if hit is None or hit[0] is not self:
            hit = memo[id(self)] = (self, make(self))
        return hit[1]

    configuration.knobflow = make  # type: ignore[attr-defined]  (what it wraps)
    return property(configuration, doc=make.__doc__)


def _columns(validation: Any) -> list[str]:
    return [
        e.column for e in validation.suite.expectations if getattr(e, "column", None) is not None
    ]


def _remember_graphs() -> None:
    """Make GE's validator keep the metric graphs it builds for a suite's expectations, inside
    ``_run`` on the thread doing it, keyed by the suite (``_made.graphs``), the batch's id, the
    execution engine's class and the runtime configuration (the result format); elsewhere it is
    GE's own. A graph names metrics
    (their names, domains and values' arguments), never their values: each run resolves the
    kept graph on its own batch. Graphs whose build failed for an expectation are not kept.
    ``tests/tasks/test_gate.py`` checks that every case of the measurement corpus gets the same
    result both ways. A GE without the method as this one has it is left alone."""
    from great_expectations.validator.validator import Validator

    name = "_generate_metric_dependency_subgraphs_for_each_expectation_configuration"
    build = Validator.__dict__.get(name)
    if not callable(build) or hasattr(build, "knobflow"):
        return

    def subgraphs(self: Any, expectation_configurations: list[Any],
                  processed_configurations: list[Any], catch_exceptions: bool,
                  runtime_configuration: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
        args = {"expectation_configurations": expectation_configurations,
                "processed_configurations": processed_configurations,
                "catch_exceptions": catch_exceptions,
                "runtime_configuration": runtime_configuration}
        suite = getattr(_made, "graphs", None)
        if suite is None:
            return build(self, **args)
        key = (suite, self.active_batch_id, type(self._execution_engine),
               json.dumps(runtime_configuration or {}, sort_keys=True, default=repr))
        kept = _graphs.get(key)
        if kept is None:
            graphs, failed, processed = build(self, **args)
            if not failed:
                _graphs[key] = (list(graphs), list(processed))
            return graphs, failed, processed
        processed_configurations.extend(kept[1])
        return list(kept[0]), [], processed_configurations

    subgraphs.knobflow = build  # type: ignore[attr-defined]  (what it wraps)
    setattr(Validator, name, subgraphs)


def _skip_fingerprints() -> None:
    """Make GE's pandas engine leave the gate's batches without a data fingerprint (the marker
    ``pandas_data_fingerprint`` reads None), inside ``_run`` on the thread doing it; elsewhere
    it is GE's own. The fingerprint is an MD5 over every cell, hashed column by column: ~11 ms
    of CPU for a one-row batch of 20 columns, more than a quarter of the gate's, for a marker
    that nothing in GE or knobflow reads (the row it would identify is kept with its trial,
    ``TrialOutcome.row``). A GE without the function as this one has it is left alone."""
    from great_expectations.execution_engine import pandas_execution_engine as engine

    fingerprint = engine.__dict__.get("hash_pandas_dataframe")
    if not callable(fingerprint) or hasattr(fingerprint, "knobflow"):
        return

    def hash_pandas_dataframe(df: pd.DataFrame) -> str | None:
        return None if getattr(_made, "graphs", None) is not None else fingerprint(df)

    hash_pandas_dataframe.knobflow = fingerprint  # type: ignore[attr-defined]  (what it wraps)
    engine.hash_pandas_dataframe = hash_pandas_dataframe
