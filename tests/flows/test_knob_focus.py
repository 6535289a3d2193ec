"""``--knobs auto``: a job of a service with a trained model tunes the model's most important
knobs first and all knobs later; without a model it tunes all knobs and says why. A real MLflow
store, the Prefect test harness and the synthetic target (from its default, x and threads are
the levers)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from flows.focus import knob_focus
from flows.job import Job
from flows.spec import DEFAULT_TOP_KNOBS, JobSpec
from flows.tune import tune
from targets.synthetic import SyntheticTarget
from tasks.train import train_models
from tests.synthetic_rows import trial_table
from tuners.focus import FOCUS_ATTR
from tuners.samplers import make_sampler
from tuners.study import open_study

FAST = {"duration": 0.0, "noise": 0.02}
LEAN: dict[str, Any] = {"noise_runs": 0, "verify_repeats": 2, "train": False,
                        "transfer": False, "trial_timeout": 1.0}
DEFAULTS = SyntheticTarget.knob_spec().defaults()
pytestmark = pytest.mark.usefixtures("mlflow_store")


def _trial_params(home: Path, study_name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    study = open_study(home, study_name, "maximize", make_sampler("random"), create=False)
    return [(t.params, t.user_attrs) for t in sorted(study.trials, key=lambda t: t.number)
            if t.params]


def _moved(params: dict[str, Any]) -> set[str]:
    """The knobs a trial set away from their defaults."""
    return {k for k, v in params.items() if v != DEFAULTS[k]}


def test_a_trained_service_tunes_its_important_knobs_first(prefect_api: str,
                                                           home: Path) -> None:
    started = time.monotonic()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    # the service's model, as its jobs train it: random configs of the synthetic surface
    trained = train_models(trial_table(60, service="synthetic"), spec=SyntheticTarget.knob_spec(),
                           objective="throughput", direction="maximize", service="synthetic",
                           instance="kv-1", workload_fp={"shift": 0.0}, tracking_uri=uri,
                           kinds=("lightgbm",))
    assert trained is not None and trained.champion_version, trained
    print(f"trained in {time.monotonic() - started:.1f} s")

    summary = tune("synthetic", instance="kv-2", knobs=["auto"], top_knobs=2, budget=10,
                   seed=3, workload=FAST, home=str(home), **LEAN)

    focus = summary.knob_focus
    assert focus is not None
    # the levers from the default (x: 0.52 of its best, threads: 0.66), not the global
    # importance's second (y, which matters over its range but is near its best at the default)
    assert sorted(focus["top"]) == ["threads", "x"]
    assert focus["ranked_by"] == "effect from the default"
    top = set(focus["top"])
    assert focus["model"].startswith("knobflow-synthetic-throughput v")
    assert focus["source"] == "recorded"
    assert focus["widened_at_trial"] == 5 and "half the budget" in focus["widened_why"]
    trials = _trial_params(home, summary.study_name)
    assert len(trials) == 10
    first, later = trials[1:5], trials[5:]  # trial 0 is the default
    for params, attrs in first:
        assert set(attrs[FOCUS_ATTR].split(",")) == top
        assert _moved(params) <= top, params
    assert any(_moved(p) & top for p, _ in first)
    assert any(_moved(p) - top for p, _ in later)  # widened: every knob is drawn
    assert all(FOCUS_ATTR not in attrs for _, attrs in later)

    run = MlflowClient(uri, uri).get_run(summary.mlflow_run_id)
    assert set(run.data.params["knobs.first"].split(",")) == top
    assert run.data.tags["knobflow.knobs.widened_at"] == "5"
    result = json.loads((home / "jobs" / summary.study_name / "result.json").read_text())
    assert result["knob_focus"]["top"] == focus["top"]


def test_without_a_model_auto_tunes_all_knobs_and_says_why(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = Job.create(JobSpec.of(target="synthetic", knobs=["auto"]), home)
    assert job.top_knobs == DEFAULT_TOP_KNOBS and job.search_space().names == list(DEFAULTS)
    with caplog.at_level(logging.INFO, logger="knobflow.test"):
        focus = knob_focus(job, job.search_space(), logging.getLogger("knobflow.test"))
    assert focus is None  # the trial manager asks for every knob
    why = ("service synthetic has no trained model of throughput yet (a job without --no-train "
           "trains one)")
    assert job.focus == {"top": [], "why": why}
    assert f"--knobs auto: tuning all knobs: {why}" in caplog.messages
    assert Job.load(job.dir / "job.json", home).focus == job.focus  # --resume keeps it
