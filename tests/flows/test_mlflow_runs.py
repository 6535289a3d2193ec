"""What a tuning job leaves in MLflow follows MLflow's conventions: the parent run says what it is,
where it came from, the policies and rule files it used and the Prefect flow run that ran it; every
trial's child run spans the trial's real start and end; a fresh service too small to validate a
model gets no champion and says why (real Prefect API, real MLflow store, real trials)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from flows.tune import tune
from tuners.study import open_study
from tuners.trials import ATTR

FAST = {"duration": 0.0, "noise": 0.02}


async def _flow_name(flow_run_id: str) -> str:
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        return (await client.read_flow(run.flow_id)).name


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_a_job_run_is_described_timed_and_linked_to_its_flow_run(prefect_api: str,
                                                                  home: Path) -> None:
    rules = home.parent / "mine.yaml"
    rules.write_text("target: synthetic\nrules:\n  - id: no-tiny-x\n    kind: forbid\n"
                     "    when: x < 0.001\n    policy: careful\n    message: too small\n")
    summary = tune("synthetic", instance="a", budget=16, seed=3, workload=FAST,
                   rule_files=[str(rules)], policies=["careful"], home=str(home))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = client.get_run(summary.mlflow_run_id)
    tags, params = parent.data.tags, parent.data.params
    assert tags["mlflow.note.content"].startswith(
        "knobflow tune synthetic: instance a of service synthetic, maximize throughput with ")
    assert tags["mlflow.source.name"] == "flows/tune.py" and tags["mlflow.source.type"] == "JOB"
    assert asyncio.run(_flow_name(tags["prefect.flow_run_id"])) == "tune"
    assert params["policies"] == "careful"
    shipped = Path(__file__).resolve().parents[2] / "rules" / "sets" / "synthetic.yaml"
    assert params["rule_files"].split(",")[:2] == [str(shipped), str(rules.resolve())]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "rules")} >= {
        "rules/synthetic.yaml", "rules/mine.yaml"}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.note.content"].startswith("knobflow tuning jobs")

    # every explored trial's child run spans the trial as its record in the study has it
    study = open_study(home, summary.study_name, "maximize", optuna.samplers.RandomSampler(),
                       create=False)
    records = {str(t.number): t.user_attrs[ATTR] for t in study.trials
               if ATTR in t.user_attrs and "started_at" in t.user_attrs[ATTR]}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
        "and tags.`knobflow.phase` = 'explore'")
    assert len(children) == summary.n_trials and len(records) >= summary.n_trials
    for run in children:
        record = records[run.data.tags["knobflow.trial"]]
        assert 0 < record["finished_at"] - record["started_at"] < 120
        assert abs(run.info.start_time - record["started_at"] * 1000) <= 1
        assert abs(run.info.end_time - record["finished_at"] * 1000) <= 1

    # a fresh service's first model is checked on the few trials held out of its first job
    # (a fifth, by a hash of each row, at least 3): under 5 it is no champion, and says why
    model = summary.model
    assert model["n_rows"] >= 12, model
    version = client.get_model_version(model["name"], str(model["version"]))
    aliases = client.get_registered_model(model["name"]).aliases
    if model["n_holdout"] < 5:
        refused = f"too few held-out rows ({model['n_holdout']} < 5)"
        assert model["champion_refused"] == refused and not model["champion_moved"]
        assert model["line"].endswith(
            f"not made champion: {refused}; the service has no champion")
        assert version.tags["champion_refused"] == refused
        assert "champion" not in aliases
    else:  # judged on enough trials: champion unless it ranks them no better than chance
        assert model["champion_moved"] == (not model["champion_refused"])
        assert model["champion_refused"] in ("", version.tags.get("champion_refused"))
