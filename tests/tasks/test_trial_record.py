"""A pipelined trial's Prefect task run, kept beside the trial (``tasks/trial_record.py``),
against the Prefect test harness: the trial's outcome is its result, a trial that raised fails
it, and a task run that cannot be recorded fails the exploration at its end."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import tasks.trial_record as trial_record
from tasks.trial_record import TrialRecords
from tuners.trials import TrialOutcome, TrialStatus


def _outcome(value: float) -> TrialOutcome:
    return TrialOutcome(config={"x": value}, instance="i0", status=TrialStatus.OK, value=value)


def _task_runs(flow_run_id: Any, names: set[str]) -> dict[str, Any]:
    """The flow run's task runs named ``names``, once the server has them all (events arrive
    a little after the client sent them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = {r.name: r for r in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
            done = {n: r for n, r in runs.items() if n in names and r.state is not None
                    and r.state.is_final()}
            if len(done) == len(names) or time.monotonic() > deadline:
                return done
            time.sleep(0.2)


def test_each_trial_is_a_task_run_that_ends_with_it(prefect_api: str) -> None:
    ended: dict[str, float] = {}

    def trial(key: str, value: float) -> TrialOutcome:
        time.sleep(0.3)  # the trial's run: its task run is open meanwhile
        ended[key] = time.time()
        return _outcome(value)

    def broken() -> TrialOutcome:
        raise OSError("the trial directory vanished")

    @flow
    def job() -> Any:
        from prefect.runtime import flow_run

        records = TrialRecords(2)
        got = [records.run(key, {"x": v}, "i0", 1, lambda k=key, v=v: trial(k, v))
               for key, v in (("0", 1.5), ("1", 2.5))]
        with pytest.raises(OSError, match="vanished"):  # the worker hears the trial's error
            records.run("2", {"x": 0.0}, "i0", 1, broken)
        records.close()  # the trial's own error is not raised again here
        return flow_run.id, got

    run_id, got = job()
    assert [o.value for o in got] == [1.5, 2.5]
    runs = _task_runs(run_id, {"trial-0", "trial-1", "trial-2"})
    assert {n: r.state.type.value for n, r in runs.items()} == {
        "trial-0": "COMPLETED", "trial-1": "COMPLETED", "trial-2": "FAILED"}
    for key in ("0", "1"):  # open while the trial ran, ended after it
        run = runs[f"trial-{key}"]
        assert run.start_time.timestamp() < ended[key] <= run.end_time.timestamp() + 0.05


def test_a_task_run_that_cannot_be_recorded_fails_the_exploration_at_its_end(
        prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    @task(name="execute-trial", cache_policy=NO_CACHE)
    def unrecordable(*args: Any, **kwargs: Any) -> TrialOutcome:
        raise ConnectionError("the Prefect API went away")

    monkeypatch.setattr(trial_record, "_execute_trial", unrecordable)

    @flow
    def job() -> TrialOutcome:
        records = TrialRecords(2)
        outcome = records.run("0", {"x": 1.0}, "i0", 1, lambda: _outcome(1.0))
        assert outcome.value == 1.0  # the trial itself ran and is told
        with pytest.raises(ConnectionError, match="went away"):
            records.close()
        return outcome

    job()
