"""The measurement gate remembers each expectation's configuration for one validation run only,
and each suite's metric graphs for the process, and gives every case of the measurement corpus
the result Great Expectations gives without them; its batches carry no data fingerprint."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from great_expectations.execution_engine import pandas_execution_engine
from great_expectations.expectations.expectation import Expectation
from great_expectations.validator.validator import Validator

from targets.synthetic import SyntheticTarget
from tasks import gate
from tests.tasks.test_clean import BAD, GOOD, clean, load_case

ROW = {"timestamps_monotonic": True, "samples_finite": True, "config_consistent": True,
       "knobs_not_read_back": 0, "error_rate": 0.0, "duration_s": 0.5,
       "metric.throughput": 5.0, "metric.latency_ms": 1.0, "n_samples": 10}


def ge_own() -> Any:
    """Great Expectations' own ``configuration`` (what the gate's memo wraps)."""
    gate.validate_rows(SyntheticTarget, pd.DataFrame([ROW]))  # the memo is in place from here
    return Expectation.__dict__["configuration"].fget.knobflow


GRAPHS = "_generate_metric_dependency_subgraphs_for_each_expectation_configuration"


def without_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Great Expectations as it is: configurations and metric graphs made anew every time."""
    monkeypatch.setattr(Expectation, "configuration", property(ge_own()))
    monkeypatch.setattr(Validator, GRAPHS, getattr(Validator, GRAPHS).knobflow)


def comparable(validation: dict[str, Any]) -> dict[str, Any]:
    """GE's result without the time the batch was loaded (the only field that differs between
    two runs of one row)."""
    meta = {**validation["meta"], "batch_markers": {
        k: v for k, v in validation["meta"]["batch_markers"].items() if k != "ge_load_time"}}
    return {**validation, "meta": meta}


def test_every_case_gets_the_same_result_with_and_without_the_memo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [load_case(path) for path in BAD + GOOD]
    remembered = [clean(case) for case in cases]
    assert gate._graphs, "no metric graph was kept"
    without_memos(monkeypatch)
    for path, case, with_memo in zip(BAD + GOOD, cases, remembered, strict=True):
        made_each_time = clean(case)
        assert with_memo.valid == made_each_time.valid, path.stem
        assert with_memo.reasons == made_each_time.reasons, path.stem
        assert comparable(with_memo.validation) == comparable(made_each_time.validation), \
            path.stem


def test_a_run_makes_each_configuration_once_and_forgets_it_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    own = ge_own()
    made: list[int] = []

    def counted(self: Any) -> Any:
        made.append(id(self))
        return own(self)

    monkeypatch.setattr(Expectation, "configuration", gate._remembering(counted))
    result = gate.validate_rows(SyntheticTarget, pd.DataFrame([ROW]))
    assert result.reasons == [[]]
    assert made, "the validation read no configuration"
    assert len(made) == len(set(made)), "a configuration was made twice in one run"
    # outside a run nothing is remembered: two reads make two configurations
    expectation = gate._validation(gate.suite_path(SyntheticTarget)).suite.expectations[0]
    made.clear()
    first, second = expectation.configuration, expectation.configuration
    assert first is not second
    assert len(made) == 2


def test_only_the_validating_thread_remembers(monkeypatch: pytest.MonkeyPatch) -> None:
    ge_own()
    expectation = gate._validation(gate.suite_path(SyntheticTarget)).suite.expectations[0]
    gate._made.memo = {}  # as inside a run on this thread
    try:
        assert expectation.configuration is expectation.configuration
        seen: list[Any] = []
        other = threading.Thread(target=lambda: seen.extend(
            [expectation.configuration, expectation.configuration]))
        other.start()
        other.join()
        assert seen[0] is not seen[1]
    finally:
        gate._made.memo = None
    assert expectation.configuration is not expectation.configuration


def test_many_rows_in_one_run_get_the_same_result_with_and_without_the_memo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An expert's import validates all its rows in one run (some pass, some fail)."""
    from targets.registry import load_target
    from tasks.expert import check_rows

    csv = Path(__file__).resolve().parent.parent / "data" / "expert" / "sqlite.csv"
    remembered = check_rows(csv, load_target("sqlite"))
    without_memos(monkeypatch)
    made_each_time = check_rows(csv, load_target("sqlite"))
    assert remembered.kept and remembered.rejected, "the file should have rows of both kinds"
    assert remembered == made_each_time


def test_a_suites_graphs_are_built_once_per_result_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows that pass are validated for GE's verdict only, rows that fail again in full: one
    build of the graphs for each, then every row of either kind reuses it; a run outside the
    gate (GE called directly) builds its own and keeps nothing."""
    ge_own()
    own = getattr(Validator, GRAPHS).knobflow
    built: list[str] = []

    def counted(self: Any, **kwargs: Any) -> Any:
        built.append(str((kwargs["runtime_configuration"] or {}).get("result_format")))
        return own(self, **kwargs)

    monkeypatch.setattr(gate, "_graphs", {})
    monkeypatch.setattr(Validator, GRAPHS, counted)
    gate._remember_graphs()  # the gate's wrapper around the counting build
    good, bad = pd.DataFrame([ROW]), pd.DataFrame([{**ROW, "error_rate": 0.5}])
    for _ in range(3):
        assert gate.validate_rows(SyntheticTarget, good).reasons == [[]]
        assert gate.validate_rows(SyntheticTarget, bad).reasons[0][0].startswith("error_rate")
    assert sorted(built) == ["BOOLEAN_ONLY", "COMPLETE"], built
    assert len(gate._graphs) == 2
    validation = gate._validation(gate.suite_path(SyntheticTarget))
    batch = validation.data.get_batch(batch_parameters={"dataframe": good})
    assert batch.validate(validation.suite, result_format="SUMMARY").success
    assert len(built) == 3 and len(gate._graphs) == 2


def test_the_gates_batches_are_not_fingerprinted_and_others_still_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GE hashes every cell of a pandas batch for its ``pandas_data_fingerprint`` marker: not in
    the gate's runs (rows that pass and rows that fail), still in a run outside it."""
    ge_own()  # the gate's wrapper is in place from here
    own = pandas_execution_engine.hash_pandas_dataframe.knobflow
    hashed: list[int] = []

    def counted(df: pd.DataFrame) -> str:
        hashed.append(len(df))
        return own(df)

    monkeypatch.setattr(pandas_execution_engine, "hash_pandas_dataframe", counted)
    gate._skip_fingerprints()  # the gate's wrapper around the counting hash
    good, bad = pd.DataFrame([ROW]), pd.DataFrame([{**ROW, "error_rate": 0.5}])
    for rows, passes in ((good, True), (bad, False)):
        result = gate.validate_rows(SyntheticTarget, rows)
        assert (result.reasons == [[]]) is passes
        assert result.details["meta"]["batch_markers"]["pandas_data_fingerprint"] is None
    assert hashed == []
    validation = gate._validation(gate.suite_path(SyntheticTarget))
    batch = validation.data.get_batch(batch_parameters={"dataframe": good})
    outside = batch.validate(validation.suite, result_format="SUMMARY").to_json_dict()
    assert hashed and set(hashed) == {1}, hashed  # GE hashes the batch twice in a run
    assert outside["meta"]["batch_markers"]["pandas_data_fingerprint"] == own(good)
